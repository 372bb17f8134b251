"""Learning-rate probe: which lr each method wants at a short budget, by held-out loss.

Methods that train few values want larger learning rates than full fine-tuning, and a rate published for
another optimizer does not carry over: BitFit trains biases deep in the network (1e-4..1e-3 against 2e-5 for
BERT in its paper), and Lester et al.'s 0.3 for prompt tuning is Adafactor's, whose step is relative to the
parameter's scale, where AdamW's is absolute (~lr per coordinate per step). This probe fine-tunes each method at
a few learning rates with finetune()'s schedule (AdamW, cosine, 20 warmup steps, clip 1.0) and reports the
teacher-forced loss on held-out rows, so the tutorials use the best rate measured rather than a guess.

    python bench/lr_probe.py                      # tutorial 07's selective methods and LoRA on dialogsum
    python bench/lr_probe.py --methods "prompt tuning n=20" "prefix tuning n=20" --task sentiment
    python bench/lr_probe.py --methods BitFit --lrs 0.1      # one method, chosen rates
    python bench/lr_probe.py --quick              # the tiny base, seconds
    python bench/lr_probe.py --base smollm2-135m-instruct --methods full --lrs 1e-5 3e-5 1e-4 --steps 20 --batch 4

With --recipes, the methods are the comparison's (minipeft/workshop/compare/recipes.py, built as the table builds
them) at the grids of RECIPE_GRIDS, and the best rates print as the LLM_RATES entries the table reads:

    python bench/lr_probe.py --base smollm2-135m-instruct --recipes full lora-qv --steps 15 --batch 4 --n-val 16
"""

from __future__ import annotations

import argparse
import time

import minipeft as mp
from minipeft.peft import (
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    SparseConfig,
    bitfit_config,
    embeddings_config,
    get_peft_model,
    last_k_layers_config,
    layernorm_config,
    select_sparse_entries,
)
from minipeft.workshop.compare.recipes import METHOD_RECIPES, BuildContext
from minipeft.workshop.data.generator import make_splits
from minipeft.workshop.finetune import finetune, sft_sampler, validation_loss
from minipeft.workshop.tutorial_base import add_base_option, is_llm, load_tutorial_base

# Each grid is wide enough that its best rate is not at an edge: the measured grids are in
# BENCHMARKS.md, "Tutorial 07: selective methods" and BENCHMARKS.md, "Tutorial 08: soft prompts".
LRS = {
    "full": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3],
    "BitFit": [1e-2, 3e-2, 1e-1, 3e-1],
    "LayerNorm": [3e-2, 1e-1, 3e-1, 1.0],
    "embeddings": [3e-3, 1e-2, 3e-2],
    "last 1 block": [1e-3, 3e-3, 1e-2, 3e-2],
    "sparse 1%": [3e-3, 1e-2, 3e-2, 1e-1],
    "LoRA r=8": [3e-3, 1e-2, 3e-2],
    "prompt tuning n=20": [3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, 30.0, 100.0],
    "prefix tuning n=20": [3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0],
}
SELECTIVE = ["BitFit", "LayerNorm", "embeddings", "last 1 block", "sparse 1%", "LoRA r=8"]   # tutorial 07's
# The comparison's recipes on a pretrained LLM: three rates each, a half-decade apart, around what a 135M-parameter
# pretrained model is known to take (full fine-tuning ~3e-5, LoRA ~1e-3; tutorials 03 and 12) and, for the rest,
# below the mini GPT's rate, which a pretrained model's larger activations make too large. QLoRA is not probed: it
# trains LoRA's adapters on the same (dequantized) weights and takes LoRA all-linear's rate, as in Dettmers et al.
RECIPE_GRIDS = {
    "full": [1e-5, 3e-5, 1e-4], "lora-qv": [1e-3, 3e-3, 1e-2], "lora-all": [3e-4, 1e-3, 3e-3],
    "houlsby": [3e-4, 1e-3, 3e-3], "pfeiffer": [3e-4, 1e-3, 3e-3], "ia3": [1e-2, 3e-2, 1e-1],
    "layernorm": [1e-3, 1e-2, 1e-1], "last-layer": [3e-5, 1e-4, 3e-4], "sparse": [3e-4, 1e-3, 3e-3],
    "prompt-tuning": [0.1, 0.3, 1.0], "prefix-tuning": [3e-2, 1e-1, 3e-1],
}


def config(method: str, base, sampler, n_layer: int, llm: bool):
    """The adapter config of `method` on `base` (None: full fine-tuning, every weight trains)."""
    if method == "full":
        return None
    if method == "sparse 1%":
        return select_sparse_entries(base, SparseConfig(percent=1.0), [sampler(i) for i in range(4)])
    return {"BitFit": bitfit_config, "LayerNorm": layernorm_config, "embeddings": embeddings_config,
            "last 1 block": lambda: last_k_layers_config(1, n_layer),
            "LoRA r=8": lambda: LoraConfig(r=8, lora_alpha=16, target_modules="all-linear" if llm else [
                "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]),
            "prompt tuning n=20": lambda: PromptTuningConfig(num_virtual_tokens=20, prompt_tuning_init="SAMPLE_VOCAB"),
            "prefix tuning n=20": lambda: PrefixTuningConfig(num_virtual_tokens=20)}[method]()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--task", default="dialogsum", choices=["dialogsum", "qa", "sentiment"])
    parser.add_argument("--methods", nargs="+", choices=sorted(LRS), default=SELECTIVE,
                        help="the methods to probe (default: tutorial 07's)")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPE_GRIDS),
                        help="the comparison's recipes instead of --methods, at RECIPE_GRIDS' rates")
    parser.add_argument("--lrs", type=float, nargs="+", help="these learning rates for every method probed")
    parser.add_argument("--n-val", type=int, default=64, help="held-out rows the loss is measured on")
    add_base_option(parser)
    args = parser.parse_args(argv)
    llm = is_llm(args.base)
    grids = RECIPE_GRIDS if args.recipes else LRS
    lrs_of = {m: args.lrs or grids[m] for m in args.recipes or args.methods}
    steps, batch, n_val = (4, 4, 8) if args.quick else (args.steps, args.batch, args.n_val)
    task = args.task
    splits = make_splits(task, 64 if args.quick else 2000, n_val, 4, seed=0)
    tok = load_tutorial_base(args.base, args.quick).tokenizer
    results = {}
    print(f"{task}: {steps} steps of {batch}; held-out loss on {n_val} rows (lower is better)")
    for method, lrs in lrs_of.items():
        for lr in lrs:
            mp.manual_seed(0)
            base = load_tutorial_base(args.base, args.quick).model
            sampler = sft_sampler(splits["train"], task, tok, batch, base.config.context_length, seed=1)
            if args.recipes:
                peft = METHOD_RECIPES[method].make(base, BuildContext(lambda n, s=sampler: [s(i) for i in range(n)]))
            else:
                cfg = config(method, base, sampler, base.config.n_layer, llm)
                peft = base if cfg is None else get_peft_model(base, cfg)
            t0 = time.perf_counter()
            res = finetune(peft, tok, task, splits["train"], steps=steps, batch_size=batch, lr=lr, seed=0,
                           warmup=min(20, steps // 10) if llm else 20, progress=False, measure_memory=False,
                           log_every=0)
            val = validation_loss(peft, tok, splits["val"], task)
            results[(method, lr)] = val
            print(f"{method:<19} lr {lr:<7g} train loss {res.final_loss:.3f}  held-out loss {val:.3f}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    best = {m: min(lrs, key=lambda lr: results[(m, lr)]) for m, lrs in lrs_of.items()}
    print("best lr: " + ", ".join(f"{m} {lr:g}" for m, lr in best.items()))
    if args.recipes:
        when = time.strftime("%Y-%m-%d")
        print("as LLM_RATES entries (minipeft/workshop/compare/recipes.py):")
        for m, lr in best.items():
            grid = "/".join(f"{x:g}" for x in lrs_of[m])
            print(f'    "{m}": ({lr:g}, "best held-out loss of {grid}, {steps} steps of {batch} (bench/lr_probe.py '
                  f'--recipes, {when})"),')
    return {"results": results, "best": best}


if __name__ == "__main__":
    mp.tune_allocator()
    main()
