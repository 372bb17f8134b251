"""Profile: where a training step's time goes, op by op, for full fine-tuning and LoRA side by side.

The variants are bench_train_step.VARIANTS: full, LoRA q,v, LoRA attn+MLP, and the q,v-biases floor
(every weight frozen: the same backward as LoRA q,v without its low-rank products).

Every op's forward (`Function.apply`) and backward is wrapped with a timer for the duration of the
run; the variants' steps are alternated (A B C A B C ...) so the machine's drift hits them alike.
Prints ms per step for each op and direction, plus the whole step and its ratio to full
fine-tuning; then the step split into its matrix products (every `ops._util.mm` call, timed) and the
rest, with the ratio each variant would have if the rest ran twice as fast or cost nothing. The
timers add a few microseconds per op call to every variant alike, so the step ratios here read
slightly closer to 1 than `bench_train_step.py`'s; use that script for the figures in BENCHMARKS.md
and this one to see which ops a change should target.

    python bench/profile_train_step.py                # tutorial 03's fine-tuning shape, 16 x 180
    python bench/profile_train_step.py --shape pretrain
    python bench/profile_train_step.py --quick        # seconds, tiny model (smoke test)
    python bench/profile_train_step.py --shape large  # bench/vs_pytorch.py's largest GPT (29.5M), full and LoRA q,v

Every run also prints the step by phase: forward (to the loss), backward, optimizer (AdamW step + zero_grad),
each phase's time outside the ops' own forward/backward being the Python overhead of that phase (the tape walk,
Tensor bookkeeping, module calls).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import minipeft as mp
from minipeft.autograd import Function
from minipeft.loss import causal_lm_loss
from minipeft.nn import GPTConfig
from minipeft.ops import _util


def _load_bench():
    """bench_train_step.py by file path, so this works as a script and when the tests import it."""
    path = Path(__file__).with_name("bench_train_step.py")
    spec = importlib.util.spec_from_file_location("bench_train_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_bench = _load_bench()
make, step = _bench.make, _bench.step

VARIANTS = _bench.VARIANTS


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@contextlib.contextmanager
def op_timers(totals: dict):
    """Add each op's forward and backward seconds to totals["<Op>.fwd"] / ["<Op>.bwd"] inside the block."""
    orig_apply = Function.__dict__["apply"]
    saved = {}

    def apply(cls, *inputs, **options):
        t = time.perf_counter()
        out = orig_apply.__func__(cls, *inputs, **options)
        totals[f"{cls.__name__}.fwd"] += time.perf_counter() - t
        return out

    for sub in _subclasses(Function):
        if "backward" in sub.__dict__:
            saved[sub] = sub.__dict__["backward"]

            def backward(ctx, dout, _orig=saved[sub].__func__, _name=sub.__name__):
                t = time.perf_counter()
                grads = _orig(ctx, dout)
                totals[f"{_name}.bwd"] += time.perf_counter() - t
                return grads

            sub.backward = staticmethod(backward)
    Function.apply = classmethod(apply)
    try:
        yield totals
    finally:
        Function.apply = orig_apply
        for sub, bwd in saved.items():
            sub.backward = bwd


@contextlib.contextmanager
def matmul_timer(totals: dict):
    """Add the seconds spent in every product the ops form (`ops._util.mm`) to totals["matmul"] inside the block."""
    orig = _util.mm

    def timed(a, b):
        t = time.perf_counter()
        out = orig(a, b)
        totals["matmul"] += time.perf_counter() - t
        return out

    users = [m for name, m in list(sys.modules.items())
             if name.startswith("minipeft") and getattr(m, "mm", None) is orig]
    for m in users:
        m.mm = timed
    try:
        yield totals
    finally:
        for m in users:
            m.mm = orig


# --shape large: bench/vs_pytorch.py's largest GPT (untied head, 29.5M parameters), batch 8 x 128, every target
LARGE = dict(vocab_size=4096, context_length=128, d_model=512, n_layer=8, n_head=8, d_ff=2048, tie_embeddings=False)


def batch(shape: str, cfg: GPTConfig, rng):
    """(ids, targets) of the pretraining shape (a target everywhere) or tutorial 03's (last 40 positions)."""
    if shape == "large":
        B, T = (4, 64) if cfg.vocab_size < 2048 else (8, 128)
        return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))
    if shape == "pretrain":
        B, T = (4, 64) if cfg.vocab_size < 2048 else (8, 256)
        return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))
    B, T, n = (4, 48, 10) if cfg.vocab_size < 2048 else (16, 180, 40)
    y = np.full((B, T), -100)
    y[:, -n:] = rng.integers(0, cfg.vocab_size, (B, n))
    return rng.integers(0, cfg.vocab_size, (B, T)), y


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=["finetune", "pretrain", "large"], default="finetune")
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    preset, overrides = ("test", {"context_length": 64}) if args.quick else ("mini", {})
    if args.shape == "large" and not args.quick:
        preset, overrides = "mini", LARGE      # every field overridden
    variants = ("full", "lora q,v") if args.shape == "large" else VARIANTS
    steps = 2 if args.quick else args.steps
    x, y = batch(args.shape, GPTConfig.from_preset(preset, **overrides), np.random.default_rng(0))
    models = {v: make(v, preset, overrides) for v in variants}
    for m, o in models.values():  # warm-up: first-step allocations and Adam state
        step(m, o, x, y)
    per_op = {v: defaultdict(float) for v in variants}
    in_mm = {v: defaultdict(float) for v in variants}
    phase = {v: defaultdict(float) for v in variants}
    wall = {v: [] for v in variants}
    for _ in range(steps):
        for v, (m, o) in models.items():
            with op_timers(per_op[v]), matmul_timer(in_mm[v]):
                t = time.perf_counter()
                timed_step(m, o, x, y, phase[v], per_op[v])
                wall[v].append(time.perf_counter() - t)
    print(f"{args.shape} shape, batch {x.shape[0]} x {x.shape[1]}, {preset if args.shape != 'large' else 'large'} "
          f"model; {steps} steps per variant")
    print(f"{'':<22}" + "".join(f"{v:>16}" for v in variants))
    print(f"{'step (ms, median)':<22}" + "".join(f"{1000 * np.median(wall[v]):>16.1f}" for v in variants))
    ratios = [np.median(np.array(wall[v]) / np.array(wall["full"])) for v in variants]
    print(f"{'ratio to full':<22}" + "".join(f"{r:>16.3f}" for r in ratios))
    names = sorted(set().union(*per_op.values()), key=lambda k: -max(per_op[v][k] for v in variants))
    print("ms per step in each op (forward = apply, backward = the op's backward):")
    for name in names:
        print(f"  {name:<20}" + "".join(f"{1000 * per_op[v][name] / steps:>16.2f}" for v in variants))
    rest = [1000 * (np.sum(wall[v]) - sum(per_op[v].values())) / steps for v in variants]
    print(f"  {'(outside the ops)':<20}" + "".join(f"{r:>16.2f}" for r in rest))
    # the step split into its matrix products (every ops._util.mm call, in any op) and everything else; the ratios
    # the step would have if that rest ran twice as fast (both cores, perfectly) or cost nothing
    mm_ms = {v: 1000 * in_mm[v]["matmul"] / steps for v in variants}
    step_ms = {v: 1000 * np.sum(wall[v]) / steps for v in variants}
    print("the step as matrix products + the rest (ms per step, mean):")
    print(f"  {'matrix products':<20}" + "".join(f"{mm_ms[v]:>16.2f}" for v in variants))
    print(f"  {'the rest':<20}" + "".join(f"{step_ms[v] - mm_ms[v]:>16.2f}" for v in variants))
    for label, f in (("ratio, rest at 2x", 0.5), ("ratio, rest free", 0.0)):
        full = mm_ms["full"] + f * (step_ms["full"] - mm_ms["full"])
        print(f"  {label:<20}" + "".join(f"{(mm_ms[v] + f * (step_ms[v] - mm_ms[v])) / full:>16.3f}" for v in variants))

    print("the step by phase (ms per step, mean; python = the phase's time outside the ops' forward/backward):")
    for label in ("forward", "forward python", "backward", "backward python", "optimizer"):
        print(f"  {label:<20}" + "".join(f"{1000 * phase[v][label] / steps:>16.2f}" for v in variants))


def timed_step(model, opt, x, y, phase: dict, per_op: dict) -> None:
    """step(), with each phase's seconds added to phase[...] and its time outside the ops to "... python"."""
    def in_ops(suffix):
        return sum(t for k, t in per_op.items() if k.endswith(suffix))

    f0, t0 = in_ops(".fwd"), time.perf_counter()
    loss = causal_lm_loss(model, x, y)
    t1 = time.perf_counter()
    b0 = in_ops(".bwd")
    loss.backward()
    t2 = time.perf_counter()
    opt.step()
    opt.zero_grad()
    t3 = time.perf_counter()
    phase["forward"] += t1 - t0
    phase["forward python"] += (t1 - t0) - (in_ops(".fwd") - f0)
    phase["backward"] += t2 - t1
    phase["backward python"] += (t2 - t1) - (in_ops(".bwd") - b0)
    phase["optimizer"] += t3 - t2


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
