"""A tiny random Llama for the tests: every behaviour of the real model's code on a shape that runs in ms."""

from __future__ import annotations

import numpy as np

import minipeft
from minipeft import backend, to_numpy
from minipeft.nn.llama import LlamaConfig, LlamaForCausalLM

# the real SmolLM2-135M's structure (GQA of 3 query heads per key/value head, tied head), shrunk
TINY = dict(vocab_size=64, context_length=32, d_model=24, n_layer=2, n_head=6, n_kv_head=2, d_ff=40,
            rope_base=100000.0)


def build_llama(seed: int = 0, dtype=np.float32, randomize_norms: bool = True, **overrides) -> LlamaForCausalLM:
    """A tiny Llama from its own seed. RMSNorm weights start at ones; randomized (around 1) they are tested too."""
    with backend.fork_rng():
        minipeft.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides})).to(dtype)
        if randomize_norms:
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.data = (1 + 0.3 * backend.rng().standard_normal(p.shape)).astype(p.dtype)
        for p in model.parameters():   # 0.02 leaves a tiny model's logits ~0: make them matter
            if p.ndim == 2:
                p.data = (p.data * 10).astype(p.dtype)
    return model


def as_numpy(t) -> np.ndarray:
    return np.array(to_numpy(t.data if hasattr(t, "data") else t), copy=True)
