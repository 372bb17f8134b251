"""Helpers shared by the ops: broadcasting reduction, argument checks, the matmul recorder."""

from __future__ import annotations

import contextlib

from minipeft import backend

_matmul_log: list | None = None

# softmax(z) = exp(z - c) / sum exp(z - c) for any constant c per row; the usual c = row max only keeps exp
# in range, and costs a pass over the row. Attention and cross-entropy skip it when every |z| <=
# SHIFT_FREE_BOUND: in float32, e^40 ~ 2e17 times thousands of terms cannot overflow (max ~3e38), and
# e^-40 ~ 4e-18 keeps every term that matters (within e^-17 of the row's largest, i.e. above float32
# rounding) far above the smallest normal float (1e-38); so do the backward's products with 1 / rowsum.
SHIFT_FREE_BOUND = 40.0


# An op that makes several elementwise passes over one large array goes through it in flat chunks of this many
# elements (256 KiB of float32), so each chunk stays in the CPU's L2 cache from one pass to the next instead of
# streaming the whole array from memory once per pass. Measured with bench/bench_chunks.py (GELU forward plus
# backward on the MLP's (2048, 512) float32 activation, 2 cores with 2 MiB of L2 each), as a ratio to one
# whole-array chunk: 2^13 elements 0.78, 2^14 0.66, 2^15 0.62, 2^16 0.59, 2^17 0.60, 2^18 0.72. A whole
# training step took 0.94-0.95x. On the GPU there is one chunk: there each chunk would cost kernel launches.
CHUNK_ELEMENTS = 1 << 16


def chunks(n: int) -> list[slice]:
    """Slices covering range(n) in runs of CHUNK_ELEMENTS (one slice on the GPU, where a chunk costs a launch)."""
    size = n if backend.is_gpu() else CHUNK_ELEMENTS
    return [slice(i, i + size) for i in range(0, n, max(size, 1))]


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


def _names_each_row_once(index) -> bool:
    """A 1-D integer index that strictly increases from >= 0 repeats no row, so `+=` on it is exact."""
    return (getattr(index, "ndim", 0) == 1 and index.dtype.kind in "iu" and bool((index[1:] > index[:-1]).all())
            and (index.size == 0 or int(index[0]) >= 0))


def scatter_add(target, index, values) -> None:
    """target[index] += values, accumulating repeated indices (np.add.at / cupyx.scatter_add).

    On the CPU an index that repeats no row (e.g. flatnonzero's output) takes plain fancy-index `+=`:
    np.add.at cost 2.4 ms per step for the LM head's target rows, the `+=` a fraction of that.
    """
    if backend.is_gpu():
        import cupyx  # noqa: PLC0415

        cupyx.scatter_add(target, index, values)
    elif _names_each_row_once(index):
        target[index] += values
    else:
        backend.xp().add.at(target, index, values)
