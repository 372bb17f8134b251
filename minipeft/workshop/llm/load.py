"""`load_pretrained`: a real pretrained model and its tokenizer, by name or from a file or folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from minipeft.workshop.llm import hub
from minipeft.workshop.llm.gguf_file import read_gguf
from minipeft.workshop.llm.tokenizer import PretrainedTokenizer
from minipeft.workshop.llm.weights import llama_from_gguf, llama_from_hf_folder
from minipeft.workshop.pretrain import BaseModel


def load_pretrained(name_or_path: str | os.PathLike, dtype=np.float32, progress: bool = True) -> BaseModel:
    """A pretrained Llama-family model (`.model`, a LlamaForCausalLM) and its tokenizer (`.tokenizer`).

    name_or_path: a name in minipeft.workshop.llm.hub.MODELS ("smollm2-135m-instruct": fetched once, then cached), the
    path of a .gguf file, or a Hugging Face model folder (config.json, model.safetensors, tokenizer.json).
    Weights are dequantized to `dtype` (float32; float64 for gradient checks). The model is in eval mode with
    every parameter trainable, as transformers' from_pretrained leaves it; get_peft_model freezes the base.
    """
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"load_pretrained: dtype must be float32 or float64, got {np.dtype(dtype)}")
    start = time.perf_counter()
    name = str(name_or_path)
    if name in hub.MODELS:
        path = hub.fetch(name, progress=progress)
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"load_pretrained: {name!r} is neither a known model ({sorted(hub.MODELS)}) nor "
                                    "an existing .gguf file or Hugging Face model folder")
    if path.is_dir():
        model = llama_from_hf_folder(path, dtype)
        tok = PretrainedTokenizer.from_file(path)
    else:
        f = read_gguf(path, dtype=dtype)
        model = llama_from_gguf(f.metadata, f.tensors, source=str(path))
        tok = PretrainedTokenizer.from_gguf_metadata(f.metadata)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"{path}: the tokenizer has {tok.vocab_size} tokens but the model's vocabulary is "
                         f"{model.config.vocab_size}; the files do not belong together")
    model.eval()
    seconds = time.perf_counter() - start
    if progress:
        print(f"loaded {path.name}: {model.num_parameters():,} parameters in {seconds:.1f} s", flush=True)
    info = {"source": str(path), "load_seconds": round(seconds, 2), "parameters": model.num_parameters()}
    return BaseModel(model, tok, info, path)
