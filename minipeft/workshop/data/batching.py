"""Batches as NumPy int64 arrays: random windows for pretraining, masked prompt/completion pairs for SFT.

The model code moves the arrays to the device. Supervised fine-tuning computes the loss only on the
completion (and the end-of-text token that closes it): every other target is `ignore_index`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from minipeft.workshop.data.generator import Task, get_task

IGNORE_INDEX = -100  # the target value the loss skips, as in PyTorch's cross_entropy


class TokenizerLike(Protocol):
    """What batching needs from a tokenizer (minipeft.workshop.data.Tokenizer has it)."""

    eos_id: int | None
    pad_id: int

    def encode(self, text: str, add_eos: bool = False) -> list[int]: ...
    def encode_batch(self, texts: Sequence[str], add_eos: bool = False) -> list[list[int]]: ...


def check_positive_int(value, name: str, where: str) -> None:
    """Raise a ValueError naming `where`, the argument and its value unless it is an int >= 1 (batch_size, seq_len)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where}: {name} must be an int >= 1, got {value!r}")


def encode_corpus(texts: Sequence[str], tok: TokenizerLike) -> np.ndarray:
    """One int64 token stream of all documents, each followed by the end-of-text id."""
    _eos(tok)
    ids = tok.encode_batch(list(texts), add_eos=True)
    return np.fromiter((i for doc in ids for i in doc), dtype=np.int64, count=sum(len(d) for d in ids))


def lm_batches(token_ids: np.ndarray, batch_size: int, seq_len: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random contiguous windows of one token stream (docs joined by eos): x (B, T), y = x shifted by one."""
    check_positive_int(batch_size, "batch_size", "lm_batches")
    check_positive_int(seq_len, "seq_len", "lm_batches")
    token_ids = np.asarray(token_ids)
    n = token_ids.shape[0] if token_ids.ndim else 0
    if token_ids.ndim != 1 or n < seq_len + 1:
        raise ValueError(f"lm_batches needs a 1-D token stream of at least seq_len+1={seq_len + 1} tokens, "
                         f"got shape {token_ids.shape}; use a bigger corpus or a smaller seq_len")
    starts = rng.integers(0, n - seq_len, size=batch_size)  # last start n-seq_len-1 still has a target
    window = token_ids[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64)  # (B, T+1)
    return window[:, :-1], window[:, 1:]


def _check_fits(n_prompt: int, n_completion: int, max_len: int) -> None:
    n = n_prompt + n_completion + 1
    if n_prompt == 0:
        raise ValueError("the prompt encodes to 0 tokens; the first completion token needs a token before it")
    if n - 1 > max_len:
        raise ValueError(f"example too long: prompt {n_prompt} + completion {n_completion} + eos 1 = {n} tokens; "
                         f"the model input (all but the last token) is {n - 1} > max_len={max_len}. "
                         f"Shorten the text or raise max_len (the model's context length).")


def _join(p: list[int], c: list[int], eos: int, max_len: int) -> tuple[list[int], list[bool]]:
    _check_fits(len(p), len(c), max_len)
    return [*p, *c, eos], [False] * len(p) + [True] * (len(c) + 1)


def split_for_bpe(prompt: str, completion: str) -> tuple[str, str]:
    """Move the prompt's trailing spaces onto the completion: "Summary: " + "X" -> "Summary:" + " X".

    A byte-level BPE spells a word with its leading space (" Oscar" is one common token, "Oscar" after
    a bare space is a rarer split), so the completion must start with the space, in training and in
    generation alike (finetune.predict encodes prompt.rstrip()).
    """
    stripped = prompt.rstrip(" ")
    return stripped, prompt[len(stripped):] + completion


def _eos(tok: TokenizerLike) -> int:
    if tok.eos_id is None:
        raise ValueError("SFT needs a tokenizer with an end-of-text token to close each completion")
    return tok.eos_id


def encode_sft(prompt: str, completion: str, tok: TokenizerLike, max_len: int) -> tuple[list[int], list[bool]]:
    """ids = prompt + completion + eos and loss_mask (True on completion and eos); input ids[:-1] must fit."""
    prompt, completion = split_for_bpe(prompt, completion)
    return _join(tok.encode(prompt), tok.encode(completion), _eos(tok), max_len)


def collate_sft(examples: Sequence[tuple[Sequence[int], Sequence[bool]]], pad_id: int,
                ignore_index: int = IGNORE_INDEX) -> dict[str, np.ndarray]:
    """Pad examples to a batch: input_ids (B, T), targets (B, T), attention_mask (B, T); T = longest - 1."""
    if not examples:
        raise ValueError("collate_sft got no examples")
    B, T = len(examples), max(len(ids) for ids, _ in examples) - 1
    input_ids = np.full((B, T), pad_id, dtype=np.int64)
    targets = np.full((B, T), ignore_index, dtype=np.int64)
    attention_mask = np.zeros((B, T), dtype=np.int64)
    for b, (ids, mask) in enumerate(examples):
        if len(ids) != len(mask):
            raise ValueError(f"example {b}: {len(ids)} ids but {len(mask)} loss-mask entries")
        ids_a, mask_a = np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool)
        L = len(ids_a) - 1  # inputs ids[:-1] predict ids[1:]
        input_ids[b, :L] = ids_a[:-1]
        attention_mask[b, :L] = 1
        targets[b, :L] = np.where(mask_a[1:], ids_a[1:], ignore_index)  # loss where the NEXT token is completion
    return {"input_ids": input_ids, "targets": targets, "attention_mask": attention_mask}


def encode_prompts(tok: TokenizerLike, texts: Sequence[str]) -> list[list[int]]:
    """Task prompts as the model expects them: tok.encode_prompts (a chat model's wraps them in its chat
    template) where the tokenizer has it, else plain encode_batch."""
    return getattr(tok, "encode_prompts", tok.encode_batch)(texts)


def encode_rows(rows: Sequence[dict], task: str | Task, tok: TokenizerLike,
                max_len: int) -> list[tuple[list[int], list[bool]]]:
    """encode_sft for every row of a task, batched through the tokenizer; errors name the row."""
    t = get_task(task)
    pairs = []
    for i, r in enumerate(rows):
        try:
            pairs.append(split_for_bpe(*t.to_prompt_completion(r)))
        except (TypeError, ValueError) as e:
            raise (TypeError if isinstance(e, TypeError) else ValueError)(f"row {i}: {e}") from e
    prompts = encode_prompts(tok, [p for p, _ in pairs])
    completions = getattr(tok, "encode_completions", tok.encode_batch)([c for _, c in pairs])
    eos, out = _eos(tok), []
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        try:
            out.append(_join(p, c, eos, max_len))
        except ValueError as e:
            raise ValueError(f"{t.name} row {i}: {e}") from None
    return out


def sft_batches(rows: Sequence[dict], task: str | Task, tok: TokenizerLike, batch_size: int, max_len: int,
                rng: np.random.Generator | None = None, shuffle: bool = True,
                drop_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of collated SFT batches (see collate_sft) over the rows of a task; bad arguments raise here."""
    check_positive_int(batch_size, "batch_size", "sft_batches")
    if shuffle and rng is None:
        raise ValueError("sft_batches(shuffle=True) needs rng=np.random.default_rng(seed)")
    encoded = encode_rows(rows, task, tok, max_len)  # encode everything first so errors come early
    order = np.arange(len(encoded))
    if shuffle:
        rng.shuffle(order)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return (collate_sft([encoded[j] for j in order[i:i + batch_size]], tok.pad_id)
            for i in range(0, stop, batch_size))
