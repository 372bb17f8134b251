"""Helpers shared by the ops: broadcasting reduction, argument checks, scatter-add, the matmul recorder."""

from __future__ import annotations

import contextlib

from minipeft import backend

_matmul_log: list | None = None


def mm(a, b):
    """`a @ b` for every matmul the ops do, so a test can see which products were formed."""
    if _matmul_log is not None:
        _matmul_log.append((tuple(a.shape), tuple(b.shape)))
    return a @ b


@contextlib.contextmanager
def record_matmuls():
    """Collect the (a.shape, b.shape) of every matmul the ops perform inside the block."""
    global _matmul_log
    prev, _matmul_log = _matmul_log, []
    try:
        yield _matmul_log
    finally:
        _matmul_log = prev


def unbroadcast(g, shape: tuple[int, ...]):
    """Sum `g` over the axes that broadcasting added or stretched, so it has `shape` again."""
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g


def check_float(op: str, name: str, a) -> None:
    if a.dtype.kind != "f":
        raise TypeError(f"{op}: {name} must be a floating array, got dtype {a.dtype}")


def check_same_dtype(op: str, **arrays) -> None:
    """Raise if the given float arrays do not share one dtype (no silent float64 upcasts)."""
    items = [(k, v) for k, v in arrays.items() if v is not None]
    dts = {v.dtype for _, v in items}
    if len(dts) > 1:
        desc = ", ".join(f"{k}: {v.dtype} {tuple(v.shape)}" for k, v in items)
        raise TypeError(f"{op}: dtype mismatch ({desc}); cast them to one dtype first")


def scatter_add(target, index, values) -> None:
    """target[index] += values, accumulating repeated indices (np.add.at / cupyx.scatter_add).

    Plain `target[index] += values` would be wrong here: with a repeated index NumPy adds only the last
    value. The embedding's backward needs every occurrence summed (a token seen twice gets both rows).
    """
    if backend.is_gpu():
        backend.cupyx().scatter_add(target, index, values)
    else:
        backend.xp().add.at(target, index, values)
