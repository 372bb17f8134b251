"""Tutorial 10: QLoRA: fine-tune LoRA adapters on a base model held in 4 bits.

Claim (Dettmers et al., 2023, "QLoRA"): storing the frozen base in 4-bit NormalFloat (NF4, blocks of 64)
with double quantization (the block scales quantized again to 8 bits) takes ~4.127 bits per weight
instead of 16 or 32, and LoRA adapters trained through it (the weights dequantized on the fly) reach the
quality of LoRA on the unquantized base, which is how a 7B model fine-tunes on one GPU.

Printed evidence, on the cached base model of tutorial 01:
1. bytes of the model in float32, NF4 and NF4 + DQ, measured from the arrays held, and the linears' bits
   per parameter against the closed form (4 + 32/64 = 4.5; 4 + 8/64 + 32/(64*256) = 4.127);
2. the quantization error (mean, RMS, max, relative RMS) and its worst case against the NF4 bound;
3. validation perplexity of the quantized base against the float32 one;
4. QLoRA (LoRA r=8 on every block linear of the NF4 + DQ base) against LoRA on the float32 base, same
   data, steps and seed: ROUGE-1/2/L, fact recall, training time per step, peak training memory, bytes of
   weights held; then merging the QLoRA adapter, exactly (into float32) and re-quantized (a second rounding);
5. the same accounting for LLaMA-7B (and 65B) from their shapes alone, beside the QLoRA paper's figures.
The last lines say what the numbers show.

At this model's size (1M parameters) the weights are ~4 MB and the activations of a training step ~200
MiB, so QLoRA's saving shows in the bytes of weights, not in the peak training memory; the 7B table is
where the weights dominate.

Measured in the full run (BENCHMARKS.md, "QLoRA"; 4 min 34 s on 2 cores): NF4 + DQ holds the linears in
4.128 bits per weight (the formula's 4.127 plus one 32-bit mean per tensor) and the whole base in 1.4 MiB
against 4.0 MiB; every weight's error lies within its bound (worst 1.00 of it); perplexity 1.8665 -> 1.8706.
QLoRA reached ROUGE-L 0.719 / facts 0.26 against LoRA's 0.740 / 0.27 on the float32 base (one seed, 60
dialogues: within noise), at 1.01x LoRA's step time in bench/bench_qlora.py's alternated run; merging exactly
into float32 changed no logit; re-quantizing the merged weights moved logits by up to 2.1 and scored 0.739.

On the real instruct model (`--base smollm2-135m-instruct`, REAL_LLM below) the same evidence comes from
its 210 linears (106M of its 135M weights), with the error's worst case per layer kind (q, k, v, o, gate,
up, down) and, in place of the mini GPT's corpus, its perplexity on English text it did not see here (the
Declaration of Independence, minipeft/workshop/data/english.txt) before and after quantizing. Measured (2-core
Xeon, 2026-12-08, commit 0b2b312; 9.9 minutes, alone on the machine; LoRA r=8 on every linear at lr 1e-3, 40 steps
of 4, 6 test dialogues): NF4 + DQ holds the base in 160.4 MiB against 513.1 MiB (its linears at 4.1270 bits per
weight; the float32 embedding table, 108.1 MiB, is most of what remains); the weights move by 9.4% (RMS), every
one within its bound (worst 1.00 of it, in every layer kind); the perplexity on the Declaration goes 20.33 ->
34.70 (x1.71: a 135M model feels 4 bits far more than the mini GPT, x1.002). QLoRA reached ROUGE-L 0.887 / facts
0.94 against LoRA's 0.853 / 0.83 on the float32 base (6 test dialogues: a tie), a step 1.27x LoRA's (single runs,
4.0 s against 3.2 s), peak training memory 1.3 against 1.7 GiB, weights held 169.7 against 522.5 MiB. Merged
into float32 the QLoRA adapter changes no logit; re-quantizing the merged weights to NF4 moves logits by up to
21.7 and drops ROUGE-L to 0.110: on this model the way back to 4 bits loses the fine-tune.

    python tutorials/10_qlora.py          # ~4.5 minutes on 2 cores (two fine-tunings of 300 steps)
    python tutorials/10_qlora.py --quick  # a tiny model, seconds
    python tutorials/10_qlora.py --base smollm2-135m-instruct   # the real LLM (REAL_LLM below)
"""

from __future__ import annotations

import argparse
import math
import textwrap

import numpy as np

import minipeft as mp
from minipeft import to_numpy
from minipeft.autograd import no_grad
from minipeft.memory import format_bytes
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.quant import (
    BitsAndBytesConfig,
    bits_per_parameter,
    max_half_gap,
    model_bytes,
    quantization_error,
    quantize_model,
    quantized_layers,
)
from minipeft.quant.double_quant import absmax_error_bound, max_half_gap_dynamic
from minipeft.quant.storage import bytes_from_shapes, llama_matrices
from minipeft.workshop.data.batching import encode_corpus
from minipeft.workshop.data.generator import make_corpus, make_splits
from minipeft.workshop.data.knowledge import ENGLISH_FILE, text_perplexity
from minipeft.workshop.finetune import evaluate, finetune
from minipeft.workshop.pretrain import FULL, QUICK, QUICK_NOTE, lm_loss
from minipeft.workshop.tutorial_base import add_base_option, is_llm, load_tutorial_base

# ---- config -------------------------------------------------------------------------------------
TASK = "dialogsum"
N_TRAIN, N_TEST = 2000, 60                    # as tutorial 03
STEPS, BATCH, LR, SEED = 300, 16, 3e-3, 0
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
NF4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
NF4_DQ = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
QUICK_SIZES = dict(N_TRAIN=64, N_TEST=4, STEPS=8, BATCH=8)
# --base smollm2-135m-instruct: LoRA r=8 on every linear at 1e-3 (tutorial 03's REAL_LLM rate for all-linear, from
# bench/lr_probe.py --base smollm2-135m-instruct), 40 steps of 4 dialogues, 6 test dialogues, the held-out loss on
# 32 validation dialogues. Time on 2 cores from BENCHMARKS.md's figures ("The real model"; "QLoRA": NF4 + DQ
# dequantizes ~1.3 GB/s, so the 106M linear weights take ~0.33 s): 5 loads x 6.4 s = 32 s; 4 quantizations and 2
# error passes over 106M weights ~25 s; held-out loss, 5 models x 32 rows (forward only, ~a third of a 2.7 s step
# per 4 rows) ~40 s; training 40 x ~3.5 s (LoRA on every linear, more than q, v's 2.7 s) = 140 s and QLoRA
# 40 x (3.5 + 2 x 0.33) s = 166 s; generation of <= 48 tokens for 6 dialogues: float models (LoRA, merged)
# 2 x 6 x 4 s = 48 s, 4-bit models (QLoRA, re-quantized merge: every token dequantizes every layer)
# 2 x 6 x (4 + 48 x 0.33) s = 238 s. About 690 s: 11.5 minutes.
REAL_LLM = dict(N_TRAIN=400, N_VAL=32, N_TEST=6, STEPS=40, BATCH=4, LR=1e-3, WARMUP=4, TARGETS="all-linear")
# LLaMA (Touvron et al., 2023, table 2): d_model, layers, MLP width (SwiGLU), vocabulary
LLAMA = {"LLaMA-7B": (4096, 32, 11008, 32000), "LLaMA-65B": (8192, 80, 22016, 32000)}
# QLoRA paper figures (Dettmers et al., 2023): section 3 (double quantization) and table 1 (model sizes, 4-bit)
PAPER = {"scale bits NF4": 0.5, "scale bits NF4+DQ": 0.127, "DQ saving 65B GB": 3.0,
         "Guanaco 7B GB": 6.0, "Guanaco 65B GB": 41.0}


def say(text: str) -> None:
    print(textwrap.fill(text, 110, initial_indent="- ", subsequent_indent="  "))


def base_copy(base: str, quick: bool, config: BitsAndBytesConfig | None = None):
    """A fresh copy of the cached base model (quantized in place if a config is given)."""
    model = load_tutorial_base(base, quick).model
    return model if config is None else quantize_model(model, config)


def layer_errors(quantized, reference) -> dict[str, tuple[float, float]]:
    """{path: (max |w - w_hat|, max of |w - w_hat| / its bound)} per quantized layer. The bound: max_half_gap *
    block absmax, plus with double quantization the 8-bit scale's own error, s_j times the dynamic map's half
    gap. The ratio is at most 1 by construction (float32 rounding aside)."""
    out = {}
    for path, layer in quantized_layers(quantized).items():
        w = to_numpy(reference.get_submodule(path).weight.data).reshape(-1, layer.blocksize).astype(np.float64)
        err = np.abs(w - to_numpy(layer.dequantize()).reshape(w.shape))
        bound = max_half_gap() * np.abs(w).max(axis=1, keepdims=True)
        if layer.double_quant:
            nblocks = w.shape[0]
            bound = bound + to_numpy(absmax_error_bound(layer.nested_absmax.data, nblocks,
                                                        layer.nested_blocksize))[:, None]
        out[path] = (float(err.max()), float((err / np.where(bound > 0, bound, 1)).max()))
    return out


def by_kind(errors: dict[str, tuple[float, float]]) -> dict[str, dict]:
    """layer_errors grouped by the layer's name (q_proj, ..., down_proj): the count and each column's worst."""
    kinds: dict[str, dict] = {}
    for path, (e, ratio) in errors.items():
        k = kinds.setdefault(path.rsplit(".", 1)[-1], {"layers": 0, "max_abs": 0.0, "bound_ratio": 0.0})
        k["layers"] += 1
        k["max_abs"], k["bound_ratio"] = max(k["max_abs"], e), max(k["bound_ratio"], ratio)
    return kinds


def print_by_kind(formats: dict[str, dict[str, dict]]) -> None:
    """One row per layer kind, per format its worst |e| and worst |e| / bound (by_kind's columns)."""
    print("by layer kind: the worst weight of each")
    print(f"{'layer':<12}{'layers':>7}" + "".join(f"{f'{n} max |e|':>18}{'/ bound':>9}" for n in formats))
    first = next(iter(formats.values()))
    for kind in first:
        print(f"{kind:<12}{first[kind]['layers']:>7}"
              + "".join(f"{k[kind]['max_abs']:>18.2e}{k[kind]['bound_ratio']:>9.3f}" for k in formats.values()))


@no_grad()
def max_logit_diff(a, b, ids) -> float:
    return float(np.abs(to_numpy(a(ids)[0].data) - to_numpy(b(ids)[0].data)).max())


def print_storage(models: dict, quick: bool) -> dict:
    print("\n1. storage of the base model, measured from the arrays held")
    print(f"{'format':<16}{'total':>12}{'linears':>12}{'other (fp32)':>14}{'linears bits/param':>20}"
          f"{'closed form':>13}")
    n_lin = sum(m.in_features * m.out_features for m in quantized_layers(models["NF4"]).values())
    out = {}
    for name, model in models.items():
        b = model_bytes(model)
        lin = b["quantized"] if name != "float32" else 4 * n_lin
        formula = {"float32": 32.0, "NF4": float(bits_per_parameter(64)),
                   "NF4 + DQ": float(bits_per_parameter(64, double_quant=True))}[name]
        out[name] = {"total": b["total"], "linear_bits": 8 * lin / n_lin}
        print(f"{name:<16}{format_bytes(b['total']):>12}{format_bytes(lin):>12}"
              f"{format_bytes(b['total'] - lin):>14}{8 * lin / n_lin:>20.4f}{formula:>13.4f}")
    print("closed form without the one 32-bit mean per tensor that DQ adds (32/n bits: "
          f"{len(quantized_layers(models['NF4']))} tensors here)")
    return out


def print_llama() -> dict:
    print("\n5. the same accounting from shapes alone: LLaMA (embedding and LM head kept in 16 bits, as QLoRA does)")
    print(f"{'model':<11}{'params':>9}{'fp32':>10}{'bf16':>10}{'NF4':>10}{'NF4+DQ':>10}{'DQ saves':>10}"
          f"{'linears bits/param':>20}")
    out = {}
    for name, (d, L, f, V) in LLAMA.items():
        mats, other = llama_matrices(d, L, f, V)
        n = sum(r * c for r, c in mats) + other
        gb = {"fp32": bytes_from_shapes(mats, other, quantized=False, float_bytes=4) / 1e9,
              "bf16": bytes_from_shapes(mats, other, quantized=False, float_bytes=2) / 1e9,
              "NF4": bytes_from_shapes(mats, other, quantized=True, double_quant=False, float_bytes=2) / 1e9,
              "NF4+DQ": bytes_from_shapes(mats, other, quantized=True, double_quant=True, float_bytes=2) / 1e9}
        lin_bits = 8e9 * (gb["NF4+DQ"] - 2 * other / 1e9) / sum(r * c for r, c in mats)
        out[name] = {**gb, "params": n, "dq_saving": gb["NF4"] - gb["NF4+DQ"]}
        print(f"{name:<11}{n / 1e9:>8.2f}B" + "".join(f"{gb[k]:>8.2f}GB" for k in gb)
              + f"{gb['NF4'] - gb['NF4+DQ']:>8.2f}GB{lin_bits:>20.4f}")
    print(f"QLoRA paper: block scales cost {PAPER['scale bits NF4']} bits/param, {PAPER['scale bits NF4+DQ']} with DQ "
          f"(section 3);\nDQ saves 'approximately {PAPER['DQ saving 65B GB']:.0f} GB for a 65B model' (section 1); "
          f"table 1 lists the 4-bit Guanaco 7B\nat {PAPER['Guanaco 7B GB']:.0f} GB and 65B at "
          f"{PAPER['Guanaco 65B GB']:.0f} GB of memory: more than the weight arrays counted here")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and data, finishes in seconds")
    add_base_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        print(QUICK_NOTE)
    q, llm = args.quick, is_llm(args.base)
    sizes = {"N_TRAIN": N_TRAIN, "N_VAL": 8, "N_TEST": N_TEST, "STEPS": STEPS, "BATCH": BATCH, "LR": LR, "WARMUP": 20,
             "TARGETS": LORA["target_modules"], **(REAL_LLM if llm else {}), **(QUICK_SIZES if q else {})}
    n_train, n_test, steps, batch = (sizes[k] for k in QUICK_SIZES)
    lora = {**LORA, "target_modules": sizes["TARGETS"]}
    splits = make_splits(TASK, n_train, sizes["N_VAL"], n_test, seed=SEED)
    base = load_tutorial_base(args.base, q)
    tok, ref = base.tokenizer, base.model
    models = {"float32": ref, "NF4": base_copy(args.base, q, NF4), "NF4 + DQ": base_copy(args.base, q, NF4_DQ)}
    result: dict = {"bytes": print_storage(models, q), "config": ref.config}

    print("\n2. quantization error of the linears' weights (float32 weights minus dequantized)")
    print(f"{'format':<16}{'mean |e|':>11}{'RMS e':>11}{'max |e|':>11}{'RMS e / RMS w':>15}{'max |e| / bound':>17}")
    result["error"], result["error_by_kind"] = {}, {}
    for name in ("NF4", "NF4 + DQ"):
        e = quantization_error(models[name], ref)
        layers = layer_errors(models[name], ref)
        e["bound_ratio"] = max(ratio for _, ratio in layers.values())
        result["error"][name], result["error_by_kind"][name] = e, by_kind(layers)
        print(f"{name:<16}{e['mean_abs']:>11.2e}{e['rms']:>11.2e}{e['max_abs']:>11.2e}{e['relative_rms']:>15.3f}"
              f"{e['bound_ratio']:>17.3f}")
    print(f"bound: half the widest gap between codes ({max_half_gap():.4f}) times the block's absmax, plus with DQ the "
          f"8-bit scale's own\nerror bound s_j * {max_half_gap_dynamic():.5f} (half the widest gap of the dynamic map; "
          "s_j: its block of 256 scales' largest distance from their mean)")
    if llm:
        print_by_kind(result["error_by_kind"])

    if llm:   # English text nobody here wrote: the mean loss per token of the Declaration of Independence
        english = ENGLISH_FILE.read_text(encoding="utf-8")
        seq, val_ids = 64, tok.encode(english)                    # the merge check's windows (section 5)
        print("\n3. loss and perplexity on English text (the Declaration of Independence, "
              "minipeft/workshop/data/english.txt)")

        def heldout(model) -> float:
            return math.log(text_perplexity(model, tok, english))
    else:
        cfg = QUICK if q else FULL
        val_ids = encode_corpus(make_corpus(cfg.n_val_docs, seed=cfg.seed + 10_000), tok)
        seq = min(64, cfg.seq_len)
        print(f"\n3. validation loss and perplexity ({min(64, (len(val_ids) - 1) // cfg.seq_len)} windows of "
              f"{cfg.seq_len} held-out tokens)")

        def heldout(model) -> float:
            return lm_loss(model, val_ids, cfg.seq_len)

    result["val_loss"] = {}
    for name, model in models.items():
        loss = heldout(model)
        result["val_loss"][name] = loss
        print(f"{name:<16} loss {loss:.4f}   perplexity {np.exp(loss):.4f}")

    print(f"\n4. fine-tuning on {TASK}: {n_train} dialogues, {steps} steps of {batch}, LoRA r={LORA['r']} on every "
          f"block linear; ROUGE on {n_test} test dialogues")
    runs = {}
    for name, config in (("LoRA, fp32 base", None), ("QLoRA, NF4+DQ", NF4_DQ)):
        mp.manual_seed(SEED)
        peft = get_peft_model(base_copy(args.base, q, config), LoraConfig(**lora))
        if config is not None:
            peft.print_trainable_parameters()
        res = finetune(peft, tok, TASK, splits["train"], steps=steps, batch_size=batch, lr=sizes["LR"],
                       warmup=sizes["WARMUP"], seed=SEED, progress=not q, desc=name)
        scores, preds = evaluate(peft, tok, splits["test"], TASK)
        runs[name] = {"peft": peft, "res": res, "scores": scores, "preds": preds,
                      "trainable": peft.get_nb_trainable_parameters()[0],
                      "held": model_bytes(peft.get_base_model())["total"]}
    qpeft = runs["QLoRA, NF4+DQ"]["peft"]
    ids = np.asarray(val_ids[:2 * seq]).reshape(2, seq)       # two held-out windows to compare logits on
    with no_grad():
        unmerged_logits = to_numpy(qpeft(ids)[0].data)
    merged = qpeft.merge_and_unload()                         # float32 Linears where the adapters were: exact
    merged_rows = []
    for name in ("QLoRA merged, fp32", "merged, re-NF4+DQ"):
        if name != "QLoRA merged, fp32":
            quantize_model(merged, NF4_DQ)                    # back to 4 bits: W0 + sBA rounded to NF4 again
        with no_grad():
            diff = float(np.abs(to_numpy(merged(ids)[0].data) - unmerged_logits).max())
        scores, _ = evaluate(merged, tok, splits["test"], TASK)
        merged_rows.append((name, scores, diff, heldout(merged)))

    print(f"{'method':<20}{'trainable':>10}{'ROUGE-1':>9}{'ROUGE-2':>9}{'ROUGE-L':>9}{'facts':>7}{'train s':>9}"
          f"{'ms/step':>9}{'peak mem':>11}{'weights held':>14}")
    for name, r in runs.items():
        s, res = r["scores"], r["res"]
        print(f"{name:<20}{r['trainable']:>10,d}{s['rouge1']:>9.3f}{s['rouge2']:>9.3f}{s['rougeL']:>9.3f}"
              f"{s['fact_recall']:>7.2f}{res.wall_time_s:>9.1f}{1000 * res.wall_time_s / steps:>9.0f}"
              f"{format_bytes(res.peak_memory_bytes or 0):>11}{format_bytes(r['held']):>14}")
    print("peak mem: tracemalloc peak of a training run beyond the weights (activations, gradients, AdamW state,\n"
          "and for QLoRA the float weight each layer dequantizes for one product and lets go)")
    print(f"\nmerging the QLoRA adapter: {'max |logits - unmerged|':>24}{'val loss':>10}{'ROUGE-L':>9}{'facts':>7}")
    for name, s, d, loss in merged_rows:
        print(f"{name:<27}{d:>24.2e}{loss:>10.4f}{s['rougeL']:>9.3f}{s['fact_recall']:>7.2f}")
    print("merged, fp32: the adapter added into the dequantized weight (the merged model is the unmerged one's\n"
          "function); re-NF4+DQ: quantize_model() on it, the way back to 4 bits, rounds W0 + sBA to NF4 again")

    result["llama"] = print_llama()
    lora, qlora = runs["LoRA, fp32 base"], runs["QLoRA, NF4+DQ"]
    result.update({
        "runs": {k: {"scores": v["scores"], "train_s": v["res"].wall_time_s, "peak": v["res"].peak_memory_bytes,
                     "held": v["held"], "trainable": v["trainable"]} for k, v in runs.items()},
        "merge": {name: {"logit_diff": d, "scores": sc, "val_loss": loss} for name, sc, d, loss in merged_rows},
    })
    b, vl, err = result["bytes"], result["val_loss"], result["error"]["NF4 + DQ"]
    d_rouge = qlora["scores"]["rougeL"] - lora["scores"]["rougeL"]
    loss_name = "loss on the English text" if llm else "validation loss"
    print("\nwhat the numbers show:")
    dq, fp = b["NF4 + DQ"], b["float32"]
    say(f"NF4 + DQ holds this base in {format_bytes(dq['total'])} against {format_bytes(fp['total'])} in float32 "
        f"({100 * dq['total'] / fp['total']:.0f}%); its float32 embedding table is most of what remains. The "
        f"linears take {dq['linear_bits']:.4f} bits per weight: the formula's "
        f"{float(bits_per_parameter(64, double_quant=True)):.4f} plus, per tensor, one 32-bit mean (and a partly "
        "filled last block of 256 scales, where a tensor has one).")
    say(f"the weights move by {100 * err['relative_rms']:.1f}% (RMS), every one within its bound (worst "
        f"{err['bound_ratio']:.2f} of it); the base's {loss_name} goes {vl['float32']:.4f} -> "
        f"{vl['NF4 + DQ']:.4f} (perplexity x{np.exp(vl['NF4 + DQ'] - vl['float32']):.3f}).")
    say(f"QLoRA's ROUGE-L is {qlora['scores']['rougeL']:.3f} against LoRA's {lora['scores']['rougeL']:.3f} on the "
        f"float32 base ({d_rouge:+.3f}); facts {qlora['scores']['fact_recall']:.2f} vs "
        f"{lora['scores']['fact_recall']:.2f}. One seed and {n_test} test dialogues: read differences of a few "
        "hundredths as noise.")
    say(f"a QLoRA step took {qlora['res'].wall_time_s / lora['res'].wall_time_s:.2f}x LoRA's time here (it "
        "dequantizes every layer twice per step; these are single runs one after the other, BENCHMARKS.md has the "
        "alternated ratio)" + ("." if llm else "; peak training memory is set by the activations at this size, not "
                                               "by the weights."))
    l7 = result["llama"]["LLaMA-7B"]
    say(f"for LLaMA-7B the weights go {l7['bf16']:.1f} GB (bf16) -> {l7['NF4+DQ']:.1f} GB (NF4 + DQ); double "
        f"quantization saves {result['llama']['LLaMA-65B']['dq_saving']:.1f} GB on 65B, the paper's ~3 GB.")
    return result


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
