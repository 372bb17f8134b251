"""Probes of what a language model can read from its context, cheap enough to run during pretraining.

`repeat_accuracy`: a random token sequence, then the same sequence again. Nothing in the language
predicts random tokens, so the second copy can be predicted only by looking back at the first: the
"induction" skill (Olsson et al., 2022) a model needs to copy a name, a place or a time from a
dialogue into its summary. Chance is about 1 / vocab_size.

`list_copy_accuracy`: the same skill in the corpus's own words. A list of random names, foods or
places, then the same list written again ("Guest list: ... Checked in: ..."): the share of the second
list's tokens the model predicts, beside the share of the first list's (which only the language can
predict). The gap is what reading the context adds.
"""

from __future__ import annotations

import random

import numpy as np

from minipeft import backend
from minipeft.autograd import no_grad
from minipeft.generate import core_model
from minipeft.workshop.data.corpus import copied_list


def repeated_segments(rng: np.random.Generator, batch: int, seq_len: int, vocab: int, min_period: int,
                      max_period: int) -> dict[str, np.ndarray]:
    """A batch that pays only for induction: each row is a random segment of random length repeated.

    Row i draws a period p in [min_period, max_period] and p uniform token ids, and repeats them to
    seq_len + 1 tokens; inputs are the first seq_len, targets the last seq_len. After the first p tokens
    every target is the token that followed the current one last time, so the loss falls below
    log(vocab) only if attention learns to find that earlier occurrence and copy its successor.
    """
    if not 1 <= min_period <= max_period or vocab < 2 or seq_len < 2 * max_period:
        raise ValueError(f"repeated_segments: need 1 <= min_period <= max_period, seq_len >= 2 * max_period and "
                         f"vocab >= 2; got {min_period}, {max_period}, {seq_len}, {vocab}")
    rows = [np.resize(rng.integers(0, vocab, rng.integers(min_period, max_period + 1)), seq_len + 1)
            for _ in range(batch)]
    ids = np.stack(rows)
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}


def repeat_accuracy(model, n_seq: int = 32, length: int = 24, low: int = 0, seed: int = 0) -> float:
    """Share of the second copy's tokens (after its first) that the model's argmax predicts.

    Each row is s, s with s drawn uniformly from token ids low..vocab_size-1 (a generator of its own,
    `seed`); the prediction for position length + i (the copy's token i) must be s[i + 1].
    """
    vocab, ctx = core_model(model).config.vocab_size, core_model(model).config.context_length
    if not 0 <= low < vocab or length < 2 or 2 * length > ctx:
        raise ValueError(f"repeat_accuracy: need 0 <= low < vocab_size={vocab}, length >= 2 and 2 * length <= "
                         f"context_length={ctx}; got low={low}, length={length}")
    s = np.random.default_rng(seed).integers(low, vocab, (n_seq, length))
    ids = np.concatenate([s, s], axis=1)                                 # (n, 2 * length)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            logits, _ = model(backend.asarray(ids))
    finally:
        model.train(was_training)
    pred = backend.to_numpy(logits.data[:, length:-1].argmax(axis=-1))   # (n, length - 1)
    return float((pred == s[:, 1:]).mean())


def list_copy_accuracy(model, tok, n_docs: int = 32, seed: int = 12345) -> dict[str, float]:
    """{"first": accuracy on the first list's tokens, "second": on the repeated list's} (greedy argmax)."""
    rng = random.Random(f"list-probe:{seed}")
    hits = {"first": [0, 0], "second": [0, 0]}
    was_training = model.training
    model.eval()
    try:
        for _ in range(n_docs):
            doc = copied_list(rng)
            first, second = doc.split("\n")
            head1, items1 = first.split(":", 1)
            head2, _ = second.split(":", 1)
            ids = tok.encode(doc)
            starts = [len(tok.encode(head1 + ":")), len(tok.encode(first + "\n" + head2 + ":"))]
            ends = [len(tok.encode(first)), len(ids)]
            if ids[:starts[1]] != tok.encode(first + "\n" + head2 + ":"):
                continue  # the merges crossed the boundary: skip rather than misalign
            with no_grad():
                logits, _ = model(backend.asarray(np.asarray([ids])))
            pred = backend.to_numpy(logits.data[0].argmax(axis=-1))
            for key, a, b in (("first", starts[0], ends[0]), ("second", starts[1], ends[1])):
                hits[key][0] += int((pred[a - 1:b - 1] == np.asarray(ids[a:b])).sum())
                hits[key][1] += b - a
    finally:
        model.train(was_training)
    return {k: h / max(n, 1) for k, (h, n) in hits.items()}
