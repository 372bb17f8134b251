"""Tutorial 03: fine-tune the base model on dialogue summarization, with LoRA and in full.

Claim (Hu et al., 2021): LoRA, training a few percent of the parameters with the base frozen,
reaches a score close to full fine-tuning, trains with less memory (no gradients or Adam state
for the frozen matrices: 12 bytes per frozen float32 parameter) and stores kilobytes per task
instead of a whole model copy. Both move far above the base model's zero-shot score. At this
model's size the activations dominate the training memory, so the saving is small here; it grows
with the parameter count (12 bytes x 124M parameters = 1.5 GB for GPT-2 small).

Printed evidence: a table of trainable parameters, ROUGE-1/2/L and fact recall on the test split
(base zero-shot, LoRA, full), training time, peak training memory and bytes stored per task, then
example summaries next to the reference.

What reading the dialogue takes: the base model learned to copy words from its context during
pretraining (tutorial 01's copying curve), so fine-tuned summaries can state the dialogue's places,
times and names instead of plausible inventions: the fact-recall columns measure this, by kind. LoRA
can only steer what the base model can already do, and with 7% of the parameters and 300 steps it
steers less of it than full fine-tuning: measured, its ROUGE-L comes close and its fact recall does
not (BENCHMARKS.md, "Tutorial 03: LoRA vs full fine-tuning").

    python tutorials/03_lora_finetune.py          # ~4.5 minutes on 2 cores, plus ~13 to build the base model once
    python tutorials/03_lora_finetune.py --quick  # a tiny model, seconds
    python tutorials/03_lora_finetune.py --base smollm2-135m-instruct   # the real LLM (REAL_LLM below)
"""

from __future__ import annotations

import argparse
import os
import tempfile

import minipeft as mp
from minipeft.memory import format_bytes
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.workshop.checkpoint import save_checkpoint
from minipeft.workshop.data.generator import make_splits
from minipeft.workshop.data.knowledge import ENGLISH_FILE, knowledge_score, load_knowledge, text_perplexity
from minipeft.workshop.finetune import evaluate, finetune
from minipeft.workshop.llm.weights import save_hf_folder
from minipeft.workshop.pretrain import QUICK_NOTE
from minipeft.workshop.tutorial_base import add_base_option, is_llm, load_tutorial_base

# ---- config -------------------------------------------------------------------------------------
TASK = "dialogsum"
N_TRAIN, N_TEST = 2000, 60
STEPS, BATCH = 300, 16
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
LR_LORA, LR_FULL = 3e-3, 1e-3
SEED = 0
QUICK = dict(N_TRAIN=64, N_TEST=4, STEPS=8, BATCH=8, N_KNOWLEDGE=4)
# --base smollm2-135m-instruct: fewer, shorter steps (a step of 4 dialogues takes seconds on 2 cores), LoRA on every
# linear layer of the 30 blocks. Neither rate is probed on this model yet: LoRA's is half tutorial 12's q,v rate (it
# trains 5x the parameters), full fine-tuning's a common rate for full fine-tuning of a small LLM with AdamW;
# `python bench/lr_probe.py --base smollm2-135m-instruct --methods full "LoRA r=8" ...` would measure them
REAL_LLM = dict(N_TRAIN=400, N_TEST=12, STEPS=40, BATCH=4, LR_LORA=1e-3, LR_FULL=3e-5, TARGETS="all-linear",
                N_KNOWLEDGE=None)   # forgetting: every kept general-knowledge question (minipeft/workshop/data/)


def stored_bytes(save) -> int:
    """Bytes on disk of what `save(folder)` writes."""
    with tempfile.TemporaryDirectory() as d:
        save(d)
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and data, finishes in seconds")
    add_base_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        print(QUICK_NOTE)
    llm = is_llm(args.base)
    cfg = {"LR_LORA": LR_LORA, "LR_FULL": LR_FULL, "TARGETS": LORA["target_modules"],
           **(REAL_LLM if llm else {}), **(QUICK if args.quick else {})}
    n_train, n_test, steps, batch = (cfg.get(k, globals()[k]) for k in ("N_TRAIN", "N_TEST", "STEPS", "BATCH"))
    lora = {**LORA, "target_modules": cfg["TARGETS"]}
    splits = make_splits(TASK, n_train, 0 if llm else 8, n_test, seed=SEED)
    rows = []
    # on a real LLM, what it knew: the share of general-knowledge questions the base answered right that each model
    # still answers, and its perplexity on English text nobody here wrote (the Declaration of Independence)
    questions = load_knowledge()[:cfg.get("N_KNOWLEDGE")] if llm else []
    english = ENGLISH_FILE.read_text(encoding="utf-8")
    forgetting = {}

    def remembers(name, model):
        if llm:
            forgetting[name] = (knowledge_score(model, base.tokenizer, questions)["accuracy"],
                                text_perplexity(model, base.tokenizer, english))

    base = load_tutorial_base(args.base, args.quick)
    scores, base_preds = evaluate(base.model, base.tokenizer, splits["test"], TASK)
    remembers("base, zero-shot", base.model)
    n_base = base.model.num_parameters()
    rows.append(("base, zero-shot", 0, scores, None, None, 0))

    # LoRA: freeze the base, train low-rank updates of attention and MLP matrices
    mp.manual_seed(SEED)
    peft = get_peft_model(base.model, LoraConfig(**lora))
    peft.print_trainable_parameters()
    res = finetune(peft, base.tokenizer, TASK, splits["train"], steps=steps, batch_size=batch, lr=cfg["LR_LORA"],
                   warmup=min(20, steps // 10) if llm else 20, seed=SEED, progress=not args.quick, desc="LoRA")
    lora_scores, lora_preds = evaluate(peft, base.tokenizer, splits["test"], TASK)
    remembers(f"LoRA r={LORA['r']}", peft)
    rows.append((f"LoRA r={LORA['r']}", peft.get_nb_trainable_parameters()[0], lora_scores, res.wall_time_s,
                 res.peak_memory_bytes, stored_bytes(peft.save_pretrained)))

    # full fine-tuning: every weight trains, and every task needs its own copy of the model
    mp.manual_seed(SEED)
    full = peft.unload()                       # the base again, untouched by LoRA (it was frozen); now every weight
    for p in full.parameters():                # trains
        p.requires_grad = True
    res = finetune(full, base.tokenizer, TASK, splits["train"], steps=steps, batch_size=batch, lr=cfg["LR_FULL"],
                   warmup=min(20, steps // 10) if llm else 20, seed=SEED, progress=not args.quick, desc="full")
    full_scores, full_preds = evaluate(full, base.tokenizer, splits["test"], TASK)
    remembers("full fine-tuning", full)
    save = ((lambda d: save_hf_folder(full, base.tokenizer, d)) if llm else
            (lambda d: save_checkpoint(full, os.path.join(d, "model.safetensors"))))
    rows.append(("full fine-tuning", full.num_parameters(), full_scores, res.wall_time_s, res.peak_memory_bytes,
                 stored_bytes(save)))

    print(f"\n{TASK}: {n_train} training dialogues, {steps} steps of {batch}; ROUGE on {n_test} test dialogues")
    print(f"{'method':<18}{'trainable':>11}{'% base':>8}{'ROUGE-1':>9}{'ROUGE-2':>9}{'ROUGE-L':>9}{'facts':>7}"
          f"{'train s':>9}{'peak mem':>11}{'grads+Adam':>12}{'stored':>11}")
    for name, n, s, t, mem, stored in rows:
        print(f"{name:<18}{n:>11,d}{100 * n / n_base:>7.2f}%{s['rouge1']:>9.3f}{s['rouge2']:>9.3f}{s['rougeL']:>9.3f}"
              f"{s['fact_recall']:>7.2f}"
              f"{'' if t is None else f'{t:.0f}':>9}{'' if mem is None else format_bytes(mem):>11}"
              f"{format_bytes(12 * n) if n else '-':>12}{format_bytes(stored) if stored else '-':>11}")
    print("facts: share of the reference's names, days, places and numbers that the summary states (a summary\n"
          "can be fluent and on-template yet name the wrong person: ROUGE alone would hide that); by kind:")
    kinds = sorted({k for _, _, s, *_ in rows for k in s if k.startswith("facts_")})
    print(f"{'method':<18}" + "".join(f"{k[6:]:>10}" for k in kinds))
    for name, _, s, *_ in rows:
        print(f"{name:<18}" + "".join(f"{s[k]:>10.2f}" if k in s else f"{'-':>10}" for k in kinds))
    print("peak mem: measured (tracemalloc) peak of what training allocated beyond the weights: activations,\n"
          "gradients and AdamW state; grads+Adam: 12 bytes per trainable float32 parameter (gradient, m, v),\n"
          "the part LoRA removes for frozen weights; stored: bytes written to disk per task")

    if forgetting:
        print(f"\nwhat the model knew: {len(questions)} general-knowledge questions the base answers right zero-shot, "
              "and perplexity on English text (the Declaration of Independence)")
        print(f"{'model':<18}{'still right':>12}{'perplexity':>12}")
        for name, (share, ppl) in forgetting.items():
            print(f"{name:<18}{share:>11.0%}{ppl:>12.2f}")
    for i in range(min(2, n_test)):
        print(f"\n--- test dialogue {i} ---\n{splits['test'][i]['dialogue']}")
        print(f"reference : {splits['test'][i]['summary']}")
        print(f"base      : {base_preds[i]}")
        print(f"LoRA      : {lora_preds[i]}")
        print(f"full      : {full_preds[i]}")
    return {"rows": {name: {"trainable": n, "scores": sc, "stored": stored} for name, n, sc, _, _, stored in rows},
            "n_base": n_base, "config": base.model.config, "forgetting": forgetting}


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
