"""Tutorial 03's LoRA and full fine-tuning, run on a saved pretraining checkpoint instead of the cached base.

How LoRA and full fine-tuning read the dialogue's facts on a base pretrained longer than the default
(checkpoints written by `bench/pretrain_recipes.py --save DIR`; the measured curve is in BENCHMARKS.md,
"The base model: pretraining recipe and length").

    python bench/finetune_checkpoint.py DIR/rope-copy-heavy-4800.safetensors DIR/tokenizer.json
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import minipeft as mp
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.workshop.checkpoint import load_checkpoint
from minipeft.workshop.data.generator import make_splits
from minipeft.workshop.data.tokenizer import Tokenizer
from minipeft.workshop.finetune import evaluate, finetune


def tutorial_03():
    """Tutorial 03's module, for its settings (TASK, N_TRAIN, N_TEST, STEPS, BATCH, LORA, LR_*, SEED)."""
    path = Path(__file__).parent.parent / "tutorials" / "03_lora_finetune.py"
    spec = importlib.util.spec_from_file_location("tutorial_03", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a GPT checkpoint (.safetensors) written by save_checkpoint")
    p.add_argument("tokenizer", help="the tokenizer.json it was pretrained with")
    p.add_argument("--quick", action="store_true", help="tutorial 03's --quick sizes (a smoke test)")
    args = p.parse_args(argv)
    t = tutorial_03()
    n_train, n_test, steps, batch = (t.QUICK[k] if args.quick else getattr(t, k)
                                     for k in ("N_TRAIN", "N_TEST", "STEPS", "BATCH"))
    tok = Tokenizer.from_file(args.tokenizer)
    splits = make_splits(t.TASK, n_train, 8, n_test, seed=t.SEED)
    for method in ("LoRA", "full"):
        mp.manual_seed(t.SEED)
        model = load_checkpoint(args.checkpoint)
        if method == "LoRA":
            model = get_peft_model(model, LoraConfig(**t.LORA))
        t0 = time.perf_counter()
        finetune(model, tok, t.TASK, splits["train"], steps=steps, batch_size=batch,
                 lr=t.LR_LORA if method == "LoRA" else t.LR_FULL, seed=t.SEED, progress=False, log_every=0)
        scores, _ = evaluate(model, tok, splits["test"], t.TASK)
        print(f"{method}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    mp.tune_allocator()
    main()
