"""Experiment: which pretraining recipe gives a base model that reads its context (issue 12's curve).

For each recipe: pretrain (printing the copying probe, minipeft.probes.repeat_accuracy, every --every
steps), then fine-tune the whole model on dialogsum and on qa with tutorial 03's and 04's settings and
score the test split: fact recall (names, days, places, numbers copied from the dialogue) and QA exact
match. One JSON line per recipe is appended to --out, so runs can be compared and tabulated later.

    python bench/pretrain_recipes.py --recipe learned --recipe rope --steps 900      # minutes per recipe
    python bench/pretrain_recipes.py --recipe rope --steps 60 --quick                # a smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import minipeft as mp
from minipeft.checkpoint import save_checkpoint
from minipeft.data.generator import make_splits
from minipeft.finetune import evaluate, finetune
from minipeft.pretrain import FULL, QUICK, build_base_model

ROPE = (("position_embedding", "rope"),)
COPY_HEAVY = (("lists", 0.25), ("dialogue_notes", 0.25))
RECIPES = {  # name -> (GPTConfig overrides on top of the recipe's preset, corpus weight overrides)
    "learned": ((), ()),
    "rope": (ROPE, ()),
    "rope-copy-heavy": (ROPE, COPY_HEAVY),
}


def finetune_score(model, tok, task: str, n_train: int, n_test: int, steps: int, lr: float, quick: bool) -> dict:
    splits = make_splits(task, n_train, 4, n_test, seed=0)
    res = finetune(model, tok, task, splits["train"], steps=steps, batch_size=8 if quick else 16, lr=lr, seed=0,
                   progress=False, measure_memory=False)
    scores, _ = evaluate(model, tok, splits["test"], task, max_new_tokens=48 if task == "dialogsum" else 12)
    return {**scores, "finetune_s": round(res.wall_time_s, 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", action="append", choices=sorted(RECIPES), required=True)
    p.add_argument("--steps", type=int, default=FULL.steps, help="pretraining steps")
    p.add_argument("--lr", type=float, default=None, help="peak pretraining learning rate (default: the recipe's)")
    p.add_argument("--every", type=int, default=100, help="probe every this many pretraining steps")
    p.add_argument("--ft-steps", type=int, default=300, help="full fine-tuning steps per task")
    p.add_argument("--task", action="append", choices=["dialogsum", "qa"], help="fine-tune on (default: both)")
    p.add_argument("--out", default="pretrain_recipes.jsonl")
    p.add_argument("--save", default="", help="folder to save each pretrained model (and the tokenizer) in")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    base_cfg = QUICK if args.quick else FULL
    for name in args.recipe:
        overrides, weights = RECIPES[name]
        cfg = dataclasses.replace(base_cfg, steps=args.steps, overrides=base_cfg.overrides + overrides,
                                  corpus_weights=weights,
                                  warmup=min(base_cfg.warmup, args.steps // 10), lr=args.lr or base_cfg.lr)
        t0 = time.perf_counter()
        base, _ = build_base_model(cfg, progress=False, probe_every=args.every)
        pre_s = time.perf_counter() - t0
        for row in base.info["probes"]:
            print(f"{name} step {row['step']:>5}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "step"),
                  flush=True)
        if args.save:
            save_checkpoint(base.model, f"{args.save}/{name}-{args.steps}.safetensors")
            base.tokenizer.save(f"{args.save}/tokenizer.json")
        print(f"{name}: val loss {base.info['val_loss']:.3f}, pretraining {pre_s:.0f} s", flush=True)
        state = {k: v.copy() for k, v in base.model.state_dict().items()}
        scores = {}
        for task in args.task or ["dialogsum", "qa"]:
            base.model.load_state_dict(state)
            mp.manual_seed(0)
            n_train, n_test = (64, 4) if args.quick else (2000, 60 if task == "dialogsum" else 30)
            scores[task] = finetune_score(base.model, base.tokenizer, task, n_train, n_test,
                                          8 if args.quick else args.ft_steps, 1e-3, args.quick)
            print(f"{name} full fine-tuning on {task}: {scores[task]}", flush=True)
        record = {"recipe": name, "steps": args.steps, "lr": cfg.lr, "pretrain_s": round(pre_s, 1),
                  "val_loss": base.info["val_loss"], "probes": base.info["probes"], "scores": scores,
                  "machine": mp.backend.device_name()}
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    mp.tune_allocator()
    main()
