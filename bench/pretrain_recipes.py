"""Experiment: which pretraining recipe gives a base model that reads its context.

For each recipe: pretrain (printing the copying probe, minipeft.workshop.probes.repeat_accuracy, every --every
steps), then fine-tune the whole model on dialogsum and on qa with tutorial 03's and 04's settings and
score the test split: fact recall (names, days, places, numbers copied from the dialogue) and QA exact
match. One JSON line per recipe is appended to --out, so runs can be compared and tabulated later.

    python bench/pretrain_recipes.py --recipe learned --recipe rope --steps 900      # minutes per recipe
    python bench/pretrain_recipes.py --recipe rope --steps 60 --quick                # a smoke test
    python bench/pretrain_recipes.py --recipe rope-copy-heavy --steps 4800 --checkpoint-every 1200 --save ckpts

With --checkpoint-every N the model is saved every N pretraining steps (of one run, so one cosine
schedule over --steps), and every checkpoint is fine-tuned and scored: facts and QA exact match against
pretraining steps and tokens, one JSON line per checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import minipeft as mp
from minipeft.workshop.checkpoint import load_checkpoint, save_checkpoint
from minipeft.workshop.data.generator import make_splits
from minipeft.workshop.finetune import evaluate, finetune
from minipeft.workshop.pretrain import FULL, QUICK, build_base_model
from minipeft.workshop.probes import list_copy_accuracy, repeat_accuracy

ROPE = (("position_embedding", "rope"),)
COPY_HEAVY = (("lists", 0.25), ("dialogue_notes", 0.25))
RECIPES = {  # name -> (GPTConfig overrides on top of the recipe's preset, corpus weight overrides)
    "learned": ((("position_embedding", "learned"),), ()),
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
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="save the model every this many steps into --save and fine-tune each checkpoint")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    base_cfg = QUICK if args.quick else FULL
    if args.checkpoint_every and (not args.save or args.steps % args.checkpoint_every):
        p.error("--checkpoint-every needs --save and must divide --steps")
    for name in args.recipe:
        overrides, weights = RECIPES[name]
        cfg = dataclasses.replace(base_cfg, steps=args.steps, overrides=base_cfg.overrides + overrides,
                                  corpus_weights=weights,
                                  warmup=min(base_cfg.warmup, args.steps // 10), lr=args.lr or base_cfg.lr)
        saved: list[tuple[int, str]] = []

        def save_probe(m, saved=saved, name=name) -> dict:  # every --checkpoint-every steps (lists need the tokenizer)
            step = (len(saved) + 1) * args.checkpoint_every
            saved.append((step, str(save_checkpoint(m, f"{args.save}/{name}-{args.steps}-at-{step}.safetensors"))))
            return {"repeat_accuracy": repeat_accuracy(m, low=128)}

        t0 = time.perf_counter()
        base, _ = build_base_model(cfg, progress=False, probe_every=args.checkpoint_every or args.every,
                                   probe=save_probe if args.checkpoint_every else None)
        pre_s = time.perf_counter() - t0
        for row in base.info["probes"]:
            print(f"{name} step {row['step']:>5}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "step"),
                  flush=True)
        if args.save:
            save_checkpoint(base.model, f"{args.save}/{name}-{args.steps}.safetensors")
            base.tokenizer.save(f"{args.save}/tokenizer.json")
        print(f"{name}: val loss {base.info['val_loss']:.3f}, pretraining {pre_s:.0f} s", flush=True)
        points = saved or [(args.steps, "")]
        for step, path in points:
            state = load_checkpoint(path).state_dict() if path else base.model.state_dict()
            state = {k: v.copy() for k, v in state.items()}
            base.model.load_state_dict(state)
            lists = list_copy_accuracy(base.model, base.tokenizer, n_docs=16)
            scores = {}
            for task in args.task or ["dialogsum", "qa"]:
                base.model.load_state_dict(state)
                mp.manual_seed(0)
                n_train, n_test = (64, 4) if args.quick else (2000, 60 if task == "dialogsum" else 30)
                scores[task] = finetune_score(base.model, base.tokenizer, task, n_train, n_test,
                                              8 if args.quick else args.ft_steps, 1e-3, args.quick)
                print(f"{name} at {step}: lists {lists}; full fine-tuning on {task}: {scores[task]}", flush=True)
            record = {"recipe": name, "steps": args.steps, "at_step": step,
                      "tokens": step * cfg.batch_size * cfg.seq_len, "lr": cfg.lr, "pretrain_s": round(pre_s, 1),
                      "val_loss": base.info["val_loss"], "probes": base.info["probes"], "lists": lists,
                      "scores": scores, "machine": mp.backend.device_name()}
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

if __name__ == "__main__":
    mp.tune_allocator()
    main()
