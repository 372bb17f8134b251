"""Benchmark: NF4 dequantization throughput, and a QLoRA training step relative to LoRA's on the same model.

Reports, all measured in this one run:
- dequantization throughput: GB/s of float32 weights produced (4 bytes per value written) by
  Linear4bit.dequantize(), plain NF4 and NF4 + double quantization, for the tutorial model's matrices
  (128 x 128, 512 x 128) and a LLaMA-7B-sized one (4096 x 4096, 67 MB of float32 out); median of reps;
- one training step (forward, backward, AdamW) of LoRA r=8 on all six block linears of the tutorials'
  "mini" GPT, on the float32 base and on its NF4 + DQ quantization (QLoRA), with the fast ops (default) and
  with the reference ops: the variants alternated A B A B in one process, ratio = median of per-pair ratios
  (the machine's speed drifts); the step's dequantizations (two per 4-bit layer: forward and backward) are
  the difference, and are also timed alone (2 per 4-bit layer) as a share of the LoRA step;
- peak memory of a first step (tracemalloc, beyond the weights) and the bytes the weights hold.

    python bench/bench_qlora.py            # ~40 s on 2 cores (39 s on a 2-core AMD EPYC, 2026-12-01)
    python bench/bench_qlora.py --quick    # seconds, small shapes (smoke test)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import minipeft as mp
from minipeft import backend
from minipeft.loss import causal_lm_loss
from minipeft.memory import PeakMemory, format_bytes
from minipeft.nn import GPT, GPTConfig, Linear
from minipeft.optim import AdamW
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.quant import Linear4bit, model_bytes, quantize_model, quantized_layers

TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
VARIANTS = ("lora", "qlora")


def timed(fn) -> float:
    backend.synchronize()
    t = time.perf_counter()
    fn()
    backend.synchronize()
    return time.perf_counter() - t


def dequant_throughput(shapes, reps: int) -> None:
    """Print GB/s of float32 output of dequantize() for each shape, plain NF4 and with double quantization."""
    print("\ndequantization: float32 GB/s written (median of reps; 1 GB = 1e9 bytes)")
    print(f"{'shape':>14}{'values':>12}{'NF4 ms':>10}{'NF4 GB/s':>10}{'+DQ ms':>10}{'+DQ GB/s':>10}")
    for rows, cols in shapes:
        with backend.fork_rng():
            mp.manual_seed(0)
            lin = Linear(cols, rows, bias=False, std=0.02)
        layers = [Linear4bit.from_linear(lin, double_quant=dq) for dq in (False, True)]
        del lin
        cells = []
        for layer in layers:
            layer.dequantize()                                       # warm-up (and the code book's upload)
            t = float(np.median([timed(layer.dequantize) for _ in range(reps)]))
            cells.append((1000 * t, 4 * rows * cols / t / 1e9))
        print(f"{f'{rows}x{cols}':>14}{rows * cols:>12,d}" + "".join(f"{ms:>10.2f}{gbs:>10.2f}" for ms, gbs in cells))


def make(variant: str, cfg: GPTConfig):
    with backend.fork_rng():
        mp.manual_seed(0)
        model = GPT(cfg)
        if variant == "qlora":
            quantize_model(model)                                    # QLoRA's recipe: NF4 + double quantization
        peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    return peft, AdamW(peft.parameters(trainable_only=True), lr=1e-4)


def step(model, opt, x, y) -> None:
    loss = causal_lm_loss(model, x, y)
    loss.backward()
    opt.step()
    opt.zero_grad()


def compare_steps(cfg: GPTConfig, x, y, pairs: int, fast: bool) -> None:
    variants = {v: make(v, cfg) for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in variants}
    with mp.fast_ops(fast):
        for m, o in variants.values():
            step(m, o, x, y)                                         # warm-up
        for _ in range(pairs):
            for v, (m, o) in variants.items():
                times[v].append(timed(lambda m=m, o=o: step(m, o, x, y)))
        peaks = {}
        for v in VARIANTS:
            m, _ = make(v, cfg)
            with PeakMemory() as pm:
                step(m, AdamW(m.parameters(trainable_only=True), lr=1e-4), x, y)
            peaks[v] = pm.peak_bytes
    print(f"\ntraining step, LoRA r=8 on {', '.join(TARGETS)}; {'fast' if fast else 'reference'} ops; "
          f"{pairs} alternated pairs")
    print(f"{'variant':<10}{'ms/step':>10}{'ratio to LoRA':>15}{'peak memory':>14}{'weights held':>14}")
    for v in VARIANTS:
        ratio = float(np.median(np.array(times[v]) / np.array(times["lora"])))
        held = model_bytes(variants[v][0])["total"]
        print(f"{v:<10}{1000 * np.median(times[v]):>10.1f}{ratio:>15.3f}{format_bytes(peaks[v]):>14}"
              f"{format_bytes(held):>14}")
    # what QLoRA adds to the step, timed alone: every 4-bit layer dequantized twice (forward and backward)
    layers = list(quantized_layers(variants["qlora"][0]).values())
    with mp.fast_ops(fast):
        deq = float(np.median([timed(lambda: [m.dequantize() for m in layers for _ in range(2)])
                               for _ in range(3 * pairs)]))
    print(f"the step's {2 * len(layers)} dequantizations timed alone: {1000 * deq:.1f} ms, "
          f"{100 * deq / float(np.median(times['lora'])):.1f}% of the median LoRA step")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--pairs", type=int, default=20, help="A/B pairs per comparison")
    args = p.parse_args(argv)
    cfg = GPTConfig.from_preset("test", context_length=64) if args.quick else \
        GPTConfig.from_preset("mini", position_embedding="rope")
    B, T = (4, 64) if args.quick else (8, 256)
    pairs, reps = (2, 3) if args.quick else (args.pairs, 15)
    print(f"machine: {backend.device_name()}; numpy {np.__version__}; device {mp.get_device()}")
    shapes = [(16, 16), (64, 64)] if args.quick else [(128, 128), (512, 128), (4096, 4096)]
    dequant_throughput(shapes, reps)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, cfg.vocab_size, size=(B, T)), rng.integers(0, cfg.vocab_size, size=(B, T))
    print(f"\nmodel: {cfg.d_model}d x {cfg.n_layer} layers, d_ff {cfg.d_ff}, vocab {cfg.vocab_size}; "
          f"batch {B} x {T} tokens, a target at every position")
    for fast in (True, False):
        compare_steps(cfg, x, y, pairs, fast)


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
