"""Pretraining windows and SFT batches: loss only on completion tokens and eos, never on prompt or padding."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minipeft.workshop.data import (
    IGNORE_INDEX,
    Tokenizer,
    collate_sft,
    encode_corpus,
    encode_rows,
    encode_sft,
    lm_batches,
    make_corpus,
    make_splits,
    sft_batches,
    split_for_bpe,
)
from minipeft.workshop.finetune import sft_sampler


class CharTokenizer:
    """One id per character (ord + 3); pad 0, eos 1: lengths are easy to reason about."""

    pad_id, eos_id = 0, 1

    def encode(self, text, add_eos=False):
        return [ord(c) + 3 for c in text] + ([1] if add_eos else [])

    def encode_batch(self, texts, add_eos=False):
        return [self.encode(t, add_eos) for t in texts]


CHAR = CharTokenizer()


def test_lm_batches_are_shifted_contiguous_windows():
    stream = np.arange(1000, dtype=np.int64)
    x, y = lm_batches(stream, batch_size=8, seq_len=16, rng=np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int64
    assert np.array_equal(x[:, 1:], y[:, :-1])
    assert np.array_equal(x - x[:, :1], np.broadcast_to(np.arange(16), (8, 16)))  # contiguous
    assert np.array_equal(y, x + 1)
    x2, _ = lm_batches(stream, 8, 16, np.random.default_rng(0))
    assert np.array_equal(x, x2)


def test_lm_batches_reach_the_last_window_and_reject_short_streams():
    stream = np.arange(17)
    x, y = lm_batches(stream, 4, 16, np.random.default_rng(1))  # exactly one window fits
    assert np.array_equal(x, np.tile(np.arange(16), (4, 1))) and np.array_equal(y, x + 1)
    starts = lm_batches(np.arange(20), 2000, 16, np.random.default_rng(2))[0][:, 0]
    assert set(starts.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="at least seq_len\\+1=17"):
        lm_batches(np.arange(16), 1, 16, np.random.default_rng(0))


@pytest.mark.parametrize("batch_size", [0, -2, 2.0, None])
def test_a_batch_size_below_one_is_refused_by_every_entry_point(batch_size):
    rows = make_splits("sentiment", 4, 0, 0, seed=0)["train"]
    rng = np.random.default_rng(0)
    for where, call in [("lm_batches", lambda: lm_batches(np.arange(100), batch_size, 8, rng)),
                        ("sft_batches", lambda: sft_batches(rows, "sentiment", CHAR, batch_size, 512, rng)),
                        ("finetune", lambda: sft_sampler(rows, "sentiment", CHAR, batch_size, 512))]:
        with pytest.raises(ValueError, match=re.escape(f"{where}: batch_size must be an int >= 1, got {batch_size!r}")):
            call()
    with pytest.raises(ValueError, match="lm_batches: seq_len must be an int >= 1, got 0"):
        lm_batches(np.arange(100), 2, 0, rng)


def test_encode_corpus_ends_every_document_with_eos():
    ids = encode_corpus(["ab", "", "c"], CHAR)
    assert ids.dtype == np.int64 and ids.tolist() == [100, 101, 1, 1, 102, 1]


def test_encode_sft_marks_completion_and_eos():
    ids, mask = encode_sft("ab", "xyz", CHAR, max_len=16)
    assert ids == [100, 101, 123, 124, 125, 1]
    assert mask == [False, False, True, True, True, True]


def test_encode_sft_rejects_examples_that_do_not_fit():
    ids, _ = encode_sft("abcd", "xyz", CHAR, max_len=7)  # 8 ids: the model reads 7 of them
    assert len(ids) == 8
    with pytest.raises(ValueError, match=r"prompt 4 \+ completion 3 \+ eos 1 = 8 tokens.*max_len=6"):
        encode_sft("abcd", "xyz", CHAR, max_len=6)
    with pytest.raises(ValueError, match="prompt encodes to 0 tokens"):
        encode_sft("", "xyz", CHAR, max_len=6)


def test_collate_masks_prompt_and_padding():
    a = encode_sft("ab", "xy", CHAR, 16)  # 5 ids
    b = encode_sft("abcde", "z", CHAR, 16)  # 7 ids
    batch = collate_sft([a, b], pad_id=0)
    I = IGNORE_INDEX  # noqa: N806
    assert batch["input_ids"].tolist() == [[100, 101, 123, 124, 0, 0], [100, 101, 102, 103, 104, 125]]
    assert batch["targets"].tolist() == [[I, 123, 124, 1, I, I], [I, I, I, I, 125, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert all(v.dtype == np.int64 for v in batch.values())
    assert collate_sft([a], pad_id=7, ignore_index=-1)["targets"].tolist() == [[-1, 123, 124, 1]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text("abc", min_size=1, max_size=8), st.text("xyz", max_size=8)), min_size=1,
                max_size=5))
def test_only_completion_tokens_and_eos_are_targets(pairs):
    examples = [encode_sft(p, c, CHAR, 64) for p, c in pairs]
    batch = collate_sft(examples, pad_id=0)
    T = max(len(p) + len(c) for p, c in pairs)  # longest ids (prompt + completion + eos) minus one
    assert batch["input_ids"].shape == batch["targets"].shape == (len(pairs), T)
    for b, (p, c) in enumerate(pairs):
        t = batch["targets"][b]
        live = t != IGNORE_INDEX
        # targets are exactly the completion and eos, at the positions that predict them
        assert t[live].tolist() == CHAR.encode(c) + [1]
        assert np.flatnonzero(live).tolist() == list(range(len(p) - 1, len(p) + len(c)))
        assert batch["attention_mask"][b].sum() == len(p) + len(c)
        assert not live[batch["attention_mask"][b] == 0].any()  # never a target on padding


def test_sft_batches_cover_each_row_once_per_epoch():
    rows = make_splits("sentiment", 10, 0, 0, seed=0)["train"]
    batches = list(sft_batches(rows, "sentiment", CHAR, batch_size=4, max_len=512, rng=np.random.default_rng(0)))
    assert [len(b["input_ids"]) for b in batches] == [4, 4, 2]
    live = sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in batches)
    assert live == sum(len(" " + r["label"]) + 1 for r in rows)  # the prompt's trailing space moves over
    got = sorted(tuple(t[t != IGNORE_INDEX].tolist()) for b in batches for t in b["targets"])
    assert got == sorted(tuple(CHAR.encode(" " + r["label"], add_eos=True)) for r in rows)
    again = list(sft_batches(rows, "sentiment", CHAR, 4, 512, np.random.default_rng(0)))
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(batches, again, strict=True))
    plain = list(sft_batches(rows, "sentiment", CHAR, 4, 512, shuffle=False, drop_last=True))
    assert len(plain) == 2 and not np.array_equal(plain[0]["input_ids"], batches[0]["input_ids"])
    with pytest.raises(ValueError, match="needs rng"):
        next(sft_batches(rows, "sentiment", CHAR, 4, 512))


def test_encode_rows_names_the_row_that_is_too_long():
    rows = [{"text": "ok", "label": "positive"}, {"text": "x" * 400, "label": "negative"}]
    with pytest.raises(ValueError, match="sentiment row 1: example too long"):
        encode_rows(rows, "sentiment", CHAR, max_len=256)


def test_sft_batches_with_the_real_tokenizer_decode_back_to_the_completion():
    tok = Tokenizer.train(make_corpus(100, seed=0), vocab_size=400)
    rows = make_splits("qa", 6, 0, 0, seed=0)["train"]
    (batch,) = sft_batches(rows, "qa", tok, batch_size=6, max_len=1024, shuffle=False)
    for t, row in zip(batch["targets"], rows, strict=True):
        assert tok.decode(t[t != IGNORE_INDEX]) == " " + row["answer"]  # leading space: see split_for_bpe


def test_split_for_bpe_moves_the_prompts_trailing_space_to_the_completion():
    assert split_for_bpe("Summary: ", "Oscar calls.") == ("Summary:", " Oscar calls.")
    assert split_for_bpe("Answer:", "Luna") == ("Answer:", "Luna")
    assert split_for_bpe("A:  ", "x") == ("A:", "  x")
    tok = Tokenizer.train(make_corpus(200, seed=0), vocab_size=400)
    p, c = split_for_bpe("Sentiment: ", "positive")
    assert len(tok.encode(c)) <= len(tok.encode("positive"))  # " positive" is the common spelling


def test_validation_loss_weighs_every_completion_token_alike_and_restores_the_mode():
    """The mean over completion tokens, whatever the batching: batches of 1 and one batch of all rows agree (to
    float32 rounding of a few summed losses), and equal the token-weighted mean of causal_lm_loss per row; the
    model's training mode is put back."""
    from minipeft import manual_seed
    from minipeft.loss import causal_lm_loss
    from minipeft.nn import GPT, GPTConfig
    from minipeft.workshop.finetune import validation_loss

    tok = Tokenizer.train(make_corpus(100, seed=0), vocab_size=400)
    rows = make_splits("qa", 6, 0, 0, seed=0)["train"]
    manual_seed(0)
    model = GPT(GPTConfig(vocab_size=400, context_length=1024, d_model=16, n_layer=1, n_head=2, d_ff=32))
    model.train()
    one_each = validation_loss(model, tok, rows, "qa", batch_size=1)
    assert model.training
    all_at_once = validation_loss(model, tok, rows, "qa", batch_size=len(rows))
    per_row = [(causal_lm_loss(model, b["input_ids"], b["targets"]).item(), int((b["targets"] != IGNORE_INDEX).sum()))
               for b in sft_batches(rows, "qa", tok, batch_size=1, max_len=1024, shuffle=False)]
    weighted = sum(loss * n for loss, n in per_row) / sum(n for _, n in per_row)
    assert len({n for _, n in per_row}) > 1          # rows of different lengths, so weighting matters
    np.testing.assert_allclose([one_each, all_at_once], weighted, rtol=1e-5)   # float32 sums of ~10 terms
