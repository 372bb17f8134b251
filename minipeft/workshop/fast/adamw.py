"""Fast path of the AdamW update: the reference's passes, run over cache-sized chunks, optionally on several threads.

Same numbers as `minipeft.optim.adamw_update`, bit for bit (tested); read that one first. The reference makes
about a dozen in-place passes over each parameter, its gradient, both moments and a scratch array. For full
fine-tuning that is every weight of the model, each pass streams the whole array from memory, and NumPy runs
each pass on one core. Here:

- the flat arrays are cut into chunks (`_shared.chunks`) and the reference runs on one chunk at a time, so a
  chunk's five slices stay in the CPU's cache across the passes;
- with MINIPEFT_NUM_THREADS > 1 (default 1: see `_shared.num_threads`), a large parameter's chunks are split
  between the calling thread and the workers of `_shared.workers()`
  (NumPy releases the GIL inside each pass, so the halves run on two cores at once). The chunks are disjoint
  slices of p, m, v and tmp, so the threads never write the same element.

Every element goes through the same float operations in the same order, so the result depends neither on the
chunking nor on the threads. Measured: BENCHMARKS.md, "Fast paths" (bench/bench_adamw.py).
"""

from __future__ import annotations

from minipeft.ops.fastpath import fast_path_of
from minipeft.optim import adamw_update
from minipeft.workshop.fast._shared import chunks, parallel_for


@fast_path_of(adamw_update)
def chunked_adamw_update(p, g, m, v, tmp, t: int, lr: float, b1: float, b2: float, eps: float, wd: float, *,
                         chunk_elements: int | None = None) -> None:
    """adamw_update chunk by chunk over the flat arrays, the chunks shared among threads (the whole arrays at
    once if p, m, v or tmp are not contiguous: a flat view of them would be a copy and the update lost).
    chunk_elements: the chunk size (default `_shared.CHUNK_ELEMENTS`; the tests pass small ones)."""
    if not all(a.flags.c_contiguous for a in (p, m, v, tmp)):
        adamw_update(p, g, m, v, tmp, t, lr, b1, b2, eps, wd)
        return
    pf, mf, vf, tf = p.reshape(-1), m.reshape(-1), v.reshape(-1), tmp.reshape(-1)
    gf = g.reshape(-1)                                  # read only: a copy is fine if g is not contiguous

    def run(part: list[slice]) -> None:
        for s in part:
            adamw_update(pf[s], gf[s], mf[s], vf[s], tf[s], t, lr, b1, b2, eps, wd)

    parallel_for(run, chunks(pf.size, chunk_elements))
