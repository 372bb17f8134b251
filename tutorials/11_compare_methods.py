"""Tutorial 11: every method in one table -- the whole story of PEFT at once.

Claims (the course's, each measured here, whichever way it comes out):
1. PEFT methods train a small share of the parameters (0.01% to a few %) and store kilobytes per task instead of
   a model copy, and come close to full fine-tuning's quality.
2. They train in less memory: a frozen float32 weight needs no gradient and no AdamW state (12 bytes saved per
   parameter). At this model's size (1M parameters) the activations dominate a training step, so the saving
   is small here; the accounting of 1B-65B models from their shapes shows where it decides what fits on a GPU
   (QLoRA: a 65B model on one 48 GB GPU).
3. PEFT forgets less of what pretraining taught than full fine-tuning: perplexity on held-out pretraining text,
   before and after fine-tuning (with the adapter active: unloaded, a PEFT model is the base, bit for bit).
4. Methods that merge into the weights (LoRA, (IA)^3, selective, sparse) add no inference latency once merged;
   bottleneck adapters and soft prompts cannot merge and pay for their extra computation on every token.

Measured in the full run (BENCHMARKS.md, "Tutorial 11: every method in one table": 150 steps of 16, 30 test dialogues,
one seed; 12.9 minutes): full fine-tuning 0.73 ROUGE-L; LoRA on every linear 0.67 with 7% of the parameters, QLoRA 0.65,
the last block, Houlsby and Pfeiffer adapters and sparse 1% 0.60-0.64; LoRA q,v 0.49; prefix tuning 0.32; (IA)^3,
BitFit, LayerNorm and prompt tuning 0.07-0.26 at this budget. Every method trains in ~200 MiB but the last block (71
MiB): the activations dominate. Forgetting came out against claim 3: with the adapter active, only prompt tuning raised
the held-out perplexity less than full fine-tuning did (+75% against +124%). Unmerged, QLoRA decodes at 2.4x the base's
time per token (it dequantizes every layer for each token); merged, every method runs the base's shapes.

Setup: `python -m minipeft compare` runs the same code (minipeft.workshop.compare). Every method fine-tunes the
cached base model of tutorial 01 on the summarization task with the same data, steps, batch and seed, each at the
learning rate its own tutorial found or used (minipeft/workshop/compare/recipes.py says where each comes from).

Printed evidence: the table (trainable parameters, bytes stored per task, ms per training step, training memory
measured by component, ROUGE-L and facts, held-out perplexity before -> after, ms per generated token as trained
and merged); the memory of full fine-tuning, LoRA and QLoRA predicted from shapes beside the measured step; the
large-model accounting beside the LoRA and QLoRA papers' figures; then what the numbers show. With the `plots`
extra it saves compare.png (quality vs trainable %, log scale; memory by component) beside compare.csv/.json.

On the real instruct model (`--base smollm2-135m-instruct`: `llm_config`, 30 steps of 4 dialogues, 8 test
dialogues, each method at a learning rate probed on that model, LLM_RATES in recipes.py) forgetting is measured on
what the model knew: the share of 74 general-knowledge questions it answered right zero-shot that it still answers,
and its perplexity on the Declaration of Independence. BitFit does not run there: a Llama has no bias terms.
Measured (README.md's table, BENCHMARKS.md, "The comparison on SmolLM2"; 49 minutes on 2 cores, 2026-12-08):
full fine-tuning scored highest (ROUGE-L 0.886) and kept 38% of the answers (perplexity +13%); LoRA on every
linear 0.762 and 3%, the adapters 0.77-0.83 and 5-7%, prefix tuning 0.41 and 1%; only prompt tuning (81%), the
last block (62%) and (IA)^3 (58%) kept more than full fine-tuning. At these rates (held-out loss after 10 steps,
several at the top of their grid) claim 3 did not hold on the real model either. Predicted memory matched the
measured step (ratio 1.000 for full, LoRA and QLoRA); unmerged QLoRA decodes at 8.8x the base's time per token.

    python tutorials/11_compare_methods.py          # 13 fine-tunings of 150 steps: ~13 minutes on 2 cores
    python tutorials/11_compare_methods.py --quick  # the tiny model, every column filled, numbers meaningless
    python tutorials/11_compare_methods.py --base smollm2-135m-instruct   # the real LLM, 12 methods
"""

from __future__ import annotations

import argparse
import math
import tempfile
import textwrap

import minipeft as mp
from minipeft.generate import context_left
from minipeft.memory import format_bytes
from minipeft.workshop.compare import CompareConfig, format_table, llm_config, quick_config, run_compare, write_outputs
from minipeft.workshop.compare.memory_large import LARGE_MODELS, PAPER_FIGURES, large_model_memory, weights_bytes
from minipeft.workshop.compare.memory_predict import predict_step
from minipeft.workshop.compare.recipes import METHOD_RECIPES, NF4_DQ
from minipeft.workshop.compare.report import forgetting_pct
from minipeft.workshop.data.generator import make_splits
from minipeft.workshop.finetune import sft_sampler
from minipeft.workshop.pretrain import QUICK_NOTE
from minipeft.workshop.tutorial_base import add_base_option, is_llm, load_tutorial_base

# ---- config -------------------------------------------------------------------------------------
CONFIG = CompareConfig()                                   # dialogsum, all 13 methods, 150 steps of 16, seed 0
QUICK = quick_config(progress=False, steps=2)
OUT = "compare_out"                                        # where the full run writes compare.csv/.json/.png
LARGE = ("GPT-3 XL 1.3B", "LLaMA-7B", "LLaMA-65B")         # the calculator's table (QLoRA's recipe: r=64, all)
PREDICTED = ("full", "lora-qv", "lora-all", "qlora")          # the methods predict_step models
PARTS = ("weights", "gradients", "optimizer_state", "activations", "peak")


def say(text: str) -> None:
    print(textwrap.fill(text, 110, initial_indent="- ", subsequent_indent="  "))


def print_predicted(result, cfg: CompareConfig) -> dict:
    """predict_step from shapes beside the step the harness measured, for the methods it models."""
    base = load_tutorial_base(cfg.base, cfg.quick)
    train = make_splits(cfg.task, cfg.n_train, 0, cfg.n_test, seed=cfg.seed)["train"]
    batch = sft_sampler(train, cfg.task, base.tokenizer, cfg.batch_size, context_left(base.model), cfg.seed)(0)
    B, T = batch["input_ids"].shape
    n_targets = int((batch["targets"] != -100).sum())
    print(f"\nmemory of one training step, predicted from shapes vs measured (batch {B} x {T} tokens, {n_targets} "
          "with a target)")
    print(f"{'method':<22}{'component':<18}{'predicted':>12}{'measured':>12}{'ratio':>8}")
    out = {}
    for row in result.rows:
        if row["method"] not in PREDICTED:
            continue
        quant = NF4_DQ if row["method"] == "qlora" else None
        method = "full" if row["method"] == "full" else METHOD_RECIPES[row["method"]].config(base.model)  # as trained
        pred = predict_step(base.model.config, method, batch_size=B, seq_len=T, n_targets=n_targets,
                            quantization=quant).as_dict()
        out[row["method"]] = {p: (pred[p], row["memory"][p]) for p in PARTS}
        for i, p in enumerate(PARTS):
            meas = row["memory"][p]
            print(f"{row['label'] if i == 0 else '':<22}{p.replace('_', ' '):<18}{format_bytes(pred[p]):>12}"
                  f"{format_bytes(meas):>12}{pred[p] / meas:>8.3f}")
    print("predicted / measured, ratio; activations: every array the tape keeps "
          "(minipeft/workshop/compare/memory_predict.py lists them); the measured step also holds the tape's Python "
          "objects, which only a tiny model notices")
    return out


def print_large() -> dict:
    """Full fine-tuning, LoRA and QLoRA of large models from their shapes, then the papers' figures beside ours."""
    print("\nlarge models from their shapes (16-bit weights and gradients, AdamW state in float32; LoRA and QLoRA "
          "r=64 on\nevery linear, as QLoRA trains; activations for batch 1 x 512 tokens with gradient checkpointing)")
    print(f"{'model':<15}{'method':<7}{'weights':>10}{'adapters':>10}{'grads':>10}{'Adam':>10}{'activ.':>10}"
          f"{'total':>10}  fits on")
    out = {}
    for name in LARGE:
        for method in ("full", "lora", "qlora"):
            m = large_model_memory(name, method, r=64).as_dict()
            out[f"{name} {method}"] = m
            fits = next((f"{g} GB" for g in (24, 48, 80) if m["total"] <= g * 1e9),
                        f"{math.ceil(m['total'] / 80e9)} x 80 GB")
            print(f"{name:<15}{method:<7}" + "".join(f"{m[k] / 1e9:>8.1f}GB" for k in (
                "weights", "adapters", "gradients", "optimizer_state", "activations", "total")) + f"  {fits}")
    q65, f65 = out["LLaMA-65B qlora"], out["LLaMA-65B full"]
    gpt3 = LARGE_MODELS["GPT-3 175B"]
    lora3 = large_model_memory(gpt3, "lora", r=4, targets=("q", "v")).as_dict()
    full3 = large_model_memory(gpt3, "full").as_dict()
    checks = [
        ("qlora_65b_full_gb", (f65["total"] - f65["activations"]) / 1e9, "GB", "weights + gradients + Adam"),
        ("qlora_65b_qlora_gb", q65["total"] / 1e9, "GB", "NF4+DQ base + r=64 adapters, grads, Adam, activations"),
        ("lora_175b_full_tb", (full3["total"] - full3["activations"]) / 1e12, "TB", "12 bytes per parameter"),
        ("lora_175b_lora_gb", lora3["total"] / 1e9, "GB", "16-bit base + r=4 q,v adapters"),
        ("lora_175b_checkpoint_mb", lora3["adapters"] / 2**20, "MiB", "r=4 q,v adapters in 16 bits"),
    ]
    print(f"\n{'the papers say':<66}{'paper':>7}{'here':>8}  (what is counted here)")
    for key, ours, unit, what in checks:
        paper, claim = PAPER_FIGURES[key]
        print(f"{claim:<66}{paper:>7g}{ours:>8.1f} {unit:<3} ({what})")
    print(f"GPT-3 175B in bf16 holds {weights_bytes(gpt3, 'bf16') / 1e9:.0f} GB of weights (the LoRA paper's checkpoint"
          " size, 350GB). Its 1.2TB for full\nfine-tuning is ~7 bytes per parameter; the paper does not say how it "
          "trained (precision, sharding): 12 bytes\n(bf16 weights and gradients, float32 Adam) give the 2.1 TB here, "
          "the same arithmetic that matches QLoRA's 780 GB")
    return {"table": out, "checks": {k: ours for k, ours, *_ in checks}}


def label_pct(row: dict) -> str:
    return f"{row['label']} {forgetting_pct(row):+.1f}%"


def conclusions(result) -> None:
    rows = {r["method"]: r for r in result.rows}
    metric, full = result.meta["metric"], rows.get("full")
    peft = [r for k, r in rows.items() if k not in ("base", "full")]
    print("\nwhat the numbers show:")
    if full is not None:
        close = [r["label"] for r in peft if r["scores"][metric] >= full["scores"][metric] - 0.02]
        say(f"full fine-tuning scores {full['scores'][metric]:.3f}; within 0.02 of it: "
            f"{', '.join(close) or 'no PEFT method'} (one seed and {result.meta['config']['n_test']} test examples: "
            "differences of a few hundredths are noise).")
        less = [r for r in peft if forgetting_pct(r) < forgetting_pct(full)]
        say(f"forgetting: full fine-tuning moved the perplexity on {result.meta['forgetting_text']} by "
            f"{forgetting_pct(full):+.1f}%; "
            f"{len(less)} of {len(peft)} PEFT methods moved it less "
            f"({', '.join(label_pct(r) for r in sorted(peft, key=forgetting_pct))}). Measured with each adapter "
            "active, each method at its own learning rate, one seed. With the adapter disabled or unloaded a PEFT "
            "model is the base again, bit for bit (tests/test_tuner_contract.py): that, full fine-tuning cannot offer.")
        if full.get("knowledge") is not None:
            kept = [r for r in peft if r["knowledge"] > full["knowledge"]]
            say(f"general knowledge: the base answers {rows['base']['knowledge']:.0%} of the questions it was chosen "
                f"on, full fine-tuning {full['knowledge']:.0%} after its fine-tune; {len(kept)} of {len(peft)} PEFT "
                "methods kept more (" + ", ".join(f"{r['label']} {r['knowledge']:.0%}"
                                                   for r in sorted(peft, key=lambda r: -r["knowledge"])) + ").")
        small = min(peft, key=lambda r: r["stored_bytes"]) if peft else None
        if small is not None:
            say(f"a task costs {format_bytes(full['stored_bytes'])} on disk with full fine-tuning, "
                f"{format_bytes(small['stored_bytes'])} with {small['label']}; training memory "
                f"{format_bytes(full['memory']['total'])} for full fine-tuning against "
                f"{format_bytes(min(r['memory']['total'] for r in peft))} at the least (activations dominate here).")
    unmergeable = [r for r in peft if not r["mergeable"]]
    if unmergeable:
        base_ms = rows["base"]["latency_ms"]
        say("per generated token the base takes " f"{base_ms:.2f} ms; methods that cannot merge: " + ", ".join(
            f"{r['label']} {r['latency_ms'] / base_ms:.2f}x" for r in unmergeable) + "; merged ones: " + ", ".join(
            f"{r['label']} {r['latency_merged_ms'] / base_ms:.2f}x" for r in peft if r["mergeable"]) + ".")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and data, under a minute")
    add_base_option(parser)
    parser.add_argument("--out", default=None, help=f"folder for compare.csv/.json/.png (default {OUT}; --quick: a "
                        "temporary folder)")
    args = parser.parse_args(argv)
    if args.quick:
        print(QUICK_NOTE)
    llm = is_llm(args.base)
    if args.quick:
        cfg = quick_config(progress=False, steps=2, base=args.base) if llm else QUICK
    else:
        cfg = llm_config(args.base) if llm else CONFIG
    result = run_compare(cfg)
    print(format_table(result))
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or (tmp if args.quick else OUT if not llm else f"{OUT}_{args.base}")
        temporary = " (a temporary folder, removed at exit: --out DIR keeps it)" if out == tmp else ""
        for kind, path in write_outputs(result, out, plot=not args.quick).items():
            print(f"wrote {kind}: {path}{temporary}")
    m = result.meta
    load = ", ".join(f"{x:.2f}" for x in m["machine"]["load_average"] or [])
    print(f"{len(result.rows) - 1} methods in {m['wall_s']:.0f} s on {m['machine']['processor']}, "
          f"{m['machine']['cpus']} CPUs (load average {load})")
    predicted = print_predicted(result, cfg)
    large = print_large()
    conclusions(result)
    return {"result": result, "predicted": predicted, "large": large}


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
