"""Real pretrained LLMs: reading their files (GGUF), their tokenizers, and loading them as minipeft models."""
