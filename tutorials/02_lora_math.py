"""Tutorial 02: the arithmetic of LoRA.

Claim (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): replacing the
update of a weight W0 (d x k) by a product B A with B (d x r), A (r x k) and r << min(d, k)
trains r (d + k) parameters instead of d k; for W0 in R^{512x64} and r = 8 that is
512 + 4,096 = 4,608 instead of 32,768 -- an 86% reduction. And because W = W0 + (alpha/r) B A is
again one matrix, the adapter can be merged into the base weight for inference: merged and
unmerged models compute the same function.

This script counts the parameters of real models built with minipeft (not just the formula),
checks the count against the formula, and shows merged vs unmerged outputs side by side.

    python tutorials/02_lora_math.py          # includes GPT-2-small and Vaswani-base sized models
    python tutorials/02_lora_math.py --quick  # small models only (seconds)
"""

from __future__ import annotations

import argparse

import numpy as np

import minipeft as mp
from minipeft.nn import GPT, GPTConfig, Linear, Module
from minipeft.peft import LoraConfig, get_peft_model

# ---- config -------------------------------------------------------------------------------------
SEED = 0
RANK = 8
TARGET_SETS = {
    "q,v": ["q_proj", "v_proj"],
    "all attention": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "attention+MLP": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


class OneLayer(Module):
    """A model that is a single Linear, to show the seed example on its own."""

    def __init__(self, d_out: int, d_in: int):
        self.proj = Linear(d_in, d_out, bias=False)

    def forward(self, x):
        return self.proj(x)


def seed_example() -> None:
    d, k = 512, 64
    model = OneLayer(d, k)
    full = model.num_parameters()
    peft = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=16, target_modules=["proj"]))
    lora = peft.num_parameters(trainable_only=True)
    formula = RANK * (d + k)
    print(f"W0 in R^({d}x{k}), r = {RANK}")
    print(f"  full fine-tuning trains d*k           = {full:>8,d}")
    print(f"  LoRA trains r*(d+k) = {RANK}*({d}+{k})     = {formula:>8,d}  (counted in the model: {lora:,d})")
    print(f"    of which A (r x k) = {RANK * k:,d} and B (d x r) = {d * RANK:,d}")
    print(f"  reduction 1 - {lora:,d}/{full:,d}          = {1 - lora / full:.3f}")
    assert lora == formula, "the model's count must equal the closed form"


def lora_formula(cfg: GPTConfig, targets: list[str], r: int) -> int:
    """r (d_in + d_out) per adapted matrix, summed over layers."""
    dims = {"q_proj": (cfg.d_model, cfg.d_model), "k_proj": (cfg.d_model, cfg.d_model),
            "v_proj": (cfg.d_model, cfg.d_model), "out_proj": (cfg.d_model, cfg.d_model),
            "fc1": (cfg.d_model, cfg.d_ff), "fc2": (cfg.d_ff, cfg.d_model)}
    return cfg.n_layer * sum(r * (dims[t][0] + dims[t][1]) for t in targets)


def model_table(presets: list[str]) -> None:
    print(f"\nLoRA r = {RANK} on whole models (counted in the built model; formula checked)")
    print(f"{'model':<14}{'base params':>14}{'targets':>16}{'trainable':>12}{'% of base':>13}")
    for name in presets:
        cfg = GPTConfig.from_preset(name)
        for label, targets in TARGET_SETS.items():
            mp.manual_seed(SEED)
            peft = get_peft_model(GPT(cfg), LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=targets))
            trainable, total = peft.get_nb_trainable_parameters()
            base_total = total - trainable
            assert trainable == lora_formula(cfg, targets, RANK)
            print(f"{name:<14}{base_total:>14,d}{label:>16}{trainable:>12,d}{100 * trainable / base_total:>12.3f}%")


def merge_demo() -> None:
    print("\nMerged vs unmerged outputs (mini model, adapter with non-zero B so it changes the output)")
    mp.manual_seed(SEED)
    cfg = GPTConfig.from_preset("mini", vocab_size=512)
    base = GPT(cfg)
    ids = np.random.default_rng(SEED).integers(0, cfg.vocab_size, size=(2, 32))
    base_logits = base(ids)[0].numpy()
    peft = get_peft_model(base, LoraConfig(r=RANK, lora_alpha=16, target_modules=TARGET_SETS["attention+MLP"],
                                           init_lora_weights=False))
    with mp.fast_ops(False):        # the reference op: the textbook two paths, x W0^T + s (x A^T) B^T
        unmerged = peft(ids)[0].numpy()
    folded = peft(ids)[0].numpy()   # the fast path: x (W0 + s B A)^T, the fold merge() stores
    peft.merge_adapter()
    merged = peft(ids)[0].numpy()
    peft.unmerge_adapter()
    rows = [("base model", base_logits), ("LoRA, unmerged", unmerged), ("LoRA, merged", merged)]
    print(f"{'':<16}" + "".join(f"logit[0,-1,{j}]".rjust(16) for j in range(4)))
    for label, arr in rows:
        print(f"{label:<16}" + "".join(f"{arr[0, -1, j]:>16.6f}" for j in range(4)))
    d_mu = np.abs(merged - unmerged).max()
    d_fold = np.abs(merged - folded).max()
    d_base = np.abs(unmerged - base_logits).max()
    scale = np.abs(unmerged).max()
    print(f"max |merged - unmerged|  = {d_mu:.2e}   ({d_mu / scale:.1e} of the largest logit: float32 rounding, "
          f"eps = {np.finfo(np.float32).eps:.1e};\n"
          "                             the two paths round x W0^T and s (x A^T) B^T separately, merged rounds W once)")
    print(f"max |unmerged - base|    = {d_base:.2e}   (the adapter really changes the model)")
    print(f"max |merged - folded|    = {d_fold:.2e}   (the library's fast path computes x (W0 + s B A)^T, the merged\n"
          "                             product itself: N r (d + k) multiply-adds become d r k, once per step)")
    assert d_mu < 1e-4 * scale and d_base > 100 * d_mu and d_fold <= d_mu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models only; finishes in seconds")
    args = parser.parse_args(argv)
    seed_example()
    model_table(["mini"] if args.quick else ["mini", "vaswani-base", "gpt2-small"])
    base_model_note()
    merge_demo()


def base_model_note() -> None:
    """The 'mini' preset keeps a learned position table; the tutorials' base model (tutorial 01) uses RoPE."""
    mini = GPT(GPTConfig.from_preset("mini"))
    rope = GPTConfig.from_preset("mini", position_embedding="rope")
    n = GPT(rope).num_parameters()
    pct = {k: 100 * lora_formula(rope, t, RANK) / n for k, t in TARGET_SETS.items()}
    print(f"('mini' here has learned positions, {mini.num_parameters() - n:,d} of its parameters; the tutorials' base "
          f"model uses RoPE instead: {n:,d} parameters, LoRA r = {RANK} " + ", ".join(f"{k} {v:.2f}%" for k, v in
                                                                                       pct.items()) + " of it)")


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
