"""Choosing the entries sparse fine-tuning trains: score every candidate entry from a few batches' gradients,
keep the top p% over the whole model (Sung et al., 2021, "Training Neural Networks with Fixed Sparse Masks").

Scores, with g_b the mini-batch gradient of the loss on batch b, averaged over the B scoring batches:

    fisher:    F = (1/B) sum_b g_b^2     the diagonal of the empirical Fisher (here from mini-batch gradients,
                                         not per-example ones): to second order, the loss an entry can move
    magnitude: M = (1/B) sum_b |g_b|     how strongly the loss pulls on the entry

Fisher is the default: it is the published criterion, and squaring puts more weight on the few entries
with large gradients than |g| does. Neither sums signed gradients, which would cancel across batches.
The top p% is global (the entries compete across tensors), so the method decides which layers matter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

from minipeft import backend
from minipeft.loss import causal_lm_loss
from minipeft.nn.module import Module, Parameter
from minipeft.peft.tuners.base_layer import BaseTunerLayer
from minipeft.peft.tuners.selection import select_parameters
from minipeft.peft.tuners.sparse.config import SparseConfig, entry_count


def candidate_parameters(model: Module, config: SparseConfig) -> dict[str, Parameter]:
    """{parameter path: Parameter} of the tensors whose entries compete (the config's trainable_types, ...)."""
    out = {}
    for path, pnames in select_parameters(model, config, "SPARSE").items():
        m = model.get_submodule(path)
        m = m.get_base_layer() if isinstance(m, BaseTunerLayer) else m
        out |= {f"{path}.{p}": getattr(m, p) for p in pnames}
    return out


BATCH_FIX = ("each batch is a dict {'input_ids', 'targets'} (finetune's sft_sampler makes them) or a pair (x, y), "
             "both int arrays of shape (batch, time); for one sequence ids use (ids[None, :-1], ids[None, 1:])")


def _unpack(batch, i: int):
    """(x, y) of the i-th batch, checked to be 2-D token ids of one shape."""
    if isinstance(batch, dict) and {"input_ids", "targets"} <= set(batch):
        x, y = batch["input_ids"], batch["targets"]
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
    else:
        what = f"a dict with keys {sorted(batch)}" if isinstance(batch, dict) else \
            f"a {type(batch).__name__} of shape {getattr(batch, 'shape', None) or len(batch)}" \
            if hasattr(batch, "__len__") else f"a {type(batch).__name__}"
        raise TypeError(f"select_sparse_entries: batch {i} is {what}; {BATCH_FIX}")
    shapes = [getattr(a, "shape", None) for a in (x, y)]
    if any(s is None or len(s) != 2 for s in shapes) or shapes[0] != shapes[1]:
        raise ValueError(f"select_sparse_entries: batch {i} has input_ids/targets of shapes {shapes[0]} and "
                         f"{shapes[1]}; {BATCH_FIX}")
    return x, y


def gradient_scores(model: Module, params: dict[str, Parameter], batches: Iterable, score: str = "fisher",
                    loss_fn: Callable = causal_lm_loss) -> dict[str, object]:
    """{name: score array of the parameter's shape}: mean g^2 ("fisher") or mean |g| ("magnitude") over batches.

    Only `params` get gradients while scoring (their requires_grad flags are restored afterwards), so the
    backward forms no other weight gradient; the model's weights are not changed.
    """
    if score not in ("fisher", "magnitude"):
        raise ValueError(f"gradient_scores: score must be 'fisher' or 'magnitude', got {score!r}")
    flags = {id(p): p.requires_grad for p in model.parameters()}
    acc = {n: backend.xp().zeros_like(p.data) for n, p in params.items()}
    n_batches = 0
    try:
        model.freeze()
        for p in params.values():
            p.requires_grad, p.grad = True, None
        for i, batch in enumerate(batches):
            x, y = _unpack(batch, i)
            loss_fn(model, backend.asarray(x), backend.asarray(y)).backward()
            for n, p in params.items():
                g = p.grad
                acc[n] += g * g if score == "fisher" else abs(g)
                p.grad = None
            n_batches += 1
    finally:
        for p in model.parameters():
            p.requires_grad, p.grad = flags[id(p)], None
    if not n_batches:
        raise ValueError("gradient_scores: batches is empty; pass a few batches (e.g. 8) to score the entries with")
    return {n: a / n_batches for n, a in acc.items()}


def top_entries(scores: dict[str, object], percent: float) -> dict[str, np.ndarray]:
    """{name: sorted int32 flat indices} of the top `percent`% of all entries together (ties: lower index first)."""
    names = list(scores)
    flat = np.concatenate([backend.to_numpy(scores[n]).reshape(-1).astype(np.float64) for n in names])
    k = entry_count(percent, flat.size)
    keep = np.sort(np.argsort(-flat, kind="stable")[:k])       # positions in the concatenation
    starts = np.cumsum([0] + [int(scores[n].size) for n in names])
    out = {}
    for n, lo, hi in zip(names, starts[:-1], starts[1:], strict=True):
        mine = keep[(keep >= lo) & (keep < hi)] - lo
        if mine.size:
            out[n] = mine.astype(np.int32)
    return out


def select_sparse_entries(model: Module, config: SparseConfig, batches: Iterable,
                          loss_fn: Callable = causal_lm_loss) -> SparseConfig:
    """`config` with its entries chosen on `model` (the base, before get_peft_model) from a few batches.

    batches: an iterable of batches ({"input_ids", "targets"} dicts, as finetune's sampler makes, or (x, y)).
    Returns a new config whose `entries` and `selection` say which entries train; pass it to get_peft_model.
    """
    if not isinstance(config, SparseConfig):
        raise TypeError(f"select_sparse_entries needs a SparseConfig, got {type(config).__name__}")
    if hasattr(model, "base_model") or any(isinstance(m, BaseTunerLayer) for _, m in model.named_modules()):
        raise TypeError("select_sparse_entries: score the base model itself, before get_peft_model wraps it")
    params = candidate_parameters(model, config)
    selection = top_entries(gradient_scores(model, params, batches, config.score, loss_fn), config.percent)
    return dataclasses.replace(config, entries={}, selection=selection)
