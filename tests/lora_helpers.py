"""Shared helpers of the LoRA spec (test_lora_*.py): seeded models, batches, a few AdamW steps, bounds."""

from __future__ import annotations

import contextlib

import numpy as np

import minipeft
from minipeft import backend, to_numpy
from minipeft.nn import GPT, GPTConfig
from minipeft.nn.llama import LlamaConfig, LlamaForCausalLM
from minipeft.optim import AdamW

TEST = GPTConfig.from_preset("test")  # vocab 64, context 16, d_model 16, 2 layers, 2 heads, d_ff 32
# a tiny random Llama of the same vocabulary: 4 query heads of 4, 2 key/value heads (grouped-query attention)
TINY_LLAMA = dict(vocab_size=64, context_length=32, d_model=16, n_layer=2, n_head=4, n_kv_head=2, d_ff=24)


@contextlib.contextmanager
def seeded(seed: int):
    """Run the block on generator `seed`, then give the other tests their generator back."""
    with backend.fork_rng():
        minipeft.manual_seed(seed)
        yield


def build_gpt(seed: int = 0, dtype=np.float32, **overrides) -> GPT:
    """A "test"-preset GPT built from its own seed: the same seed gives the same weights, bit for bit."""
    with seeded(seed):
        return GPT(GPTConfig.from_preset("test", **overrides)).to(dtype)


def build_llama(seed: int = 0, dtype=np.float32, **overrides) -> LlamaForCausalLM:
    """The tiny random Llama (TINY_LLAMA) built from its own seed: the same seed gives the same weights."""
    with seeded(seed):
        return LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, **overrides})).to(dtype)


def batch(seed: int, B: int = 2, T: int = 8, vocab: int = TEST.vocab_size):
    """(ids, targets), each (B, T) int64, from their own generator."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, (B, T)), rng.integers(0, vocab, (B, T))


def logits(model, ids) -> np.ndarray:
    """The model's logits as a NumPy copy (no graph kept)."""
    with minipeft.no_grad():
        out, _ = model(ids)
    return np.array(to_numpy(out.data), copy=True)


def train_steps(model, ids, targets, steps: int = 3, lr: float = 1e-2) -> list[float]:
    """A few AdamW steps (default weight decay 0.01) on the model's trainable parameters; returns the losses."""
    opt = AdamW(model.parameters(trainable_only=True), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        _, loss = model(ids, targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def snapshot(model, skip: str | None = None) -> dict[str, np.ndarray]:
    """Copies of every parameter, by name (optionally leaving out names that contain `skip`)."""
    return {k: np.array(to_numpy(p.data), copy=True) for k, p in model.named_parameters()
            if skip is None or skip not in k}


def merge_bound(x2, W0, b, A, B, s, dtype) -> np.ndarray:
    """Elementwise bound on |merged - unmerged| for y = x W0^T + b + s (x A^T) B^T, x2 (N, k).

    Standard forward error analysis (Higham, "Accuracy and Stability", 3.1): a length-n dot product
    in floating point is off by at most gamma_n |x|.|w|, gamma_n = n u / (1 - n u), u = eps / 2,
    whatever the summation order (BLAS blocking, FMA). The merged path rounds B A (length r), the
    scale, the add to W0 and then x W^T (length k) and the bias; the unmerged path rounds x W0^T
    (k), x A^T (k), h B^T (r), the scale and two adds. Each is within gamma_{k+r+4} * M of the
    exact result with M = |x| (|W0| + |s| |B| |A|)^T + |b|, so they differ by at most
    2 gamma_{k+r+4} M ~= (k + r + 4) eps M; 1.1x covers the 1/(1 - n u) factor with room.
    """
    k, r = W0.shape[1], A.shape[0]
    eps = float(np.finfo(dtype).eps)
    f = [np.abs(np.asarray(a, dtype=np.float64)) for a in (x2, W0, A, B)]
    M = f[0] @ (f[1] + abs(s) * f[3] @ f[2]).T
    if b is not None:
        M = M + np.abs(np.asarray(b, dtype=np.float64))
    return 1.1 * (k + r + 4) * eps * M
