"""Tutorial 08: soft prompts -- prompt tuning and prefix tuning against LoRA and full fine-tuning.

Claims: prompt tuning (Lester et al., 2021) trains only n virtual-token embeddings in front of the input
(n x d parameters; the literature uses n = 20-100) with the whole model frozen; prefix tuning (Li & Liang,
2021) trains a key and a value per virtual token in every attention layer (n x 2 x layers x d). Both store
kilobytes per task. Lester et al. report that prompt tuning matches full fine-tuning only for models of
billions of parameters and trails it on small ones (tutorial 09 measures that against model size), and that
the nearest vocabulary tokens of a learned prompt form semantic groups related to the task.

Printed evidence: for prompt lengths {1, 5, 20, 100}, prefix tuning, LoRA and full fine-tuning on the
summarization task: trainable parameters, validation loss, ROUGE-L and fact recall after the same number of
steps; then, for the learned 20-token prompt, each virtual token's nearest vocabulary tokens (cosine
similarity of embeddings) and a count of how many of them are words of the task's summaries, against the
share of such words in the vocabulary (the rate a prompt with no relation to the task would show).

The context: virtual tokens take positions. The base model's context is 256 tokens and a dialogue prompt
with its summary takes up to ~190, so 100 virtual tokens do not fit (the first thing printed is the error
the library raises). The base model uses rotary position embeddings, which have no position table: its
context length is a check, not a weight, so each prompt-tuned run gets the base with its context raised by
n (`with_room_for`), giving the tokens the 256 positions they had. Distances between real tokens stay what
the model was trained on; only the farthest virtual tokens sit more than 256 positions from the last
tokens, a mild extrapolation that the trained prompt can adapt to.

Measured (BENCHMARKS.md, "Tutorial 08: soft prompts"; 5 min 13 s on 2 idle cores), at learning rates probed for AdamW
(bench/lr_probe.py: the prompt 30, the prefix 0.3; Lester et al.'s 0.3 is Adafactor's relative step, and at 0.3
a run learned almost nothing): after 120 steps the validation loss falls as the prompt grows (5.75
at n = 1, 5.09, 4.52, 3.98 at n = 100; prefix tuning 0.98; LoRA 0.58; full 0.45), but no prompt length
summarizes: ROUGE-L 0.04-0.07, below the zero-shot base's 0.09, where prefix tuning reaches 0.20 (its
summaries start right, "#Person1# and #Person2# ...", and drift), LoRA 0.59 and full fine-tuning 0.71.
The learned 20-token prompt's vectors grew 450-1500x longer than the word embeddings they started as, and
their cosine to any word is low (~0.34); by the printed count its neighbours are task words more often than
the vocabulary is (0.63 vs 0.47; a prompt trained at lr 0.3: 0.37), names and places of the summaries
among them, so the course's "semantic groups" show weakly here. On this 1M-parameter model prompt tuning
trails far: Lester et al.'s small-model end.

On the real LLM (`--base smollm2-135m-instruct`, REAL_LLM below): prompt tuning with 20 and 100 virtual tokens,
prefix tuning with 20 and LoRA on q,v (tutorial 12's), fewer and shorter runs than on the mini GPT so that the four
fit 15 minutes on 2 cores (a fifth, full fine-tuning of 135M parameters, does not; tutorial 03 measures it). The
learned prompt's nearest tokens are decoded through the model's own tokenizer (byte-level BPE: a token is often a
word with its leading space, or a piece of one), so whether they read as words of the task can be seen. SmolLM2's
context of 8192 positions holds any prompt here. Measured (2-core Xeon, 2026-12-08, commit 0b2b312; 40 steps of 4,
8 test dialogues; 12.0 minutes, with a short test run at low priority beside it):

    method                  trainable   % base  val loss  ROUGE-L  facts  train s
    prompt tuning n=20         11,520   0.009%     1.033    0.368   0.38      149
    prompt tuning n=100        57,600   0.043%     0.943    0.339   0.49      216
    prefix tuning n=20        230,400   0.171%     0.732    0.441   0.54      118
    LoRA r=8 (q,v)            460,800   0.343%     0.257    0.687   0.81      120

The base scores ROUGE-L 0.216 zero-shot (tutorial 03). On a 135M-parameter model the soft prompts learn the task
(ROUGE-L 0.34-0.37, facts 0.38-0.49; the printed example's summary has the right time and place) but trail LoRA
by half: Lester et al.'s
small-model end again, with 100 virtual tokens no better than 20 on 8 test rows. Their nearest vocabulary tokens,
decoded, do not read as the task's words: 3% of the neighbours are tokens of the summaries, against their 2%
share of the vocabulary (' am', ' review', ' statue'), so the course's "semantic groups" are not seen here.

    python tutorials/08_prompt_tuning.py          # ~5 minutes on 2 cores (7 fine-tunings), plus the base model once
    python tutorials/08_prompt_tuning.py --quick  # seconds
    python tutorials/08_prompt_tuning.py --base smollm2-135m-instruct   # the real LLM, 4 fine-tunings (REAL_LLM)
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

import minipeft as mp
from minipeft.autograd import no_grad
from minipeft.peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from minipeft.peft.tuners.prompt_tuning import nearest_tokens, prompt_nearest_tokens
from minipeft.workshop.data.batching import encode_rows
from minipeft.workshop.data.generator import get_task, make_splits
from minipeft.workshop.finetune import evaluate, finetune, validation_loss
from minipeft.workshop.pretrain import QUICK_NOTE, load_base_model
from minipeft.workshop.tutorial_base import add_base_option, is_llm, load_tutorial_base

# ---- config -------------------------------------------------------------------------------------
TASK = "dialogsum"
N_TRAIN, N_VAL, N_TEST = 2000, 64, 30
STEPS, BATCH, SEED = 120, 16, 0
MAX_NEW = 48                # summary tokens generated per test dialogue
PROMPT_LENGTHS = [1, 5, 20, 100]
PROMPT_INIT = dict(prompt_tuning_init="SAMPLE_VOCAB")   # embeddings of random vocabulary tokens (Lester et al. 5.1)
PREFIX_TOKENS = 20
# soft prompts: the best of 10 (prompt) and 6 (prefix) rates in bench/lr_probe.py on this task
# (BENCHMARKS.md, "Tutorial 08: soft prompts"). Lester et al.'s 0.3 is Adafactor's step relative to the
# parameter's scale; AdamW steps ~lr per coordinate, and here the prompt only steers the model once its vectors
# are far longer than the word embeddings (held-out loss 5.98 at 0.3, 5.04 at 30)
LR = {"prompt": 30.0, "prefix": 0.3, "lora": 3e-3, "full": 1e-3}
LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
READ_PROMPT = 20            # the prompt length whose learned tokens are read back
NEAREST = 5                 # nearest vocabulary tokens printed per virtual token
QUICK = dict(N_TRAIN=64, N_VAL=8, N_TEST=3, STEPS=4, BATCH=8, MAX_NEW=6)
# --base smollm2-135m-instruct: 20 and 100 virtual tokens, prefix tuning, LoRA on q,v; no full fine-tuning. Time, from
# the measured figures (load 6.4 s; a LoRA q,v step of 4 dialogues of ~180 tokens 2.7 s, the gradient reaching the
# first layer as a prompt's does; a 100-token prompt makes the sequences ~280 tokens, ~4.2 s a step; generating one
# 48-token summary ~2-3 s, batched): 40 x (2.7 + 4.2 + 2.7 + 2.7) = 492 s of training, 4 x 8 test summaries ~ 80 s,
# 4 x 16 validation rows ~ 20 s, 6 loads ~ 40 s, the context check's forward ~ 2 s: 634 s, ~11 minutes.
# Learning rates: LoRA as tutorial 12's. The soft prompts' candidates are Lester et al.'s 0.3, Adafactor's step
# relative to the parameter's RMS, turned into AdamW's absolute step at the scale it starts from: the prompt starts as
# word embeddings of RMS 0.136 (0.3 x 0.136 = 0.04), the prefix as N(0, 1) (0.3, also the mini GPT's probed rate).
# bench/lr_probe.py --base smollm2-135m-instruct --methods "prompt tuning n=20" "prefix tuning n=20" --lrs 4e-2 3e-1
# --steps 20 --batch 4 --n-val 16: prompt tuning's held-out loss 1.224 at 0.04, 1.216 at 0.3 (a tie on 16 rows; 0.3
# taken); prefix tuning's rate is not probed (the probe was stopped before it on a busy machine)
REAL_LLM = dict(N_TRAIN=400, N_VAL=16, N_TEST=8, STEPS=40, BATCH=4, PROMPT_LENGTHS=[20, 100], FULL=False,
                LR={"prompt": 0.3, "prefix": 0.3, "lora": 2e-3},
                LORA=dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))


def with_room_for(model, n: int):
    """The model with its context raised by n positions for virtual tokens: possible because rotary position
    embeddings have no position table (the length is only a check), so every weight stays as it was."""
    if getattr(model.config, "position_embedding", "rope") != "rope":    # a Llama's config has no such field: RoPE
        raise ValueError("only a RoPE model's context can be raised without new weights (a learned position table "
                         "has exactly context_length rows)")
    model.config = dataclasses.replace(model.config, context_length=model.config.context_length + n)
    return model


def task_token_share(ids: np.ndarray, task_tokens: set[int]) -> float:
    """The share of the given token ids that occur in the task's summaries."""
    return float(np.mean([int(i) in task_tokens for i in ids.reshape(-1)]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and data, finishes in seconds")
    add_base_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        print(QUICK_NOTE)
    llm = is_llm(args.base)
    names = ("N_TRAIN", "N_VAL", "N_TEST", "STEPS", "BATCH", "MAX_NEW", "PROMPT_LENGTHS", "LR", "LORA")
    cfg = {**{k: globals()[k] for k in names}, "FULL": True,
           **(REAL_LLM if llm else {}), **(QUICK if args.quick else {})}
    n_train, n_val, n_test, steps, batch, max_new, prompt_lengths, lr, lora = (cfg[k] for k in names)
    splits = make_splits(TASK, n_train, n_val, n_test, seed=SEED)
    base = load_tutorial_base(args.base, args.quick)
    tok, ctx = base.tokenizer, base.model.config.context_length

    def fresh():
        mp.manual_seed(SEED)
        return (load_tutorial_base(args.base, args.quick) if llm else load_base_model(quick=args.quick, progress=False)
                ).model

    # the context: the longest prompt in front of the longest dialogue, on the plain base
    longest = max(len(ids) - 1 for ids, _ in encode_rows(splits["train"], TASK, tok, 10 ** 6))
    n_max = max(prompt_lengths)
    try:
        with no_grad():
            get_peft_model(fresh(), PromptTuningConfig(num_virtual_tokens=n_max))(np.zeros((1, longest), np.int64))
        print(f"{n_max} virtual tokens + the longest training input ({longest} tokens) fit the context of {ctx}\n")
    except ValueError as e:
        print(f"the longest training input is {longest} tokens; on the plain base:\n  {e}\n")

    runs = []

    def run(label: str, model, kind: str, n_virtual: int):
        res = finetune(model, tok, TASK, splits["train"], steps=steps, batch_size=batch, lr=lr[kind], seed=SEED,
                       warmup=min(20, steps // 10) if llm else 20, progress=not args.quick, measure_memory=False,
                       desc=label)
        scores, preds = evaluate(model, tok, splits["test"], TASK, max_new)
        trainable = sum(p.size for p in model.parameters(trainable_only=True))
        val = validation_loss(model, tok, splits["val"], TASK)
        runs.append(dict(label=label, n=n_virtual, trainable=trainable, val=val, scores=scores,
                         seconds=res.wall_time_s, pred=preds[0]))
        return model

    prompts = {}
    for n in prompt_lengths:
        peft = get_peft_model(with_room_for(fresh(), n), PromptTuningConfig(num_virtual_tokens=n, **PROMPT_INIT))
        initial = peft.base_model.prompt_encoder["default"].embedding.weight.data.copy()
        prompts[n] = (run(f"prompt tuning n={n}", peft, "prompt", n), initial)
    prefix = PrefixTuningConfig(num_virtual_tokens=PREFIX_TOKENS)
    run(f"prefix tuning n={PREFIX_TOKENS}", get_peft_model(fresh(), prefix), "prefix", PREFIX_TOKENS)
    run(f"LoRA r={lora['r']}", get_peft_model(fresh(), LoraConfig(**lora)), "lora", 0)
    if cfg["FULL"]:
        run("full fine-tuning", fresh(), "full", 0)

    n_base = base.model.num_parameters()
    print(f"\n{TASK}: {n_train} training dialogues, {steps} steps of {batch}; validation loss on {n_val}, ROUGE-L and "
          f"facts on {n_test} test dialogues")
    print(f"{'method':<22}{'trainable':>11}{'% base':>9}{'val loss':>10}{'ROUGE-L':>9}{'facts':>7}{'train s':>9}")
    for r in runs:
        s = r["scores"]
        print(f"{r['label']:<22}{r['trainable']:>11,d}{100 * r['trainable'] / n_base:>8.3f}%{r['val']:>10.3f}"
              f"{s['rougeL']:>9.3f}{s['fact_recall']:>7.2f}{r['seconds']:>9.0f}")
    print(f"\nreference : {splits['test'][0]['summary']}")
    for r in runs:
        print(f"{r['label']:<22}: {r['pred']}")

    # what the learned prompt's tokens are near: words of the task, or nothing in particular?
    n_read = READ_PROMPT if READ_PROMPT in prompts else prompt_lengths[-1]
    peft, initial = prompts[n_read]
    summary_ids = tok.encode_batch([get_task(TASK).to_prompt_completion(r)[1] for r in splits["train"]])
    task_tokens = {i for ids in summary_ids for i in ids}
    W = peft.get_base_model().get_input_embeddings().weight.data
    learned = peft.base_model.prompt_encoder["default"].embedding.weight.data
    near_learned, cos_learned = nearest_tokens(learned, W, NEAREST)
    near_initial, _ = nearest_tokens(initial, W, 1)
    moved = np.linalg.norm(mp.to_numpy(learned - initial), axis=1) / np.linalg.norm(mp.to_numpy(initial), axis=1)
    print(f"\nthe learned {n_read}-token prompt: each virtual token's {NEAREST} nearest vocabulary tokens (cosine)")
    # a byte-level BPE token's string is its bytes as characters ("Ġthe"); decoding it gives the text (" the")
    nearest = ([[(tok.decode([int(i)], skip_special_tokens=False), float(c)) for i, c in zip(ids, cs, strict=True)]
                for ids, cs in zip(near_learned, cos_learned, strict=True)] if llm
               else prompt_nearest_tokens(peft, tok, NEAREST))
    for i, row in enumerate(nearest):
        print(f"  v{i:<3} moved {moved[i]:4.2f}x  " + "  ".join(f"{t!r} {c:.2f}" for t, c in row))
    vocab_rate = len(task_tokens) / W.shape[0]
    kept = float(np.mean(near_learned[:, 0] == near_initial[:, 0]))
    share = task_token_share(near_learned, task_tokens)
    print(f"tokens of the task's summaries: {len(task_tokens)} of the {W.shape[0]} in the vocabulary "
          f"({vocab_rate:.2f}); among the learned prompt's nearest tokens: {share:.2f}; nearest token still the "
          f"initial one for {kept:.0%} of the virtual tokens; mean cosine to the nearest "
          f"{cos_learned[:, 0].mean():.2f}")
    distinct = len(set(near_learned[:, 0].tolist()))
    verdict = "above" if share > vocab_rate + 0.05 else "below" if share < vocab_rate - 0.05 else "near"
    print(f"{distinct} distinct nearest tokens among the {n_read} virtual tokens. Read: task words are {verdict} "
          f"their vocabulary share among the neighbours, so by this measure the learned tokens "
          f"{'do' if verdict == 'above' else 'do not'} group around the task (the course claims they do)")
    if llm:
        words = sorted({t for ids, row in zip(near_learned, nearest, strict=True)
                        for i, (t, _) in zip(ids, row, strict=True) if int(i) in task_tokens})
        print(f"(in full: {vocab_rate:.4f} of the vocabulary, {share:.4f} of the neighbours: {share / vocab_rate:.1f}x "
              f"its share); the neighbours that are tokens of the task's summaries, decoded: {words}")
    config = base.model.config
    return dict(runs=runs, vocab_rate=vocab_rate, task_share=share, kept=kept, moved=moved.tolist(), distinct=distinct,
                d_model=config.d_model, n_layer=config.n_layer, config=config, nearest=nearest,
                nearest_ids=near_learned.tolist())


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
