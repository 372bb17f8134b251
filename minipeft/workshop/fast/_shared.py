"""Constants and helpers that more than one fast path uses: the shift-free softmax bound, cache-sized chunks."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from minipeft import backend

# softmax(z) = exp(z - c) / sum exp(z - c) for any constant c per row; the usual c = row max only keeps exp
# in range, and costs a pass over the row. Attention and cross-entropy skip it when every |z| <=
# SHIFT_FREE_BOUND: in float32, e^40 ~ 2e17 times thousands of terms cannot overflow (max ~3e38), and
# e^-40 ~ 4e-18 keeps every term that matters (within e^-17 of the row's largest, i.e. above float32
# rounding) far above the smallest normal float (1e-38); so do the backward's products with 1 / rowsum.
SHIFT_FREE_BOUND = 40.0

# An op that makes several elementwise passes over one large array goes through it in flat chunks of this many
# elements (256 KiB of float32), so each chunk stays in the CPU's L2 cache from one pass to the next instead of
# streaming the whole array from memory once per pass (bench/bench_chunks.py picks the size; figures in
# BENCHMARKS.md, "Fast paths"). On the GPU there is one chunk: there each chunk would cost kernel launches.
CHUNK_ELEMENTS = 1 << 16


def chunks(n: int, size: int | None = None) -> list[slice]:
    """Slices covering range(n) in runs of `size` (default CHUNK_ELEMENTS; one slice on the GPU, where a chunk
    costs a launch)."""
    size = n if backend.is_gpu() else (size or CHUNK_ELEMENTS)
    return [slice(i, i + size) for i in range(0, n, max(size, 1))]


_pool: list = []


def num_threads() -> int:
    """Threads a fast path may use on the CPU: MINIPEFT_NUM_THREADS, default 1.

    Not every core by default: measured inside a training step (BENCHMARKS.md, "Fast paths"), a second
    thread for AdamW's passes made the step's optimizer phase ~9% slower on 2 cores, because OpenBLAS's own worker
    thread keeps spinning on the other core for a while after each matrix product, and the two share it. Set it where
    cores are idle between products (more cores than OpenBLAS uses)."""
    value = os.environ.get("MINIPEFT_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else 1


def workers() -> ThreadPoolExecutor | None:
    """A persistent pool of num_threads() - 1 worker threads (the caller is the last one); None on the GPU or with
    one thread. NumPy's ufuncs release the GIL, so a pass over one slice runs beside a pass over another."""
    n = num_threads()
    if backend.is_gpu() or n < 2:
        return None
    # none yet, made before a fork (its threads are not in this process), or for another thread count: a new one
    if _pool[:2] != [os.getpid(), n]:
        if _pool:
            _pool[2].shutdown(wait=False)
        _pool[:] = [os.getpid(), n, ThreadPoolExecutor(n - 1, thread_name_prefix="minipeft-fast")]
    return _pool[2]


def parallel_for(work: Callable[[Sequence[slice]], None], parts: Sequence[slice]) -> None:
    """work(run) for the parts cut into one contiguous run per thread (the workers of workers() and the caller).

    The parts must be disjoint slices of whatever work writes, so no two threads write the same element, and work
    must give each part the same numbers whichever run it lands in: then the result does not depend on the
    threads. With one thread, or fewer than two parts, work(parts) runs here. A worker's exception is re-raised."""
    pool = workers()
    if pool is None or len(parts) < 2:
        work(parts)
        return
    n = min(num_threads(), len(parts))          # the pool's workers and this thread
    runs = [parts[i * len(parts) // n:(i + 1) * len(parts) // n] for i in range(n)]
    pending = [pool.submit(work, r) for r in runs[1:]]
    try:
        work(runs[0])
    finally:
        for f in pending:
            f.result()
