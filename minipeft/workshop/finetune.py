"""Supervised fine-tuning on a task and scoring by generation: what the tutorials run for every method."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from minipeft.autograd import no_grad
from minipeft.generate import context_left, generate
from minipeft.loss import causal_lm_loss
from minipeft.optim import AdamW, cosine_schedule
from minipeft.train import TrainResult, train
from minipeft.workshop.data.batching import check_positive_int, collate_sft, encode_prompts, encode_rows
from minipeft.workshop.data.dialogues import fact_kind
from minipeft.workshop.data.generator import get_task
from minipeft.workshop.metrics import accuracy, exact_match, fact_recall, fact_recall_by_kind, rouge


def sft_sampler(rows: Sequence[dict], task: str, tok, batch_size: int, max_len: int, seed: int = 0):
    """step -> collated batch, reshuffling the rows every epoch (encodes everything once, up front)."""
    check_positive_int(batch_size, "batch_size", "finetune")
    encoded = encode_rows(rows, task, tok, max_len)
    if len(encoded) < batch_size:
        raise ValueError(f"sft_sampler: {len(encoded)} rows are fewer than batch_size={batch_size}")
    rng = np.random.default_rng(seed)
    per_epoch = len(encoded) // batch_size
    order: list[int] = []

    def batch(step: int) -> dict:
        nonlocal order
        i = step % per_epoch
        if i == 0:
            order = list(rng.permutation(len(encoded)))
        return collate_sft([encoded[j] for j in order[i * batch_size:(i + 1) * batch_size]], tok.pad_id)

    return batch


def finetune(model, tok, task: str, rows: Sequence[dict], *, steps: int, batch_size: int = 16, lr: float = 1e-3,
             weight_decay: float = 0.0, warmup: int = 20, max_len: int | None = None, seed: int = 0,
             progress: bool = True, measure_memory: bool = True, log_every: int = 10,
             desc: str = "finetune") -> TrainResult:
    """AdamW on the model's trainable parameters, loss on completion tokens only, cosine learning rate.

    progress=True shows a progress bar (the loss every log_every steps); progress=False prints nothing."""
    if not hasattr(tok, "encode_batch"):
        raise TypeError(f"finetune: tok must be the tokenizer the model was trained with (load_base_model().tokenizer, "
                        f"a minipeft Tokenizer), got {type(tok).__name__}")
    params = model.parameters(trainable_only=True)
    if not params:
        frozen = [n for n, c in getattr(model, "peft_config", {}).items() if c.inference_mode]
        if frozen:
            raise ValueError(f"finetune: adapter(s) {frozen} were loaded for inference (inference_mode=True), so "
                             "nothing trains; load the adapter with PeftModel.from_pretrained(base, path, "
                             "is_trainable=True) (or load_adapter(path, name, is_trainable=True)) to train it further")
        raise ValueError("finetune: the model has no trainable parameters (did you freeze everything?)")
    max_len = _max_len(model, max_len, "finetune")
    opt = AdamW(params, lr=lr, weight_decay=weight_decay)
    return train(model, sft_sampler(rows, task, tok, batch_size, max_len, seed), steps=steps, optimizer=opt,
                 schedule=lambda s: cosine_schedule(s, steps, min(warmup, steps // 2), lr, lr / 10),
                 grad_clip=1.0, progress=progress, seed=seed, measure_memory=measure_memory, desc=desc,
                 log_every=log_every if progress else 0)


def validation_loss(model, tok, rows: Sequence[dict], task: str, max_len: int | None = None,
                    batch_size: int = 16) -> float:
    """Mean loss per completion token on held-out rows, teacher-forced (no generation), in eval mode.

    Every completion token weighs the same, whatever its batch: sum of the batches' token losses over the
    number of tokens. max_len: as finetune()'s, default the context left after any virtual tokens."""
    check_positive_int(batch_size, "batch_size", "validation_loss")
    enc = encode_rows(rows, task, tok, _max_len(model, max_len, "validation_loss"))
    was_training = getattr(model, "training", True)
    model.eval()
    total = count = 0.0
    try:
        with no_grad():
            for i in range(0, len(enc), batch_size):
                b = collate_sft(enc[i:i + batch_size], tok.pad_id)
                n = int((b["targets"] != -100).sum())
                total += causal_lm_loss(model, b["input_ids"], b["targets"]).item() * n
                count += n
    finally:
        model.train(was_training)
    if not count:
        raise ValueError(f"validation_loss: the {len(enc)} rows hold no completion token to score")
    return total / count


def _context(model) -> int:
    """The longest token sequence the model takes: its context less any virtual tokens (prompt tuning)."""
    return context_left(model)


def _max_len(model, max_len: int | None, where: str) -> int:
    """max_len checked against what the model takes; None: all of it."""
    ctx = _context(model)
    if max_len is None:
        return ctx
    check_positive_int(max_len, "max_len", where)
    if max_len > ctx:
        raise ValueError(f"{where}: max_len={max_len} is longer than the model takes ({ctx} positions: its context "
                         f"less any virtual tokens); pass max_len <= {ctx}, or None for all of it")
    return max_len


def predict(model, tok, rows: Sequence[dict], task: str, max_new_tokens: int = 48) -> list[str]:
    """Greedy completions (KV-cached) of each row's prompt, decoded and stripped."""
    check_positive_int(max_new_tokens, "max_new_tokens", "predict")
    t = get_task(task)
    prompts = encode_prompts(tok, [t.to_prompt_completion(r)[0].rstrip(" ") for r in rows])  # see split_for_bpe
    ctx = _context(model)
    out = []
    for ids in prompts:
        n = min(max_new_tokens, ctx - len(ids))
        if n < 1:
            raise ValueError(f"predict: a {t.name} prompt of {len(ids)} tokens leaves no room in context {ctx}")
        out.append(tok.decode(generate(model, ids, n, eos_id=tok.eos_id)).strip())
    return out


METRICS = ("rouge", "exact_match", "accuracy")   # what score() computes; the task names its own


def score(task: str, predictions: Sequence[str], references: Sequence[str],
          metric: str | None = None) -> dict[str, float]:
    """The task's metric (or `metric`): ROUGE-1/2/L, exact match, or accuracy (first word vs label).

    The generated dialogues' task also gets fact recall (which facts of the dialogue the summary states), when
    scored by its own metric: the facts are what its generator writes, so other text has none to recall."""
    t = get_task(task)
    if metric is not None and metric not in METRICS:
        raise ValueError(f"score: metric must be one of {METRICS}, got {metric!r}")
    chosen = metric or t.metric
    if chosen == "rouge":
        scores = rouge(predictions, references)
        if metric is None and t is get_task("dialogsum"):
            by_kind = fact_recall_by_kind(predictions, references, fact_kind)
            scores |= {"fact_recall": fact_recall(predictions, references),
                       **{f"facts_{k}": v for k, v in by_kind.items()}}
        return scores
    if chosen == "exact_match":
        return {"exact_match": exact_match(predictions, references)}
    first = [p.split()[0].strip(".,!").lower() if p.split() else "" for p in predictions]
    return {"accuracy": accuracy(first, references)}


def evaluate(model, tok, rows: Sequence[dict], task: str, max_new_tokens: int = 48,
             metric: str | None = None) -> tuple[dict, list[str]]:
    """(metrics, predictions) of greedy generation on rows, scored by the task's metric or `metric`."""
    t = get_task(task)
    preds = predict(model, tok, rows, task, max_new_tokens)
    return score(task, preds, [r[t.completion_field] for r in rows], metric), preds
