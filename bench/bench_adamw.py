"""Benchmark: one AdamW step over every parameter of a GPT, the reference update against its chunked fast path.

The parameters are those of bench/vs_pytorch.py's largest shape (29.5M, full fine-tuning: every weight has a
gradient). Reference (whole-array passes) and fast path at several chunk sizes are alternated, A B A B, and
each is reported as the median of per-round ratios to the reference (the machine's speed drifts:
BENCHMARKS.md, "Machines").

    python bench/bench_adamw.py            # ~10 s on 2 cores (7 s on a 2-core AMD EPYC, 2026-12-01)
    python bench/bench_adamw.py --quick    # seconds, the test preset
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import minipeft as mp
from minipeft.nn import GPT, GPTConfig
from minipeft.optim import AdamW
from minipeft.workshop.fast import adamw as fast_adamw


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    cfg = (GPTConfig.from_preset("test") if args.quick else
           GPTConfig(vocab_size=4096, context_length=128, d_model=512, n_layer=8, n_head=8, d_ff=2048,
                     tie_embeddings=False))
    mp.manual_seed(0)
    model = GPT(cfg)
    params = list(model.parameters())
    rng = np.random.default_rng(0)
    for q in params:
        q.grad = mp.xp().asarray(rng.standard_normal(q.shape, dtype=np.float32) * 1e-3)
    opt = AdamW(params, lr=1e-4)
    n = sum(q.size for q in params)
    sizes = [1 << 12, 1 << 14, 1 << 16] if not args.quick else [1 << 6]
    variants = [("reference", None)] + [(f"chunks of {s}", s) for s in sizes]
    orig = fast_adamw.chunked_adamw_update

    def run(chunk):
        if chunk is None:
            with mp.fast_ops(False):
                t = time.perf_counter()
                opt.step()
                return time.perf_counter() - t
        fast_adamw.chunked_adamw_update.__kwdefaults__["chunk_elements"] = chunk
        try:
            t = time.perf_counter()
            opt.step()
            return time.perf_counter() - t
        finally:
            orig.__kwdefaults__["chunk_elements"] = None

    run(None)  # warm-up: the moments are created
    times = {name: [] for name, _ in variants}
    for _ in range(2 if args.quick else args.rounds):
        for name, chunk in variants:
            times[name].append(run(chunk))
    ref = np.array(times["reference"])
    print(f"AdamW step over {n:,} float32 parameters ({len(params)} arrays), {len(ref)} rounds")
    for name, _ in variants:
        t = np.array(times[name])
        print(f"  {name:<18}{1000 * np.median(t):>9.1f} ms   ratio to reference {np.median(t / ref):.3f}")


if __name__ == "__main__":
    mp.tune_allocator()
    main()
