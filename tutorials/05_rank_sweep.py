"""Tutorial 05: how small can the rank be?

Claim (Hu et al., 2021, sections 7.1-7.2): the update a task needs has a low "intrinsic rank", so
beyond a small r more rank adds parameters without a matching gain; and with a fixed parameter
budget, adapting more kinds of matrices (attention + MLP) beats a larger rank on q and v alone.

What to look for in the output: where each target set's score stops rising with r, and whether
attention+MLP at a small rank beats q,v at a large one. Each fine-tuning is 200 steps of 16 (four
ranks per target set keep the sweep under ten minutes on 2 cores); a short budget favours larger
ranks, since a rank-1 update learns less per step, so read the curve as "score after 200 steps".
Besides ROUGE-L, "facts" is the share of the reference's names, days, places and numbers the summary
states: the content a template cannot supply.

Measured on the base model of tutorial 01 (BENCHMARKS.md, "Tutorial 05: rank sweep"): after 200 steps the score still
rises all the way to r = 64 for both target sets (q,v ROUGE-L 0.11 -> 0.68, attention+MLP 0.27 -> 0.83), so at this
budget the small-rank claim is not reproduced; attention+MLP beats q,v at every rank, and at equal parameter counts (r =
4 attn+MLP, 36,864 parameters: 0.61, against r = 16 q,v, 32,768: 0.47).

Printed evidence: for r in {1, 4, 16, 64} and two target sets, the trainable parameters, the
validation loss on held-out dialogues, and ROUGE-L and fact recall on test dialogues. With the
`plots` extra (matplotlib) it also saves `rank_sweep.png`: score vs trainable parameters.

On the real LLM (`--base smollm2-135m-instruct`, REAL_LLM below) eight fine-tunings of a 135M model do not fit
15 minutes on 2 cores, so the sweep keeps what tests the two claims: LoRA on q,v at r = 1, 4, 16, 64 (is r = 4-16
about as good as 64?), and LoRA on every linear layer once, at the rank whose parameter count is nearest q,v's at
r = 16 (r = 3 on SmolLM2: 30,528 against 30,720 per layer), so "attention-only is often enough" is read at equal
parameters. Measured (2-core Xeon, 2026-12-08, commit 0b2b312; 40 steps of 4, 8 test dialogues, 16 validation rows):

    targets      r  trainable  val loss  ROUGE-L  facts
    q,v          1     57,600     0.900    0.551   0.65
    q,v          4    230,400     0.482    0.632   0.74
    q,v         16    921,600     0.182    0.624   0.79
    q,v         64  3,686,400     0.058    0.886   0.95
    all-linear   3    915,840     0.303    0.621   0.74

At this budget the small-rank claim does not hold on the real model either: the validation loss falls at every
rank (0.90 -> 0.06) and ROUGE-L jumps from 0.62-0.63 at r = 4-16 to 0.89 at r = 64 (8 test dialogues: one
summary moves the mean by up to 0.1, so r = 4 and 16 are a tie). At equal parameters attention-only is as good
as every linear (ROUGE-L 0.624 vs 0.621; validation loss 0.18 vs 0.30), the other way from the mini GPT, with
all-linear at its unprobed 1e-3 against q,v's 2e-3. The run took 28.3 minutes of wall time with another CPU-heavy
process beside it for most of it (load average 3-4; training steps 3.3 s at r = 64 once it was alone, 6.5-15 s
before): the figures are its scores, not its speed; quiet, the arithmetic below gives ~12 minutes.

    python tutorials/05_rank_sweep.py          # 9.5 minutes on 2 cores (8 fine-tunings)
    python tutorials/05_rank_sweep.py --quick  # seconds
    python tutorials/05_rank_sweep.py --base smollm2-135m-instruct   # the real LLM, 5 fine-tunings (REAL_LLM)
"""

from __future__ import annotations

import argparse

import numpy as np

import minipeft as mp
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.workshop.data.generator import make_splits
from minipeft.workshop.finetune import evaluate, finetune, validation_loss
from minipeft.workshop.pretrain import QUICK_NOTE, load_base_model
from minipeft.workshop.tutorial_base import add_base_option, is_llm, load_tutorial_base

# ---- config -------------------------------------------------------------------------------------
TASK = "dialogsum"
RANKS = [1, 4, 16, 64]
TARGET_SETS = {"q,v": ["q_proj", "v_proj"],
               "attn+MLP": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]}
# 60 test dialogues as in tutorial 03: over 20, the "within 90%" line below flipped between r=8 and r=64
# from one code change to the next (ROUGE-L noise, not a change of the curve)
N_TRAIN, N_VAL, N_TEST = 1500, 64, 60
STEPS, BATCH, LR, SEED = 200, 16, 3e-3, 0
PLOT = "rank_sweep.png"
QUICK = dict(RANKS=[1, 4], N_TRAIN=32, N_VAL=8, N_TEST=2, STEPS=3, BATCH=8)
# --base smollm2-135m-instruct: LoRA on q,v at four ranks and on every linear layer at one rank, the one whose count
# is nearest q,v's at r = EQUAL_TO (sets after the first run only that rank). Time, from the measured figures (load
# 6.4 s; a q,v LoRA step of 4 dialogues 2.7 s, all-linear somewhat more, ~3.5 s; generating one 48-token summary
# ~2-3 s, batched): 4 x 40 x 2.7 + 40 x 3.5 = 572 s of training, 5 x 8 test summaries ~ 100 s, 5 x 16 validation
# rows ~ 20 s, 6 loads ~ 40 s: 732 s, ~12 minutes. Learning rates: q,v as tutorial 12's (2e-3 at r = 8, alpha = 16; with
# alpha = 2r the scale alpha/r is 2 at every rank); all-linear's as tutorial 03's, not probed on this model (to probe:
# python bench/lr_probe.py --base smollm2-135m-instruct --methods "LoRA r=8" --lrs 3e-4 1e-3 3e-3 --steps 40 --batch 4)
REAL_LLM = dict(N_TRAIN=400, N_VAL=16, N_TEST=8, STEPS=40, BATCH=4, EQUAL_TO=16,
                TARGET_SETS={"q,v": ["q_proj", "v_proj"], "all-linear": "all-linear"},
                LR={"q,v": 2e-3, "all-linear": 1e-3})


def plot(results: list[tuple], labels: list[str], path: str) -> bool:
    try:
        import matplotlib  # noqa: PLC0415 (optional extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("(install the plots extra, pip install -e '.[plots]', to save a plot)")
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in labels:
        pts = [(n, s) for lab, r, n, _, s in results if lab == label]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"LoRA on {label}")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("ROUGE-L (test)")
    ax.set_title(f"LoRA rank sweep: r = {min(x[1] for x in results)} ... {max(x[1] for x in results)}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def equal_rank(count_at_1: int, target: int) -> int:
    """The rank r >= 1 whose LoRA count r * count_at_1 is nearest target (a tie goes to the smaller rank)."""
    below = max(1, target // count_at_1)
    return min((below, below + 1), key=lambda r: (abs(r * count_at_1 - target), r))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, three ranks, seconds")
    parser.add_argument("--plot", default=PLOT, help="where to save the PNG (needs matplotlib)")
    add_base_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        print(QUICK_NOTE)
    llm = is_llm(args.base)
    cfg = {"RANKS": RANKS, "N_TRAIN": N_TRAIN, "N_VAL": N_VAL, "N_TEST": N_TEST, "STEPS": STEPS, "BATCH": BATCH,
           "TARGET_SETS": TARGET_SETS, "LR": {label: LR for label in TARGET_SETS}, "EQUAL_TO": None,
           **(REAL_LLM if llm else {}), **(QUICK if args.quick else {})}
    ranks, n_train, n_val, n_test, steps, batch, target_sets = (
        cfg[k] for k in ("RANKS", "N_TRAIN", "N_VAL", "N_TEST", "STEPS", "BATCH", "TARGET_SETS"))
    splits = make_splits(TASK, n_train, n_val, n_test, seed=SEED)
    if llm:
        load = lambda: load_tutorial_base(args.base, args.quick)  # noqa: E731
        model, at_1 = load().model, {}
        for label, targets in target_sets.items():   # LoRA's count is linear in r: count each set once at r = 1
            peft = get_peft_model(model, LoraConfig(r=1, target_modules=targets))
            at_1[label] = peft.get_nb_trainable_parameters()[0]
            model = peft.unload()
        first = next(iter(target_sets))
        sweep = {label: ranks if label == first else [equal_rank(n, cfg["EQUAL_TO"] * at_1[first])]
                 for label, n in at_1.items()}
    else:
        load = lambda: load_base_model(quick=args.quick, progress=False)  # noqa: E731
        load_base_model(quick=args.quick, progress=not args.quick)  # build once, up front, if missing
        sweep = {label: ranks for label in target_sets}
    results = []
    print(f"{'targets':<10}{'r':>4}{'trainable':>11}{'val loss':>10}{'ROUGE-L':>9}{'facts':>7}{'train s':>9}")
    for label, targets in target_sets.items():
        for r in sweep[label]:
            base = load()
            mp.manual_seed(SEED)
            peft = get_peft_model(base.model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets))
            res = finetune(peft, base.tokenizer, TASK, splits["train"], steps=steps, batch_size=batch,
                           lr=cfg["LR"][label], warmup=min(20, steps // 10) if llm else 20, seed=SEED, progress=False,
                           measure_memory=False, log_every=0, desc=f"r={r}")
            vl = validation_loss(peft, base.tokenizer, splits["val"], TASK)
            scores, _ = evaluate(peft, base.tokenizer, splits["test"], TASK)
            n = peft.get_nb_trainable_parameters()[0]
            results.append((label, r, n, vl, scores["rougeL"]))
            print(f"{label:<10}{r:>4}{n:>11,d}{vl:>10.3f}{scores['rougeL']:>9.3f}{scores['fact_recall']:>7.2f}"
                  f"{res.wall_time_s:>9.0f}")
    best = max(results, key=lambda x: x[4])
    print(f"\nbest ROUGE-L {best[4]:.3f} ({best[0]}, r={best[1]}, {best[2]:,d} params)")
    for label in target_sets:
        sub = [x for x in results if x[0] == label]
        if len(sub) == 1:
            continue     # one rank: nothing to sweep (read against the first set at equal parameters, below)
        top = max(x[4] for x in sub)
        if top <= 0:
            print(f"{label:<10} no rank scored above 0 (too little training: try without --quick)")
            continue
        small = min((x for x in sub if x[4] >= 0.9 * top), key=lambda x: x[1])
        print(f"{label:<10} smallest rank within 90% of this set's best ROUGE-L ({top:.3f}): r={small[1]} "
              f"({small[4] / top:.0%}, {small[2]:,d} of up to {max(x[2] for x in sub):,d} parameters); "
              f"val loss spread over ranks: {np.ptp([x[3] for x in sub]):.3f}")
    if cfg["EQUAL_TO"] is not None:
        ref = next((x for x in results if x[0] == first and x[1] == cfg["EQUAL_TO"]), None)
        for label, r, n, vl, score in (x for x in results if x[0] != first):
            print(f"at equal parameters: {label} r={r} ({n:,d}, nearest {first} at r={cfg['EQUAL_TO']}: "
                  f"{cfg['EQUAL_TO'] * at_1[first]:,d}) ROUGE-L {score:.3f}, val loss {vl:.3f}"
                  + ("" if ref is None else f"; {first} r={ref[1]}: ROUGE-L {ref[4]:.3f}, val loss {ref[3]:.3f}"))
    if args.quick:
        print(f"(no {args.plot} under --quick)")
    elif plot(results, list(target_sets), args.plot):
        print(f"saved {args.plot}")
    return {"results": results, "at_1": at_1 if llm else None, "config": base.model.config}


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
