"""Tutorial 04: one frozen base model, one small LoRA adapter per task, swapped at inference.

Claim (Hu et al., 2021, section 4): because the base weights never change, many tasks can share
one copy of the model; each task costs only its adapter (kilobytes), and switching task is
`set_adapter(name)` -- no reload of the base. Each adapter does its own task and not the others.

What to expect from this small base model: summarization and sentiment are learned (each only
with its own adapter); extractive QA stays near zero (0.03): the base copies words from its context
(tutorial 01's probe), but answering a question about one fact among several is something its corpus never
asks (BENCHMARKS.md, "The base model: pretraining recipe and length").

Printed evidence: a matrix of scores (rows: the active adapter, columns: the task evaluated), the
storage of N adapters vs N full fine-tuned copies, and a check that adapters saved to disk and
loaded onto a freshly loaded base reproduce their outputs exactly.

On the real instruct model (`--base smollm2-135m-instruct`, REAL_LLM below: LoRA r=8 on q, v at 2e-3, 40/40/20
steps of 4 rows, 12 test rows per task) extractive QA, out of reach of the small base, is learned. Measured
(2-core Xeon, 2026-12-08, commit 0b2b312; 10.0 minutes, with a short test run beside it for part of the time,
load average 0.8-3.3): rows = the active adapter, columns = the task (ROUGE-L / exact match / accuracy)

    adapter     dialogsum     qa   sentiment
    base            0.216  0.000       0.333
    dialogsum       0.718  0.083       0.000
    qa              0.222  1.000       0.000
    sentiment       0.000  0.000       0.917

QA: 12 of 12 exact with its adapter, 0 of 12 zero-shot. Each adapter does its own task and none of the others;
3 adapters take 5.3 MiB (1.8 MiB each) beside one 513.1 MiB base, against 1.5 GiB for three full copies;
adapters reloaded onto a freshly loaded base reproduce every prediction exactly. 12 test rows per task: a
difference of one row is 0.08.

    python tutorials/04_multitask_swap.py          # a few minutes on 2 cores
    python tutorials/04_multitask_swap.py --quick  # seconds
    python tutorials/04_multitask_swap.py --base smollm2-135m-instruct   # the real LLM (REAL_LLM below)
"""

from __future__ import annotations

import argparse
import os
import tempfile

import minipeft as mp
from minipeft.memory import format_bytes, param_bytes
from minipeft.peft import LoraConfig, PeftModel, get_peft_model
from minipeft.workshop.data.generator import make_splits
from minipeft.workshop.finetune import evaluate, finetune
from minipeft.workshop.pretrain import QUICK_NOTE
from minipeft.workshop.tutorial_base import add_base_option, is_llm, load_tutorial_base

# ---- config -------------------------------------------------------------------------------------
TASK_NAMES = ["dialogsum", "qa", "sentiment"]
N_TRAIN, N_TEST = 1500, 30
STEPS = {"dialogsum": 250, "qa": 200, "sentiment": 150}
BATCH, LR, SEED = 16, 3e-3, 0
LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
MAX_NEW = {"dialogsum": 48, "qa": 12, "sentiment": 4}
QUICK = dict(N_TRAIN=32, N_TEST=3, STEPS={t: 4 for t in TASK_NAMES}, BATCH=8)
# --base smollm2-135m-instruct: LoRA r=8 on q, v at 2e-3 (as tutorial 12's: 60 steps of 4 dialogues took ROUGE-L
# 0.216 -> 0.835), steps of 4 rows, 12 test rows per task. Time on 2 cores, from the figures of
# BENCHMARKS.md ("The real model"): two loads 2 x 6.4 s = 13 s; training, a step costing about its tokens
# (2.70 s for 4 dialogues of ~180 tokens): dialogsum 40 x 2.7 s = 108 s, qa (~120 tokens) 40 x 1.8 s = 72 s,
# sentiment (~60) 20 x 1 s = 20 s; generation, 15 evaluations of 12 rows (base + 3 adapters, then the 3 reloaded):
# dialogsum 5 x 12 x <=4 s (48 tokens) = 240 s, qa 5 x 12 x ~1.5 s (12) = 90 s, sentiment 5 x 12 x ~0.7 s (4)
# = 42 s. About 585 s: under 10 minutes.
REAL_LLM = dict(N_TRAIN=400, N_TEST=12, STEPS={"dialogsum": 40, "qa": 40, "sentiment": 20}, BATCH=4, LR=2e-3,
                TARGETS=["q_proj", "v_proj"])


def folder_bytes(d: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def safetensors_header_bytes(path: str) -> int:
    """Bytes of a safetensors file before its tensor data: the 8-byte length, then the JSON header of that length."""
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and data, finishes in seconds")
    add_base_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        print(QUICK_NOTE)
    llm = is_llm(args.base)
    cfg = {"N_TRAIN": N_TRAIN, "N_TEST": N_TEST, "STEPS": STEPS, "BATCH": BATCH, "LR": LR,
           "TARGETS": LORA["target_modules"], **(REAL_LLM if llm else {}), **(QUICK if args.quick else {})}
    n_train, n_test = cfg["N_TRAIN"], cfg["N_TEST"]
    lora = {**LORA, "target_modules": cfg["TARGETS"]}
    base = load_tutorial_base(args.base, args.quick)
    tok = base.tokenizer
    data = {t: make_splits(t, n_train, 0 if llm else 4, n_test, seed=SEED) for t in TASK_NAMES}

    mp.manual_seed(SEED)
    peft = None
    trainable: dict[str, int] = {}
    for task in TASK_NAMES:  # one adapter per task, all on the same frozen base
        if peft is None:
            peft = get_peft_model(base.model, LoraConfig(**lora), adapter_name=task)
        else:
            peft.add_adapter(task, LoraConfig(**lora))
        peft.set_adapter(task)  # routes the layers through this adapter and makes only it trainable
        steps = cfg["STEPS"][task]
        trainable[task] = peft.get_nb_trainable_parameters()[0]
        res = finetune(peft, tok, task, data[task]["train"], steps=steps, batch_size=cfg["BATCH"], lr=cfg["LR"],
                       warmup=min(20, steps // 10) if llm else 20, seed=SEED, progress=not args.quick,
                       measure_memory=False, desc=f"adapter {task}")
        print(f"adapter {task!r}: {steps} steps, final loss {res.final_loss:.3f}, {res.wall_time_s:.0f} s")

    print("\nscores: rows = active adapter, columns = task evaluated "
          f"({n_test} test examples each; ROUGE-L / exact match / accuracy)")
    print(f"{'adapter':<14}" + "".join(f"{t:>12}" for t in TASK_NAMES))
    outputs, matrix = {}, {}
    for active in ["base"] + TASK_NAMES:
        cells = []
        for task in TASK_NAMES:
            rows = data[task]["test"]
            if active == "base":
                with peft.disable_adapter():
                    m, preds = evaluate(peft, tok, rows, task, MAX_NEW[task])
            else:
                peft.set_adapter(active)
                m, preds = evaluate(peft, tok, rows, task, MAX_NEW[task])
                outputs[(active, task)] = preds
            cells.append(m.get("rougeL", m.get("exact_match", m.get("accuracy"))))
            matrix[(active, task)] = cells[-1]
        print(f"{active:<14}" + "".join(f"{c:>12.3f}" for c in cells))

    with tempfile.TemporaryDirectory() as d:
        peft.save_pretrained(d)  # each adapter in its own folder (PEFT's layout)
        sizes = {t: folder_bytes(os.path.join(d, t)) for t in TASK_NAMES}
        weights = {t: os.path.join(d, t, "adapter_model.safetensors") for t in TASK_NAMES}
        files = {t: {"bytes": os.path.getsize(f), "header": safetensors_header_bytes(f)} for t, f in weights.items()}
        full_copy = param_bytes(peft.get_base_model()) - sum(
            int(p.data.nbytes) for n, p in peft.named_parameters() if ".lora_" in n)
        n = len(TASK_NAMES)
        print(f"\nstorage for {n} tasks: {n} adapters {format_bytes(sum(sizes.values()))} "
              f"({', '.join(f'{t} {format_bytes(s)}' for t, s in sizes.items())}) + one base "
              f"{format_bytes(full_copy)}  vs  {n} full copies {format_bytes(n * full_copy)}")

        # reload: a fresh copy of the base from the cache, adapters from disk, same outputs
        fresh = PeftModel.from_pretrained(load_tutorial_base(args.base, args.quick).model,
                                          os.path.join(d, TASK_NAMES[0]), adapter_name=TASK_NAMES[0])
        for t in TASK_NAMES[1:]:
            fresh.load_adapter(os.path.join(d, t), adapter_name=t)
        same = []
        for t in TASK_NAMES:
            fresh.set_adapter(t)
            same.append(evaluate(fresh, tok, data[t]["test"], t, MAX_NEW[t])[1] == outputs[(t, t)])
        print(f"reloaded adapters reproduce every prediction exactly: {all(same)}")
    return {"matrix": matrix, "trainable": trainable, "files": files, "same": same, "config": base.model.config}


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
