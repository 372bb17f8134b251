"""Tutorial 09: does prompt tuning catch up with full fine-tuning as the model grows?

Claim (Lester et al., 2021, figure 1): prompt tuning trails model tuning (full fine-tuning) on small models and
the gap narrows as the model grows, until at ~10B parameters prompt tuning matches it ("the power of scale").

Here: GPTs of several sizes pretrained with one recipe (the base model's: same corpus, tokenizer, steps and
learning rate; only the width and depth differ), each fine-tuned on the sentiment task with prompt tuning
(20 virtual tokens), LoRA and full fine-tuning for the same number of steps, and scored by accuracy on held-out
reviews. The table gives, per size, each method's accuracy and its gap to full fine-tuning; with the `plots`
extra (matplotlib) it also saves `prompt_tuning_vs_scale.png`.

What this can and cannot show: the sizes here span about 0.1M to 1M parameters, a factor of ~12, where the
paper spans 60M to 11B (a factor of ~180) with every model thousands of times larger. A CPU cannot train the
sizes where the paper's gap closes, so this measures only the small-model end of the curve, honestly, whatever
it shows. The smaller models are also weaker readers: the table prints each size's validation perplexity and
its list-copying accuracy (tutorial 01's probe: how well it copies from its context), so a gap can be read
against what the base model can do at all.

Measured (BENCHMARKS.md, "Tutorial 09: prompt tuning vs model size"; 2-core Xeon, 2026-12-08, commit 0b2b312,
with `--base smollm2-135m-instruct`; 23.8 minutes for a run that pretrained all three GPT sizes, 2.3, 3.3 and 10.8
minutes; the GPT rows are the same without `--base`; ~4 minutes for them once the sizes are cached):

    size          params  val ppl  copy  zero-shot  prompt tuning n=20  LoRA r=8  full fine-tuning
    d32 x 2       91,008     2.52  0.51      0.000               0.020     0.890            0.905
    d64 x 2      231,168     2.04  0.54      0.000               0.380     0.885            0.950
    d128 x 4   1,055,488     1.87  0.91      0.000               0.290     0.935            0.960
    smollm2  134,515,008        -     -      0.400               0.950     1.000                -

Prompt tuning's gap to full fine-tuning over the GPT sizes: +0.885, +0.570, +0.670: it narrows from the smallest
to the largest but not at every step (at the middle size it was narrower than at the largest). Its gap to LoRA,
measured at every size: +0.870, +0.505, +0.645, and +0.050 on SmolLM2 (60 test reviews, 100 steps of 4): on a
real 135M-parameter model prompt tuning nearly matches LoRA on this task, the paper's curve continued, though
that model already picks the right label for 40% of the reviews zero-shot where no GPT here prints a label at all.
Prompt tuning's learning rate is the one measured for AdamW (3 on the GPTs; at Lester et al.'s 0.3, with d64 x 4
as the middle size, prompt tuning scored 0.000-0.035 and the gap widened; 0.3 on SmolLM2, see REAL_LLM).

Cost: each size is pretrained once and cached like the base model (the largest is the tutorials' base model,
built by tutorial 01); later runs only fine-tune.

With `--base smollm2-135m-instruct` the curve gets one more point, the real LLM: 135M parameters, ~130x the
largest GPT here and between the paper's smallest T5 (60M) and its "base" (220M). Full fine-tuning of 135M
parameters does not fit the time (every step updates 134.5M weights with AdamW), so on this point prompt tuning is
compared with LoRA on every linear layer, and the curve read across sizes is prompt tuning's gap to LoRA (printed for
every size; the GPT sizes also keep their gap to full fine-tuning). The LLM's two methods train on fewer rows, with
smaller batches, than the GPTs' (REAL_LLM below: 100 steps of 4 against 200 of 16, 60 test reviews against 200, so
that the run stays within 15 minutes on 2 cores with the GPT sizes cached). Prompt tuning converges more slowly than
LoRA, so a short budget widens its gap: the row says how large the gap is after that budget, not at convergence.

    python tutorials/09_prompt_tuning_vs_scale.py          # ~12 minutes the first time (two sizes pretrained), ~4 after
    python tutorials/09_prompt_tuning_vs_scale.py --quick  # seconds
    python tutorials/09_prompt_tuning_vs_scale.py --base smollm2-135m-instruct   # plus the real LLM (REAL_LLM)
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import minipeft as mp
from minipeft.peft import LoraConfig, PromptTuningConfig, get_peft_model
from minipeft.workshop.data.generator import make_splits
from minipeft.workshop.finetune import evaluate, finetune
from minipeft.workshop.pretrain import FULL, QUICK, QUICK_NOTE, load_base_model
from minipeft.workshop.tutorial_base import add_base_option, is_llm, load_tutorial_base

# ---- config -------------------------------------------------------------------------------------
TASK = "sentiment"
# GPT overrides on the base model's recipe (pretrain.FULL: "mini" preset, RoPE, 2400 steps); {} is the base itself
SIZES = {
    "d32 x 2": dict(d_model=32, n_head=2, d_ff=128, n_layer=2),
    "d64 x 2": dict(d_model=64, n_head=2, d_ff=256, n_layer=2),   # d64 x 4 took 8.7 min to pretrain: over budget
    "d128 x 4": {},
}
QUICK_SIZES = {"d16 x 2": dict(d_model=16, d_ff=32), "d32 x 2": {}}   # on pretrain.QUICK
N_TRAIN, N_TEST = 2000, 200
STEPS, BATCH, SEED = 200, 16, 0
# learning rates: prompt tuning's is the best of 10 in bench/lr_probe.py on this task with the base model (AdamW steps
# ~lr per coordinate, unlike the Adafactor of Lester et al.'s 0.3: held-out loss 2.85 at 0.3, 1.78 at 3, 1.81 at 10)
METHODS = {   # name: (config maker of LoRA's targets, or None for full fine-tuning; learning rate)
    "prompt tuning n=20": (lambda _: PromptTuningConfig(num_virtual_tokens=20, prompt_tuning_init="SAMPLE_VOCAB"), 3.0),
    "LoRA r=8": (lambda targets: LoraConfig(r=8, lora_alpha=16, target_modules=targets), 3e-3),
    "full fine-tuning": (None, 1e-3),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
# --base smollm2-135m-instruct: the real LLM as the largest point, prompt tuning and LoRA (full fine-tuning's step, with
# AdamW over 134.5M parameters, took 16 s for a single review in a check on a busy machine, where LoRA's took 0.35 s:
# even a few seconds a step on a quiet one would take this tutorial past 15 minutes). Time, from the measured figures
# (load 6.4 s; a LoRA step of 4 dialogues of ~180 tokens 2.7 s, a review with its chat template is ~75 tokens, so
# ~1.2 s a step, ~1.5 s on every linear layer, prompt tuning ~1.3 s; the forward of 60 test reviews ~8 s, 4 answer
# tokens each): 100 x (1.3 + 1.5) = 280 s of training, 3 evaluations ~ 30 s, 3 loads ~ 20 s: ~5.5 minutes, plus ~4
# for the GPT sizes once cached: ~9.5 minutes.
# Learning rates: LoRA on every linear layer as tutorial 03's (dialogsum), not probed on this model; prompt tuning's
# as tutorial 08's (probed on dialogsum, where 0.04 and 0.3 tied), not probed on this task.
# To probe prompt tuning's: python bench/lr_probe.py --base smollm2-135m-instruct --task sentiment --methods
# "prompt tuning n=20" --lrs 1e-2 4e-2 0.3 1 --steps 60 --batch 4 --n-val 16
REAL_LLM = dict(N_TRAIN=400, N_TEST=60, STEPS=100, BATCH=4, TARGETS="all-linear",
                LR={"prompt tuning n=20": 0.3, "LoRA r=8": 1e-3})
MAX_NEW = 4
PLOT = "prompt_tuning_vs_scale.png"


def recipe(base_recipe, overrides: dict):
    """The base recipe with the GPT's size changed (the cache key changes with it, so each size is cached)."""
    if not overrides:
        return base_recipe
    merged = {**dict(base_recipe.overrides), **overrides}
    return dataclasses.replace(base_recipe, overrides=tuple(sorted(merged.items())))


def plot(rows, methods, path: str) -> bool:
    """Accuracy against parameters (log scale) for each method, saved to path; False when matplotlib is missing."""
    try:
        import matplotlib  # noqa: PLC0415 (optional extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print(f"(matplotlib is not installed: pip install -e '.[plots]' to save {path})")
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        ran = [r for r in rows if m in r["acc"]]
        ax.plot([r["params"] for r in ran], [r["acc"][m] for r in ran], marker="o", label=m)
    ax.plot([r["params"] for r in rows], [r["zero_shot"] for r in rows], ls=":", color="grey", label="zero-shot")
    ax.set_xscale("log")
    ax.set_xlabel("model parameters")
    ax.set_ylabel(f"{TASK} accuracy")
    ax.set_title("prompt tuning vs model size (cf. Lester et al. 2021, fig. 1)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {path}")
    return True


def tune_each_method(row: dict, load, tok, splits: dict, steps: int, batch: int, lrs: dict, targets, llm: bool,
                     quick: bool) -> None:
    """Fine-tune a fresh copy of the base (load()) with every method that has a rate in lrs; accuracy, trainable
    count and seconds go into row."""
    for method, (make_config, _) in ((m, v) for m, v in METHODS.items() if m in lrs):
        mp.manual_seed(SEED)
        model = load()
        if make_config is not None:
            model = get_peft_model(model, make_config(targets))
        res = finetune(model, tok, TASK, splits["train"], steps=steps, batch_size=batch, lr=lrs[method],
                       warmup=min(20, steps // 10) if llm else 20, seed=SEED, progress=not quick,
                       measure_memory=False, desc=f"{row['size']} {method}")
        scores, _ = evaluate(model, tok, splits["test"], TASK, MAX_NEW)
        row["acc"][method] = scores["accuracy"]
        row["trainable"][method] = sum(p.size for p in model.parameters(trainable_only=True))
        row["seconds"][method] = res.wall_time_s


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and data, finishes in seconds")
    parser.add_argument("--plot", default=PLOT, help="where to save the PNG (needs matplotlib)")
    add_base_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        print(QUICK_NOTE)
    n_train, n_test, steps, batch = (64, 6, 4, 8) if args.quick else (N_TRAIN, N_TEST, STEPS, BATCH)
    base_recipe, sizes = (QUICK, QUICK_SIZES) if args.quick else (FULL, SIZES)
    splits = make_splits(TASK, n_train, 4, n_test, seed=SEED)
    lrs = {m: lr for m, (_, lr) in METHODS.items()}
    t_start = time.perf_counter()
    rows = []
    for size, overrides in sizes.items():
        t0 = time.perf_counter()
        cfg = recipe(base_recipe, overrides)
        base = load_base_model(cfg=cfg, progress=not args.quick)   # built and cached on the first run
        built = time.perf_counter() - t0
        tok = base.tokenizer
        zero, _ = evaluate(base.model, tok, splits["test"], TASK, MAX_NEW)
        probes = base.info.get("probes") or [{}]
        row = dict(size=size, params=base.model.num_parameters(), ppl=base.info["val_perplexity"],
                   d_model=base.model.config.d_model, n_layer=base.model.config.n_layer,
                   copy=probes[-1].get("list_second", float("nan")), zero_shot=zero["accuracy"], acc={},
                   trainable={}, seconds={}, load_s=built)
        tune_each_method(row, lambda cfg=cfg: load_base_model(cfg=cfg, progress=False).model, tok, splits, steps,
                         batch, lrs, TARGETS, False, args.quick)
        rows.append(row)
        print(f"{size}: {row['params']:,d} parameters, pretrained or loaded in {built:.0f} s, fine-tuned in "
              f"{sum(row['seconds'].values()):.0f} s")
    if is_llm(args.base):   # the real LLM, the largest point, on its own (smaller) budget
        llm = {**REAL_LLM, **(dict(N_TRAIN=n_train, N_TEST=n_test, STEPS=steps, BATCH=batch) if args.quick else {})}
        llm_splits = make_splits(TASK, llm["N_TRAIN"], 0, llm["N_TEST"], seed=SEED)
        t0 = time.perf_counter()
        base = load_tutorial_base(args.base, args.quick)
        built = time.perf_counter() - t0
        zero, _ = evaluate(base.model, base.tokenizer, llm_splits["test"], TASK, MAX_NEW)
        c = base.model.config
        row = dict(size=args.base.split("-")[0], params=base.model.num_parameters(), ppl=None, d_model=c.d_model,
                   n_layer=c.n_layer, copy=None, zero_shot=zero["accuracy"], acc={}, trainable={}, seconds={},
                   load_s=built, config=c, budget=(llm["N_TRAIN"], llm["N_TEST"], llm["STEPS"], llm["BATCH"]))
        tune_each_method(row, lambda: load_tutorial_base(args.base, args.quick).model, base.tokenizer, llm_splits,
                         llm["STEPS"], llm["BATCH"], llm["LR"], llm["TARGETS"], True, args.quick)
        rows.append(row)
        print(f"{row['size']}: {row['params']:,d} parameters, loaded in {built:.0f} s, fine-tuned in "
              f"{sum(row['seconds'].values()):.0f} s")

    methods = list(METHODS)
    print(f"\n{TASK}: {n_train} training reviews, {steps} steps of {batch} per method; accuracy on {n_test} test "
          "reviews (chance 0.50)")
    print(f"{'size':<10}{'params':>10}{'val ppl':>9}{'copy':>6}{'zero-shot':>10}"
          + "".join(f"{m:>20}" for m in methods) + f"{'gap PT':>8}{'gap LoRA':>9}")
    for r in rows:
        acc = {m: f"{r['acc'][m]:.3f}" if m in r["acc"] else "-" for m in methods}
        ppl, copy = ("-", "-") if r["ppl"] is None else (f"{r['ppl']:.2f}", f"{r['copy']:.2f}")
        full = r["acc"].get("full fine-tuning")
        gap_pt, gap_lora = (("-", "-") if full is None else
                            (f"{full - r['acc']['prompt tuning n=20']:+.3f}", f"{full - r['acc']['LoRA r=8']:+.3f}"))
        print(f"{r['size']:<10}{r['params']:>10,d}{ppl:>9}{copy:>6}{r['zero_shot']:>10.3f}"
              + "".join(f"{acc[m]:>20}" for m in methods) + f"{gap_pt:>8}{gap_lora:>9}")
    print("gap: full fine-tuning's accuracy minus the method's (positive: the method trails); copy: list-copying "
          "accuracy of the base model (tutorial 01); trainable parameters per method and size:")
    for r in rows:
        print(f"  {r['size']:<10}" + "  ".join(f"{m} {n:,d}" for m, n in r["trainable"].items()))
    lora_gaps = [r["acc"]["LoRA r=8"] - r["acc"]["prompt tuning n=20"] for r in rows]
    if "budget" in rows[-1]:
        print("{}: {} training reviews, {} test reviews, {} steps of {} per method (its own budget: a gap is after "
              "that many steps); LoRA on every linear layer; no full fine-tuning".format(rows[-1]["size"],
                                                                                         *rows[-1]["budget"]))
        trend = ("narrows" if lora_gaps[-1] < lora_gaps[0] - 0.02 else "widens" if lora_gaps[-1] > lora_gaps[0] + 0.02
                 else "stays within 0.02")
        print("prompt tuning's gap to LoRA (LoRA's accuracy minus prompt tuning's) by size: "
              + ", ".join(f"{r['size']} {g:+.3f}" for r, g in zip(rows, lora_gaps, strict=True))
              + f" ({trend} from the smallest to the largest)")
    rows_full = [r for r in rows if "full fine-tuning" in r["acc"]]
    gaps = [r["acc"]["full fine-tuning"] - r["acc"]["prompt tuning n=20"] for r in rows_full]
    trend = "narrows" if gaps[-1] < gaps[0] - 0.02 else "widens" if gaps[-1] > gaps[0] + 0.02 else "stays within 0.02"
    largest = "largest size" if len(rows_full) == len(rows) else "largest size fine-tuned in full"
    print(f"prompt tuning's gap to full fine-tuning from the smallest to the {largest}: {gaps[0]:+.3f} -> "
          f"{gaps[-1]:+.3f} ({trend}); {time.perf_counter() - t_start:.0f} s in all")
    plotted = not args.quick and plot(rows, methods, args.plot)
    if args.quick:
        print(f"(no {args.plot} under --quick)")
    return dict(rows=rows, gaps=gaps, lora_gaps=lora_gaps, plotted=plotted)


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
