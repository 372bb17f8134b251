"""Real pretrained LLMs in minipeft: `load_pretrained("smollm2-135m-instruct")`, a GGUF file, or an HF folder.

The workshop side of the real model: fetching and caching its file (hub.py), reading GGUF (gguf_file.py),
mapping its weights to transformers' names (weights.py) and its tokenizer (tokenizer.py). The model itself,
LlamaForCausalLM, is in the book (minipeft/nn/llama.py).
"""

from minipeft.workshop.llm.load import load_pretrained

__all__ = ["load_pretrained"]
