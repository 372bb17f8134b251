"""Tutorial 06: bottleneck adapters and (IA)^3 against LoRA, in score and in what they cost at inference.

Claims: bottleneck adapters (Houlsby et al., 2019: one after the attention output and one after the MLP
output of every block; Pfeiffer et al., 2020: after the MLP only) reach full fine-tuning's quality with a few
percent of the parameters, but a nonlinearity sits between their two projections, so they cannot be merged
into the base weights and every forward pass pays for them; LoRA merged into W0 adds nothing (Hu et al.,
2021, section 4.1: "no additional inference latency"). (IA)^3 (Liu et al., 2022) rescales the keys, the values
and the MLP's inner activation with learned vectors: far fewer parameters than LoRA (here 24x fewer than LoRA
r=8: 3,072 against 73,728), and mergeable.

Setup: the summarization task of tutorial 03, every method fine-tuned for the same steps, batch and seed. The
bottleneck widths are computed so each layout trains as many parameters as LoRA r=8 on all six matrices; (IA)^3
trains what it trains (k, v: d each, fc2's input: d_ff, per block), so it is set beside LoRA r=1 on the same
three matrices, the smallest LoRA there. Learning rates, picked by validation loss after 60 steps (BENCHMARKS.md,
"Tutorial 06: adapters and (IA)^3", has the grid): LoRA and the bottleneck adapters share one, 1e-2 (better than 3e-3
for both LoRA r=8 and Houlsby); (IA)^3 needs a far larger step, 3e-1: its vectors start at 1 and multiply, and over 3e-3
... 3e-1 its validation loss fell at every step up the grid (5.81, 4.53, 2.86, 1.74, 1.42).

Printed evidence: per method the trainable parameters (and %), ROUGE-L, ROUGE-2 and fact recall on the test
dialogues; then the inference latency of each form a model is deployed in, measured in one run with the
forms alternated (A B C ... A B C ...) and the median taken: the plain base model, merged LoRA and merged
(IA)^3 (plain models again), unmerged LoRA, and the two adapter layouts, which cannot be merged (the refusal is
printed). Two workloads: a forward pass over a batch (prefill / scoring) and greedy generation with the KV
cache (one token per forward, where per-layer overheads weigh most).

Measured (BENCHMARKS.md, "Tutorial 06: adapters and (IA)^3"; 5 min 42 s on 2 idle cores): at LoRA's budget (~73k
parameters, 7% of the base's) LoRA r=8 scored ROUGE-L 0.739 / facts 0.33, Houlsby 0.675 / 0.18, Pfeiffer 0.655 / 0.15:
the adapters came close in ROUGE but not in facts, and here did not match LoRA. (IA)^3 with 3,072 parameters scored
0.370 / 0.06, well above LoRA r=1 on the same matrices (4,608: 0.213 / 0.04), far below the 73k methods. Inference at
this size is within this machine's noise (±15%) for every form but unmerged LoRA: the forward pass over a batch took
0.99-1.02x the base's time, and greedy decoding 0.86-1.17x (~4 ms per token, where merged LoRA, the base's very shapes,
measured 0.94x). The adapters' extra products are small next to the layer's own here. Unmerged LoRA decoded at 1.17x:
its fast path folds W0 + s B A (d r k multiply-adds) only when N (d + k) >= d k, so a single token takes the low-rank
path.

    python tutorials/06_adapters.py          # 5 fine-tunings of 200 steps: ~6 minutes on 2 cores
    python tutorials/06_adapters.py --quick  # a tiny model, seconds
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

import minipeft as mp
from minipeft.autograd import no_grad
from minipeft.generate import generate
from minipeft.peft import BottleneckConfig, IA3Config, LoraConfig, PeftModel, get_peft_model
from minipeft.workshop.data.generator import get_task, make_splits
from minipeft.workshop.finetune import evaluate, finetune
from minipeft.workshop.pretrain import QUICK_NOTE, load_base_model

# ---- config -------------------------------------------------------------------------------------
TASK = "dialogsum"
N_TRAIN, N_TEST = 2000, 60
STEPS, BATCH, SEED = 200, 16, 0                     # tutorial 05's budget per fine-tuning (tutorial 03: 300)
ALL_SIX = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
LORA = dict(r=8, lora_alpha=16, target_modules=ALL_SIX)          # tutorial 03's LoRA: the budget to match
IA3_TARGETS = ["k_proj", "v_proj", "fc2"]                        # the paper's: keys, values, MLP activation
LR = {"lora": 1e-2, "adapter": 1e-2, "ia3": 3e-1}   # see the docstring
NON_LINEARITY = "relu"                              # AdapterHub's for Pfeiffer (its Houlsby uses swish, not built here)
LATENCY_ROUNDS, LATENCY_BATCH, GEN_TOKENS = 10, (16, 128), 32
QUICK = dict(N_TRAIN=64, N_TEST=3, STEPS=6, BATCH=8, LATENCY_ROUNDS=3, LATENCY_BATCH=(4, 16), GEN_TOKENS=4)


def matched_bottleneck(budget: int, n_adapters: int, d: int) -> int:
    """The width m whose n_adapters x (2 d m + d + m) parameters come closest to `budget` (1 <= m <= d)."""
    return int(min(max(round((budget / n_adapters - d) / (2 * d + 1)), 1), d))


def methods(d_model: int, n_layer: int, lora_budget: int) -> list[tuple[str, object, float]]:
    """(label, config, learning rate) of every method compared."""
    houlsby = matched_bottleneck(lora_budget, 2 * n_layer, d_model)
    pfeiffer = matched_bottleneck(lora_budget, n_layer, d_model)
    return [
        (f"LoRA r={LORA['r']} (6 matrices)", LoraConfig(**LORA), LR["lora"]),
        (f"Houlsby m={houlsby}", BottleneckConfig.houlsby(bottleneck_size=houlsby, non_linearity=NON_LINEARITY),
         LR["adapter"]),
        (f"Pfeiffer m={pfeiffer}", BottleneckConfig.pfeiffer(bottleneck_size=pfeiffer, non_linearity=NON_LINEARITY),
         LR["adapter"]),
        ("(IA)^3 (k, v, fc2)", IA3Config(target_modules=IA3_TARGETS, feedforward_modules=["fc2"]), LR["ia3"]),
        ("LoRA r=1 (k, v, fc2)", LoraConfig(r=1, lora_alpha=2, target_modules=IA3_TARGETS), LR["lora"]),
    ]


def deployed(peft, quick: bool) -> tuple[object, float]:
    """The merged plain model of a mergeable PeftModel, rebuilt from its saved adapter on a fresh base as it
    would be deployed, and the largest |merged - unmerged| logit over one batch (float32 rounding only)."""
    with tempfile.TemporaryDirectory() as d:
        peft.save_pretrained(d)
        merged = PeftModel.from_pretrained(load_base_model(quick=quick, progress=False).model, d).merge_and_unload()
    ids = np.arange(24).reshape(2, 12) % merged.config.vocab_size
    with no_grad():
        a, b = merged(ids)[0].numpy(), peft(ids)[0].numpy()
    return merged, float(np.abs(a - b).max())


def time_forms(forms: dict[str, object], ids: np.ndarray, prompt: list[int], rounds: int,
               gen_tokens: int) -> dict[str, dict[str, float]]:
    """Median seconds of a forward pass on `ids` and of greedy generation per token, each form timed once per
    round in an order that rotates every round, so a slow spell of the machine falls on every form alike."""
    names = list(forms)
    fwd: dict[str, list[float]] = {n: [] for n in names}
    gen: dict[str, list[float]] = {n: [] for n in names}
    for model in forms.values():                                     # warm-up: allocations, caches
        model.eval()
        with no_grad():
            model(ids)
        generate(model, prompt, gen_tokens)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            model = forms[name]
            t = time.perf_counter()
            with no_grad():
                mp.to_numpy(model(ids)[0].data)                       # read back: the work is done, even on a GPU
            fwd[name].append(time.perf_counter() - t)
            t = time.perf_counter()
            generate(model, prompt, gen_tokens)
            gen[name].append((time.perf_counter() - t) / gen_tokens)
    return {n: {"forward_s": float(np.median(fwd[n])), "gen_token_s": float(np.median(gen[n]))} for n in names}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and data, finishes in seconds")
    args = parser.parse_args(argv)
    if args.quick:
        print(QUICK_NOTE)
    cfg = {k: QUICK[k] if args.quick else globals()[k] for k in QUICK}
    splits = make_splits(TASK, cfg["N_TRAIN"], 8, cfg["N_TEST"], seed=SEED)
    base = load_base_model(quick=args.quick, progress=not args.quick)
    tok, gpt = base.tokenizer, base.model.config
    n_base = base.model.num_parameters()
    lora_budget = get_peft_model(load_base_model(quick=args.quick, progress=False).model,
                                 LoraConfig(**LORA)).get_nb_trainable_parameters()[0]

    rows, trained = [], {}
    for label, config, lr in methods(gpt.d_model, gpt.n_layer, lora_budget):
        mp.manual_seed(SEED)
        peft = get_peft_model(load_base_model(quick=args.quick, progress=False).model, config)
        print(f"{label}: ", end="")
        peft.print_trainable_parameters()
        res = finetune(peft, tok, TASK, splits["train"], steps=cfg["STEPS"], batch_size=cfg["BATCH"], lr=lr,
                       seed=SEED, progress=not args.quick, measure_memory=False, log_every=0, desc=label)
        scores, _ = evaluate(peft, tok, splits["test"], TASK)
        n = peft.get_nb_trainable_parameters()[0]
        rows.append({"method": label, "trainable": n, "percent": 100 * n / n_base, "lr": lr,
                     "rougeL": scores["rougeL"], "rouge2": scores["rouge2"], "facts": scores["fact_recall"],
                     "train_s": res.wall_time_s})
        trained[label] = peft

    print(f"\n{TASK}: {cfg['N_TRAIN']} training dialogues, {cfg['STEPS']} steps of {cfg['BATCH']}; "
          f"scores on {cfg['N_TEST']} test dialogues")
    print(f"{'method':<24}{'trainable':>11}{'% base':>8}{'lr':>8}{'ROUGE-L':>9}{'ROUGE-2':>9}{'facts':>7}"
          f"{'train s':>9}")
    for r in rows:
        print(f"{r['method']:<24}{r['trainable']:>11,d}{r['percent']:>7.2f}%{r['lr']:>8.0e}{r['rougeL']:>9.3f}"
              f"{r['rouge2']:>9.3f}{r['facts']:>7.2f}{r['train_s']:>9.0f}")

    # ---- inference: the forms each method is deployed in --------------------------------------------
    lora, houlsby, pfeiffer, ia3 = (trained[r["method"]] for r in rows[:4])
    try:
        houlsby.merge_and_unload()
    except TypeError as e:
        print(f"\nhoulsby.merge_and_unload() refuses: {str(e).split(': ', 1)[1]}")
    lora_merged, lora_err = deployed(lora, args.quick)
    ia3_merged, ia3_err = deployed(ia3, args.quick)
    print(f"merged vs unmerged, max |logit difference|: LoRA {lora_err:.1e}, (IA)^3 {ia3_err:.1e} (float32)")
    forms = {"base model (no adapter)": load_base_model(quick=args.quick, progress=False).model,
             "LoRA r=8, merged": lora_merged, "(IA)^3, merged": ia3_merged, "LoRA r=8, unmerged": lora,
             "(IA)^3, unmerged": ia3, rows[1]["method"] + " adapters": houlsby,
             rows[2]["method"] + " adapters": pfeiffer}
    B, T = cfg["LATENCY_BATCH"]
    ids = np.random.default_rng(SEED).integers(0, gpt.vocab_size, (B, T))
    prompt_text = get_task(TASK).to_prompt_completion(splits["test"][0])[0].rstrip(" ")
    prompt = tok.encode(prompt_text)[: gpt.context_length - cfg["GEN_TOKENS"]]
    lat = time_forms(forms, ids, prompt, cfg["LATENCY_ROUNDS"], cfg["GEN_TOKENS"])
    ref = lat["base model (no adapter)"]
    print(f"\ninference latency, median of {cfg['LATENCY_ROUNDS']} alternated rounds ({mp.get_device()}): a forward "
          f"pass over {B} x {T} tokens, and greedy generation ({cfg['GEN_TOKENS']} tokens, KV cache) per token")
    print(f"{'deployed as':<28}{'forward ms':>11}{'x base':>8}{'ms/token':>10}{'x base':>8}")
    for name, t in lat.items():
        print(f"{name:<28}{1e3 * t['forward_s']:>11.2f}{t['forward_s'] / ref['forward_s']:>8.2f}"
              f"{1e3 * t['gen_token_s']:>10.2f}{t['gen_token_s'] / ref['gen_token_s']:>8.2f}")
    print("merged forms are plain models of the base's shapes: any difference from the base row is timing noise.")
    return {"rows": rows, "latency": lat, "merge_error": {"lora": lora_err, "ia3": ia3_err},
            "lora_budget": lora_budget, "m": {"houlsby": houlsby.peft_config["default"].bottleneck_size,
                                              "pfeiffer": pfeiffer.peft_config["default"].bottleneck_size},
            "d_model": gpt.d_model, "n_layer": gpt.n_layer, "d_ff": gpt.d_ff}


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
