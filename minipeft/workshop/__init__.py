"""The workshop: what serves the book (the rest of minipeft) without being what a student reads to learn PEFT.

- `fast/`: the ops' fast paths, each registered against its reference op and tested equal to it;
- `compare/`: the comparison harness, the methods' recipes, the memory predicted from shapes and the
  large-model accounting;
- `data/`: the generated corpus and tasks, batching, JSONL files, the tokenizer trainer;
- `llm/`: loaders of real models (GGUF, Hugging Face folders, the hub wheel), their tokenizer and chat template;
- `pretrain.py`, `finetune.py`: the recipes that build the mini GPT and fine-tune a model on a task;
- `checkpoint.py`, `quant_io.py`: base models and quantized models as safetensors files;
- `cli*.py`: `python -m minipeft`; `chat.py`, `metrics.py`, `probes.py`, `plots.py`.

The book never imports the workshop (tests/test_layers.py walks the imports to keep it so); the workshop imports
the book freely.
"""
