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

    python tutorials/04_multitask_swap.py          # a few minutes on 2 cores
    python tutorials/04_multitask_swap.py --quick  # seconds
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
from minipeft.workshop.pretrain import QUICK_NOTE, load_base_model

# ---- config -------------------------------------------------------------------------------------
TASK_NAMES = ["dialogsum", "qa", "sentiment"]
N_TRAIN, N_TEST = 1500, 30
STEPS = {"dialogsum": 250, "qa": 200, "sentiment": 150}
BATCH, LR, SEED = 16, 3e-3, 0
LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
MAX_NEW = {"dialogsum": 48, "qa": 12, "sentiment": 4}


def folder_bytes(d: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and data, finishes in seconds")
    args = parser.parse_args(argv)
    if args.quick:
        print(QUICK_NOTE)
    n_train, n_test = (32, 3) if args.quick else (N_TRAIN, N_TEST)
    base = load_base_model(quick=args.quick, progress=not args.quick)
    tok = base.tokenizer
    data = {t: make_splits(t, n_train, 4, n_test, seed=SEED) for t in TASK_NAMES}

    mp.manual_seed(SEED)
    peft = None
    for task in TASK_NAMES:  # one adapter per task, all on the same frozen base
        if peft is None:
            peft = get_peft_model(base.model, LoraConfig(**LORA), adapter_name=task)
        else:
            peft.add_adapter(task, LoraConfig(**LORA))
        peft.set_adapter(task)  # routes the layers through this adapter and makes only it trainable
        steps = 4 if args.quick else STEPS[task]
        res = finetune(peft, tok, task, data[task]["train"], steps=steps, batch_size=8 if args.quick else BATCH,
                       lr=LR, seed=SEED, progress=not args.quick, measure_memory=False, desc=f"adapter {task}")
        print(f"adapter {task!r}: {steps} steps, final loss {res.final_loss:.3f}, {res.wall_time_s:.0f} s")

    print("\nscores: rows = active adapter, columns = task evaluated "
          f"({n_test} test examples each; ROUGE-L / exact match / accuracy)")
    print(f"{'adapter':<14}" + "".join(f"{t:>12}" for t in TASK_NAMES))
    outputs = {}
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
        print(f"{active:<14}" + "".join(f"{c:>12.3f}" for c in cells))

    with tempfile.TemporaryDirectory() as d:
        peft.save_pretrained(d)  # each adapter in its own folder (PEFT's layout)
        sizes = {t: folder_bytes(os.path.join(d, t)) for t in TASK_NAMES}
        full_copy = param_bytes(peft.get_base_model()) - sum(
            int(p.data.nbytes) for n, p in peft.named_parameters() if ".lora_" in n)
        n = len(TASK_NAMES)
        print(f"\nstorage for {n} tasks: {n} adapters {format_bytes(sum(sizes.values()))} "
              f"({', '.join(f'{t} {format_bytes(s)}' for t, s in sizes.items())}) + one base "
              f"{format_bytes(full_copy)}  vs  {n} full copies {format_bytes(n * full_copy)}")

        # reload: a fresh copy of the base from the cache, adapters from disk, same outputs
        fresh = PeftModel.from_pretrained(load_base_model(quick=args.quick, progress=False).model,
                                          os.path.join(d, TASK_NAMES[0]), adapter_name=TASK_NAMES[0])
        for t in TASK_NAMES[1:]:
            fresh.load_adapter(os.path.join(d, t), adapter_name=t)
        same = []
        for t in TASK_NAMES:
            fresh.set_adapter(t)
            same.append(evaluate(fresh, tok, data[t]["test"], t, MAX_NEW[t])[1] == outputs[(t, t)])
        print(f"reloaded adapters reproduce every prediction exactly: {all(same)}")


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
