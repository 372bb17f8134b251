"""A tiny random Llama written as a real model's GGUF file: the whole load path in milliseconds.

Its tokenizer is SmolLM2's kind (byte-level BPE, the "smollm" pre-tokenizer, ChatML's special tokens and chat
template) over the 256 bytes and a few merges of common English pairs, so every text encodes; its weights are
random. Tutorials' --quick runs and the tests load it with `load_pretrained(path)` exactly as the real file.
"""

from __future__ import annotations

import os
from pathlib import Path

from minipeft import backend
from minipeft.nn.llama import LlamaConfig, LlamaForCausalLM
from minipeft.workshop.llm.chat_template import chatml_template
from minipeft.workshop.llm.gguf_file import write_gguf
from minipeft.workshop.llm.tokenizer import byte_chars
from minipeft.workshop.llm.weights import gguf_from_llama

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]                 # ids 0, 1, 2, as SmolLM2's
MERGES = ["Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r", "Ġ s", "a t"]
SYSTEM = "You are a tiny random model"
TINY_SHAPE = dict(context_length=512, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64)


def tiny_tokenizer_metadata() -> dict:
    """GGUF tokenizer metadata of the tiny vocabulary: 3 special tokens, 256 bytes, one token per merge."""
    tokens = SPECIAL + byte_chars() + [m.replace(" ", "") for m in MERGES]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL)),
            "tokenizer.ggml.merges": list(MERGES), "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.padding_token_id": 2,
            "tokenizer.ggml.add_bos_token": False, "tokenizer.chat_template": chatml_template(SYSTEM)}


def write_tiny_llama(path: str | os.PathLike, seed: int = 0, **shape) -> Path:
    """Write a GGUF file of a random Llama (TINY_SHAPE, overridable) with the tiny tokenizer; returns its path."""
    meta = tiny_tokenizer_metadata()
    with backend.fork_rng():
        backend.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(meta["tokenizer.ggml.tokens"]), rope_base=100000.0,
                                             **{**TINY_SHAPE, **shape}))
    metadata, tensors = gguf_from_llama(model)
    return write_gguf(path, {**metadata, **meta, "general.name": "tiny random llama"}, tensors)
