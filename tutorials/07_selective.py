"""Tutorial 07: selective fine-tuning (BitFit, LayerNorm, the last block, the embeddings), sparse top-p%, and LoRA.

Claim (the course's): selective methods train a chosen subset of the model's *existing* parameters, the
bias terms (BitFit, Ben Zaken et al., 2022), the LayerNorm scales and shifts, the last blocks, the
embedding table, or the top p% of entries by a gradient score (sparse fine-tuning, Sung et al., 2021).
The parameter count falls by orders of magnitude, but the backward pass still runs through the whole
network to reach a bias in layer 0, so a step's time and activation memory stay near full fine-tuning's.
Only the weight-gradient products of frozen matrices are skipped. LoRA pays the same backward and adds a
small low-rank path, which is not what it saves: it saves optimizer state and storage.

Printed evidence, every figure measured in this run: per method the trainable parameters, the matrix-product
FLOPs of one training step (recorded, exact), step time (the methods alternated in rounds on one batch),
peak training memory, the bytes its adapter file takes (measured, and predicted from the shapes), then
ROUGE-L and fact recall after the same number of steps. Full fine-tuning runs through the same API
(`full_finetune_config()`), in the cost table only: tutorial 03 trains it for 300 steps.

Two details: with tied embeddings the embedding table is also the LM head, so "embeddings only" trains one
tensor that both read, and its gradient sums both paths. Sparse fine-tuning chooses its entries from the
mean squared gradient (an empirical Fisher estimate) over a few batches, over the whole model at once,
and stores them as a sparse diff (int32 indices + float32 values: 8 bytes per trained entry).

Learning rates: selective methods train few values, each of which must move further, and want a larger
rate than full fine-tuning's 1e-3; each method's is the best of 3-4 rates measured by bench/lr_probe.py
(LRS below; the table is in BENCHMARKS.md, "Tutorial 07: selective methods").

Measured in the full run (BENCHMARKS.md, "Tutorial 07: selective methods": 5 min 58 s on 2 cores, one seed, 60 test
dialogues): the claim holds where the backward must still reach layer 0. BitFit, LayerNorm, embeddings-only and sparse
1% train 0.2-25% of the parameters yet took 0.92-1.04x full fine-tuning's step time and 0.99-1.02x its peak memory
(BitFit, LayerNorm and embeddings-only skip the frozen weights' gradient products, 0.71-0.72x the FLOPs; sparse computes
them all and masks them, 0.99x; the activations are all kept); the last block alone is the exception, 0.72x the time and
0.32x the memory, because the backward stops at its input. LoRA r=8 took 0.86x. After 150 steps the last block,
embeddings-only and sparse 1% reached ROUGE-L 0.64-0.66 (facts 0.12-0.15) against LoRA's 0.69 / 0.24; BitFit (0.19) and
LayerNorm (0.17) stayed near the zero-shot base (0.09) at this budget, even at their best learning rates.

    python tutorials/07_selective.py          # ~6 minutes on 2 cores with the base model cached
    python tutorials/07_selective.py --quick  # a tiny model, seconds
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

import minipeft as mp
from minipeft import ops
from minipeft.loss import causal_lm_loss
from minipeft.memory import format_bytes
from minipeft.optim import AdamW
from minipeft.peft import (
    LoraConfig,
    SparseConfig,
    bitfit_config,
    embeddings_config,
    full_finetune_config,
    get_peft_model,
    last_k_layers_config,
    layernorm_config,
    select_sparse_entries,
)
from minipeft.peft.storage import adapter_file_bytes, adapter_tensor_bytes
from minipeft.train import train
from minipeft.workshop.data.generator import make_splits
from minipeft.workshop.finetune import evaluate, finetune, sft_sampler
from minipeft.workshop.pretrain import QUICK_NOTE, load_base_model

# ---- config -------------------------------------------------------------------------------------
TASK = "dialogsum"
N_TRAIN, N_TEST = 2000, 60
STEPS, BATCH = 150, 16                 # half tutorial 03's 300 steps: six methods must fit in minutes
LAST_K = 1                             # the last block of the base's 4
SPARSE_PERCENT, SCORE_BATCHES = 1.0, 8 # the top 1% of all entries, Fisher scores from 8 batches
LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
# learning rates: per method the best of 3-4 rates in bench/lr_probe.py (60 steps of 8, held-out loss; BENCHMARKS.md,
# "Tutorial 07: selective methods"). Every method wants 10x or more full fine-tuning's 1e-3 at this budget, and the
# fewer the values, the more: BitFit's biases 100x, the LayerNorm gains 300x
LRS = {"BitFit": 1e-1, "LayerNorm": 3e-1, f"last {LAST_K} block": 1e-2, "embeddings": 1e-2,
       f"sparse {SPARSE_PERCENT:g}%": 3e-2, "LoRA r=8": 1e-2}
TIMING_ROUNDS, TIMING_STEPS = 3, 2     # step time: every method TIMING_STEPS steps per round, rounds alternated
MAX_NEW = 48                           # tokens generated per summary
SEED = 0
QUICK = dict(N_TRAIN=64, N_TEST=2, STEPS=4, BATCH=8, SCORE_BATCHES=2, TIMING_ROUNDS=1, TIMING_STEPS=1, MAX_NEW=12)


def configs(base, sampler, score_batches: int, n_layer: int) -> dict:
    """Every method as a config of the one API (the sparse one chooses its entries on `base` first)."""
    sparse = select_sparse_entries(base, SparseConfig(percent=SPARSE_PERCENT, score="fisher"),
                                   [sampler(i) for i in range(score_batches)])
    return {"BitFit": bitfit_config(), "LayerNorm": layernorm_config(),
            f"last {LAST_K} block": last_k_layers_config(LAST_K, n_layer), "embeddings": embeddings_config(),
            f"sparse {SPARSE_PERCENT:g}%": sparse, "LoRA r=8": LoraConfig(**LORA),
            "full fine-tuning": full_finetune_config()}


def matmul_flops(model, x, y) -> int:
    """Exact FLOPs of the matrix products of one forward + backward: 2 n k m per (n, k) @ (k, m) formed."""
    with ops.record_matmuls() as log:
        causal_lm_loss(model, x, y).backward()
    model.zero_grad()
    return sum(2 * int(np.prod(np.broadcast_shapes(a[:-2], b[:-2]))) * a[-2] * a[-1] * b[-1] for a, b in log)


def costs(models: dict, batch: dict, rounds: int, steps: int) -> dict:
    """Per method: matmul FLOPs, median ms/step (methods alternated round by round), peak memory of a step."""
    x, y = batch["input_ids"], batch["targets"]
    opts = {k: AdamW(m.parameters(trainable_only=True), lr=1e-5) for k, m in models.items()}

    def run(k, n, memory=False):
        return train(models[k], lambda s: batch, steps=n, optimizer=opts[k], progress=False, log_every=0,
                     measure_memory=memory, grad_clip=1.0)

    out = {k: {"flops": matmul_flops(m, x, y), "ms": []} for k, m in models.items()}
    for k in models:
        run(k, 1)                                       # warm-up: AdamW state and scratch allocated once
    for _ in range(rounds):
        for k in models:
            out[k]["ms"].append(1000 * run(k, steps).wall_time_s / steps)
    for k in models:
        out[k]["ms"] = statistics.median(out[k]["ms"])
        out[k]["peak"] = run(k, 1, memory=True).peak_memory_bytes   # traced apart: tracing slows a step
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and data, finishes in seconds")
    args = parser.parse_args(argv)
    if args.quick:
        print(QUICK_NOTE)
    g = {k: (QUICK[k] if args.quick and k in QUICK else globals()[k])
         for k in ("N_TRAIN", "N_TEST", "STEPS", "BATCH", "SCORE_BATCHES", "TIMING_ROUNDS", "TIMING_STEPS",
                   "MAX_NEW")}
    splits = make_splits(TASK, g["N_TRAIN"], 8, g["N_TEST"], seed=SEED)
    base = load_base_model(quick=args.quick, progress=not args.quick)
    tok, n_base, ctx = base.tokenizer, base.model.num_parameters(), base.model.config.context_length
    fresh = lambda: load_base_model(quick=args.quick, progress=False).model  # noqa: E731 (a new copy per method)
    score_sampler = sft_sampler(splits["train"], TASK, tok, g["BATCH"], ctx, seed=SEED + 1)
    cfgs = configs(fresh(), score_sampler, g["SCORE_BATCHES"], base.model.config.n_layer)
    sparse_cfg = cfgs[f"sparse {SPARSE_PERCENT:g}%"]

    # ---- what a step costs, every method on one batch, full fine-tuning included ----------------------
    models = {}
    for name, cfg in cfgs.items():
        mp.manual_seed(SEED)
        models[name] = get_peft_model(fresh(), cfg)
    cost = costs(models, score_sampler(g["SCORE_BATCHES"]), g["TIMING_ROUNDS"], g["TIMING_STEPS"])
    for name, m in models.items():
        cost[name] |= {"trainable": m.get_nb_trainable_parameters()[0], "stored": adapter_file_bytes(m),
                       "predicted": adapter_tensor_bytes(m)}
    del models

    # ---- quality: each method trained the same number of steps, then scored by generation -------------
    zero_shot, _ = evaluate(base.model, tok, splits["test"], TASK, g["MAX_NEW"])
    quality, examples = {}, {}
    for name, lr in LRS.items():
        mp.manual_seed(SEED)
        peft = get_peft_model(fresh(), cfgs[name])
        res = finetune(peft, tok, TASK, splits["train"], steps=g["STEPS"], batch_size=g["BATCH"], lr=lr, seed=SEED,
                       progress=not args.quick, measure_memory=False, desc=name)
        scores, preds = evaluate(peft, tok, splits["test"], TASK, g["MAX_NEW"])
        quality[name] = {"lr": lr, "loss": res.final_loss, "train_s": res.wall_time_s, **scores}
        examples[name] = preds[0]

    full = cost["full fine-tuning"]
    print(f"\n{TASK}: cost of one training step, batch of {g['BATCH']} dialogues; {g['TIMING_ROUNDS']} alternated "
          f"rounds of {g['TIMING_STEPS']} steps (median)")
    print(f"{'method':<18}{'trainable':>11}{'% base':>8}{'GFLOP':>8}{'/full':>7}{'ms/step':>9}{'/full':>7}"
          f"{'peak mem':>11}{'/full':>7}{'grads+Adam':>12}{'stored':>11}{'predicted':>11}")
    for name, c in cost.items():
        print(f"{name:<18}{c['trainable']:>11,d}{100 * c['trainable'] / n_base:>7.2f}%{c['flops'] / 1e9:>8.2f}"
              f"{c['flops'] / full['flops']:>7.2f}{c['ms']:>9.0f}{c['ms'] / full['ms']:>7.2f}"
              f"{format_bytes(c['peak']):>11}{c['peak'] / full['peak']:>7.2f}{format_bytes(12 * c['trainable']):>12}"
              f"{format_bytes(c['stored']):>11}{format_bytes(c['predicted']):>11}")
    print("GFLOP: matrix products of one forward + backward (recorded, exact); peak mem: measured (tracemalloc)\n"
          "peak of a training step beyond the weights; grads+Adam: 12 bytes per trainable float32 parameter;\n"
          "stored: the adapter folder save_pretrained writes (measured); predicted: its tensors, size x itemsize")

    print(f"\n{TASK}: quality after {g['STEPS']} steps of {g['BATCH']} ({g['N_TRAIN']} dialogues), greedy summaries "
          f"of {g['N_TEST']} test dialogues")
    print(f"{'method':<18}{'lr':>8}{'final loss':>12}{'ROUGE-L':>9}{'facts':>7}{'train s':>9}")
    print(f"{'base, zero-shot':<18}{'-':>8}{'-':>12}{zero_shot['rougeL']:>9.3f}{zero_shot['fact_recall']:>7.2f}"
          f"{'-':>9}")
    for name, q in quality.items():
        print(f"{name:<18}{q['lr']:>8g}{q['loss']:>12.3f}{q['rougeL']:>9.3f}{q['fact_recall']:>7.2f}"
              f"{q['train_s']:>9.0f}")

    top = sorted(sparse_cfg.entries.items(), key=lambda kv: -kv[1])[:4]
    print(f"\nsparse {SPARSE_PERCENT:g}%: {sparse_cfg.total_entries:,d} entries chosen by Fisher score over the whole "
          "model; most went to " + ", ".join(f"{k} ({100 * v / sparse_cfg.total_entries:.0f}%)" for k, v in top))
    sel = [k for k in cost if k not in ("LoRA r=8", "full fine-tuning")]
    print("what the numbers show: selective step time / full " + ", ".join(f"{k} {cost[k]['ms'] / full['ms']:.2f}"
                                                                          for k in sel))
    print("  peak memory / full " + ", ".join(f"{k} {cost[k]['peak'] / full['peak']:.2f}" for k in sel))
    print("  trainable / full   " + ", ".join(f"{k} {cost[k]['trainable'] / full['trainable']:.4f}" for k in sel))
    print(f"\n--- test dialogue 0 ---\n{splits['test'][0]['dialogue']}\nreference : {splits['test'][0]['summary']}")
    for name, p in examples.items():
        print(f"{name:<18}: {p}")
    return {"cost": cost, "quality": quality, "zero_shot": zero_shot, "n_base": n_base,
            "sparse_entries": sparse_cfg.entries}


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
