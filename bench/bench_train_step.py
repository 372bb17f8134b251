"""Benchmark: one training step of the tutorial's base model, full fine-tuning vs LoRA, and inference.

Two step shapes: pretraining (every position has a target) and tutorial 03's fine-tuning shape
(targets on the completion only, so the LM head runs on those positions alone).

Reports, all measured in this one run:
- ms/step and tokens/s of a full fine-tuning step (pretraining shape) and of LoRA steps;
- the achieved fraction of this machine's float32 matmul rate: the step's matmul FLOPs are
  counted exactly with `ops.record_matmuls()` and the machine's rate is measured on a square
  float32 matmul just before;
- LoRA step time / full step time as the median of per-pair ratios, variants alternated A B A B
  (the machine's speed drifts, BENCHMARKS.md, "Machines"), beside the ratio of matmul FLOPs: what the
  step time ratio would be if the step were its matrix products alone, all at one rate;
- the same for a step that trains only the q and v biases: the floor under a LoRA q,v step (the same
  backward, no weight gradient at all);
- peak memory of a first training step (tracemalloc, beyond the weights: activations, gradients and
  the optimizer state that step creates) for each variant;
- inference (forward, no grad) time of the merged and unmerged LoRA model relative to the base.

    python bench/bench_train_step.py            # ~30 s on 2 cores (30 s on a 2-core AMD EPYC, 2026-12-01)
    python bench/bench_train_step.py --quick    # seconds, small shapes (smoke test)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import minipeft as mp
from minipeft import backend, ops
from minipeft.loss import causal_lm_loss
from minipeft.memory import PeakMemory, format_bytes
from minipeft.nn import GPT, GPTConfig
from minipeft.optim import AdamW
from minipeft.peft import LoraConfig, get_peft_model

ATTN = ["q_proj", "k_proj", "v_proj", "out_proj"]
# "q,v biases": every weight frozen, only the q and v projections' biases train. Its backward reaches exactly
# what LoRA q,v's must (each layer's q and v outputs, down to layer 0's attention) and forms no weight gradient
# at all, so it is the floor under any LoRA q,v step: LoRA adds only its low-rank products to it.
VARIANTS = ("full", "lora q,v", "lora attn+mlp", "q,v biases")


def matmul_rate(n: int = 1024, reps: int = 7) -> float:
    """Median float32 GFLOP/s of an n x n matmul (the ceiling a step can approach)."""
    xp = mp.xp()
    a = xp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    b = a.copy()
    a @ b
    times = []
    for _ in range(reps):
        backend.synchronize()                 # on a GPU: time the product, not its launch
        t = time.perf_counter()
        a @ b
        backend.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / np.median(times) / 1e9


def make_model(variant: str, preset: str, overrides: dict):
    mp.manual_seed(0)
    model = GPT(GPTConfig.from_preset(preset, **overrides))
    if variant == "full":
        return model
    if variant == "q,v biases":
        for name, p in model.named_parameters():
            p.requires_grad = name.endswith(("q_proj.bias", "v_proj.bias"))
        return model
    targets = ["q_proj", "v_proj"] if variant == "lora q,v" else ATTN + ["fc1", "fc2"]
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))


def make(variant: str, preset: str, overrides: dict):
    model = make_model(variant, preset, overrides)
    return model, AdamW(model.parameters(trainable_only=True), lr=1e-4)


def first_step_peak(variant: str, preset: str, overrides: dict, x, y) -> int:
    """Peak bytes allocated by a fresh optimizer's first step: Adam state + gradients + activations."""
    model = make_model(variant, preset, overrides)
    with PeakMemory() as pm:
        step(model, AdamW(model.parameters(trainable_only=True), lr=1e-4), x, y)
    return pm.peak_bytes


def step(model, opt, x, y) -> None:
    loss = causal_lm_loss(model, x, y)  # as minipeft.train does: the head runs where targets exist
    loss.backward()
    opt.step()
    opt.zero_grad()


def step_flops(model, opt, x, y) -> int:
    """Exact matmul FLOPs of one step: 2 * batch * n * k * m for every (.., n, k) @ (.., k, m) formed."""
    with ops.record_matmuls() as log:
        step(model, opt, x, y)
    total = 0
    for sa, sb in log:
        batch = int(np.prod(np.broadcast_shapes(sa[:-2], sb[:-2]))) if len(sa) > 2 or len(sb) > 2 else 1
        total += 2 * batch * sa[-2] * sa[-1] * sb[-1]
    return total


def timed(fn) -> float:
    """Seconds fn() takes, queued GPU work included."""
    backend.synchronize()
    t = time.perf_counter()
    fn()
    backend.synchronize()
    return time.perf_counter() - t


def compare_training(title: str, preset: str, overrides: dict, x, y, pairs: int, rate: float) -> dict:
    """Time full fine-tuning and two LoRA variants, interleaved; print one table; return the variants."""
    B, T = x.shape
    variants = {v: make(v, preset, overrides) for v in VARIANTS}
    flops = {v: step_flops(m, o, x, y) for v, (m, o) in variants.items()}  # also a warm-up step
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(pairs):  # interleave the variants so drift hits them alike
        for v, (m, o) in variants.items():
            times[v].append(timed(lambda m=m, o=o: step(m, o, x, y)))
    print(f"\n{title}")
    print(f"{'variant':<16}{'ms/step':>10}{'tokens/s':>11}{'GFLOP/step':>12}{'% of matmul rate':>18}"
          f"{'FLOPs / full':>14}{'ratio to full':>15}{'peak memory':>13}")
    for v in variants:
        ms = 1000 * float(np.median(times[v]))
        ratio = float(np.median(np.array(times[v]) / np.array(times["full"])))
        peak = first_step_peak(v, preset, overrides, x, y)
        frac = flops[v] / (ms / 1000) / 1e9 / rate
        print(f"{v:<16}{ms:>10.1f}{B * T / (ms / 1000):>11.0f}{flops[v] / 1e9:>12.2f}{100 * frac:>17.1f}%"
              f"{flops[v] / flops['full']:>14.3f}{ratio:>15.3f}{format_bytes(peak):>13}")
    return variants


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--pairs", type=int, default=8, help="A/B pairs per comparison")
    args = p.parse_args(argv)
    preset, overrides = ("test", {"context_length": 64}) if args.quick else ("mini", {})
    B, T = (4, 64) if args.quick else (8, 256)
    pairs = 2 if args.quick else args.pairs
    cfg = GPTConfig.from_preset(preset, **overrides)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, size=(B, T))
    y = rng.integers(0, cfg.vocab_size, size=(B, T))
    print(f"machine: {backend.device_name()}; numpy {np.__version__}; device {mp.get_device()}")
    print(f"model: {preset} {cfg.d_model}d x {cfg.n_layer} layers, vocab {cfg.vocab_size}; batch {B} x {T} tokens")
    rate = matmul_rate(256 if args.quick else 1024)
    print(f"float32 square matmul rate: {rate:.0f} GFLOP/s (median)")

    variants = compare_training(f"pretraining shape: batch {B} x {T}, a target at every position",
                                preset, overrides, x, y, pairs, rate)
    if not args.quick:  # tutorial 03's fine-tuning shape: 16 dialogues of ~180 tokens, ~40 of them targets
        xs = rng.integers(0, cfg.vocab_size, size=(16, 180))
        ys = np.full((16, 180), -100)
        ys[:, -40:] = rng.integers(0, cfg.vocab_size, size=(16, 40))
        compare_training("fine-tuning shape: batch 16 x 180, targets on the last 40 positions only",
                         preset, overrides, xs, ys, pairs, rate)

    peft, _ = variants["lora attn+mlp"]
    peft.eval()
    base = make_model("full", preset, overrides).eval()  # the same base weights (same seed), never wrapped

    def infer():
        with mp.no_grad():
            peft(x)

    def infer_base():
        with mp.no_grad():
            base(x)

    res = {"base": [], "unmerged": [], "merged": []}
    infer()
    for _ in range(pairs * 2):
        res["base"].append(timed(infer_base))
        res["unmerged"].append(timed(infer))
        peft.merge_adapter()
        res["merged"].append(timed(infer))
        peft.unmerge_adapter()
    print(f"\ninference, forward of {B} x {T} tokens, LoRA attn+mlp r=8 (median of per-pair ratios)")
    for k in ("base", "unmerged", "merged"):
        r = float(np.median(np.array(res[k]) / np.array(res["base"])))
        print(f"  {k:<10}{1000 * np.median(res[k]):>8.1f} ms   ratio to base {r:.3f}")


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
