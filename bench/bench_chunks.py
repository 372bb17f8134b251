"""Benchmark: GELU forward + backward with chunked passes, by chunk size, against whole-array passes.

`minipeft.workshop.fast._shared.CHUNK_ELEMENTS` sets how many elements a fast path's in-place passes cover
before moving to the next chunk; this script times GELU's fast path (`ChunkedGELUFn`, whatever the fast-ops
switch says) on the MLP activation of the tutorials' model (a step's (8 x 256, 512) float32 array by default)
for each chunk size and for one whole-array chunk, alternated (A B C ... A B C ...), and prints each as a
ratio to the whole-array time (median of the per-round ratios).

    python bench/bench_chunks.py
    python bench/bench_chunks.py --rows 2880 --rounds 60   # tutorial 03's fine-tuning shape
    python bench/bench_chunks.py --quick                   # seconds (smoke test)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import minipeft as mp
from minipeft import backend
from minipeft.autograd import Tensor
from minipeft.workshop.fast import _shared
from minipeft.workshop.fast.gelu import ChunkedGELUFn


def gelu_step(x: Tensor, dy) -> None:
    y = ChunkedGELUFn.apply(x)
    y.backward(dy)
    x.grad = None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--cols", type=int, default=512)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    rows, rounds = (256, 3) if args.quick else (args.rows, args.rounds)
    rng = np.random.default_rng(0)
    x = Tensor(backend.asarray(rng.standard_normal((rows, args.cols), dtype=np.float32)), requires_grad=True)
    dy = backend.asarray(rng.standard_normal((rows, args.cols), dtype=np.float32))
    n = rows * args.cols
    sizes = {"whole array": n, **{f"2^{k}": 1 << k for k in range(13, 19) if 1 << k < n}}
    print(f"machine: {backend.device_name()}; numpy {np.__version__}; device {mp.get_device()}; "
          f"GELU forward + backward on ({rows}, {args.cols}) float32")
    saved = _shared.CHUNK_ELEMENTS
    times: dict[str, list[float]] = {k: [] for k in sizes}
    try:
        for r in range(rounds + 1):
            for name, size in sizes.items():
                _shared.CHUNK_ELEMENTS = size
                t = time.perf_counter()
                gelu_step(x, dy)
                if r:  # round 0 is a warm-up
                    times[name].append(time.perf_counter() - t)
    finally:
        _shared.CHUNK_ELEMENTS = saved
    base = np.array(times["whole array"])
    print(f"{'chunk elements':<16}{'ms':>8}{'ratio to whole':>16}")
    for name in sizes:
        t = np.array(times[name])
        print(f"{name:<16}{1000 * np.median(t):>8.3f}{np.median(t / base):>16.3f}")
    print(f"(the library uses CHUNK_ELEMENTS = {saved})")


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
