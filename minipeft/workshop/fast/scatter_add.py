"""Fast path of scatter_add: a plain `+=` when the index repeats no row (CPU only).

Same result as `_util.scatter_add` (tested equal); read that one first. np.add.at is slow; fancy-index `+=`
is fast but adds only one value per repeated index. An integer index that strictly increases from >= 0
repeats no row (e.g. flatnonzero's output, the LM head's target rows), so there `+=` is exact. On the GPU
cupyx.scatter_add is already fast.

Measured speed-ups: BENCHMARKS.md, "Fast paths".
"""

from __future__ import annotations

from minipeft import backend
from minipeft.ops._util import scatter_add
from minipeft.ops.fastpath import fast_path_of


def _names_each_row_once(index) -> bool:
    """A 1-D integer index that strictly increases from >= 0 repeats no row, so `+=` on it is exact."""
    return (getattr(index, "ndim", 0) == 1 and index.dtype.kind in "iu" and bool((index[1:] > index[:-1]).all())
            and (index.size == 0 or int(index[0]) >= 0))


@fast_path_of(scatter_add)
def scatter_add_unique_rows(target, index, values) -> None:
    """target[index] += values, as scatter_add; a plain `+=` where the index repeats no row (CPU)."""
    if not backend.is_gpu() and _names_each_row_once(index):
        target[index] += values
    else:
        scatter_add(target, index, values)
