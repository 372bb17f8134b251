"""The byte-level BPE wrapper: exact round trips, special ids, file io and deterministic training."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from minipeft.workshop.data import Tokenizer, make_corpus
from minipeft.workshop.data.tokenizer import EOS, PAD, SEP

TEXTS = make_corpus(300, seed=0)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TEXTS, vocab_size=512)


def test_special_ids_and_vocab_size(tok):
    assert (tok.pad_id, tok.eos_id, tok.sep_id) == (0, 1, 2)
    assert [tok.id_to_token(i) for i in range(3)] == [PAD, EOS, SEP]
    assert tok.vocab_size == len(tok) == 512


def test_bpe_merges_frequent_words(tok):
    # a trained BPE spends fewer tokens than bytes on text like its corpus
    text = TEXTS[0]
    assert len(tok.encode(text)) < 0.5 * len(text.encode())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.text(), st.sampled_from([EOS, PAD, SEP, "#Person1#: ", "\n\n", " ", "é"])),
                max_size=6).map("".join))
def test_decode_encode_round_trips_any_text(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.eos_id not in ids and tok.pad_id not in ids  # special strings in user text stay text


def test_add_eos_and_skipping_special_tokens(tok):
    ids = tok.encode("Hello Maria.", add_eos=True)
    assert ids[-1] == tok.eos_id and ids[:-1] == tok.encode("Hello Maria.")
    assert tok.decode(ids) == "Hello Maria."
    assert tok.decode(ids, skip_special_tokens=False) == "Hello Maria." + EOS
    assert tok.decode(np.array(ids + [tok.pad_id], dtype=np.int64)) == "Hello Maria."


def test_encode_batch_matches_encode(tok):
    texts = TEXTS[:5] + ["", " x ", "日本語"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, add_eos=True) == [tok.encode(t, add_eos=True) for t in texts]


def test_save_and_load_give_the_same_ids(tok, tmp_path):
    path = tok.save(tmp_path / "tok")  # a folder: writes tok/tokenizer.json
    assert path == tmp_path / "tok" / "tokenizer.json"
    loaded = Tokenizer.from_file(tmp_path / "tok")
    assert loaded.to_str() == tok.to_str()
    text = "#Person1#: Can we meet at the library at 5 pm on Friday? <|endoftext|> ✓"
    assert loaded.encode(text) == tok.encode(text)
    assert (loaded.pad_id, loaded.eos_id, loaded.sep_id, loaded.vocab_size) == (0, 1, 2, 512)
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer.json"]  # no temp left
    assert Tokenizer.from_file(tok.save(tmp_path / "named.json")).to_str() == tok.to_str()


def _foreign_tokenizer(path, specials):
    """A tokenizer.json made by plain `tokenizers`, as another project would ship it."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(TEXTS[:50], trainer=trainer)
    hf.save(str(path))
    return path


@pytest.mark.parametrize("eos", [EOS, "</s>", "<eos>"])
def test_tokenizer_without_pad_pads_with_eos(tmp_path, eos):
    path = _foreign_tokenizer(tmp_path / "tokenizer.json", ["<unk>", eos])
    tok = Tokenizer.from_file(path)
    assert tok.eos_id == 1 and tok.pad_id == tok.eos_id and tok.sep_id is None
    assert tok.decode(tok.encode("a b c")) == "a b c"


def test_tokenizer_without_pad_or_eos_fails_clearly(tmp_path):
    path = _foreign_tokenizer(tmp_path / "tokenizer.json", ["<unk>"])
    with pytest.raises(ValueError, match="no pad token") as e:
        Tokenizer.from_file(path)
    assert str(path) in str(e.value) and "Fix" in str(e.value)
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        Tokenizer.from_file(tmp_path / "missing")


def test_training_is_deterministic():
    a = Tokenizer.train(TEXTS[:150], vocab_size=400)
    b = Tokenizer.train(list(TEXTS[:150]), vocab_size=400)
    c = Tokenizer.train(TEXTS[150:], vocab_size=400)
    assert a.to_str() == b.to_str()
    assert a.to_str() != c.to_str()


def test_too_small_vocab_is_rejected():
    with pytest.raises(ValueError, match="at least 259"):
        Tokenizer.train(TEXTS[:10], vocab_size=100)


def test_a_truncated_tokenizer_file_names_the_file(tok, tmp_path):
    path = tok.save(tmp_path / "tokenizer.json")
    path.write_text(path.read_text()[:200])
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a valid tokenizer.json (")):
        Tokenizer.from_file(path)


@pytest.mark.parametrize("text, exc, message", [
    (None, TypeError, "encode: text must be a str, got NoneType"),
    (b"hi", TypeError, r"encode: text must be a str, got bytes \(decode bytes first"),
    (7, TypeError, "encode: text must be a str, got int"),
    ("ok \udce9", ValueError, r"encode: text holds a lone surrogate '\\udce9' at index 3"),
])
def test_encode_refuses_what_is_not_text_naming_it(tok, text, exc, message):
    with pytest.raises(exc, match=message):
        tok.encode(text)
    with pytest.raises(exc, match=message.replace("encode: text", r"encode_batch: texts\[1\]")):
        tok.encode_batch(["fine", text])
    with pytest.raises(TypeError, match="got a single str"):
        tok.encode_batch("one text")


@pytest.mark.parametrize("ids, exc, message", [
    ([5, 99999], IndexError, r"decode: ids\[1\] = 99999 is not a token id of this tokenizer \(ids are 0 to 511\)"),
    ([-1], IndexError, r"decode: ids\[0\] = -1 is not a token id"),
    ([512], IndexError, r"ids are 0 to 511"),
    ([1.0], TypeError, r"decode: ids\[0\] = 1.0 is not an integer token id"),
    (["7"], TypeError, "is not an integer token id"),
])
def test_decode_refuses_ids_outside_the_vocabulary_and_non_integers(tok, ids, exc, message):
    with pytest.raises(exc, match=message):
        tok.decode(ids)
    assert tok.decode(np.array([511, 0, 3])) == tok.decode([511, 0, 3])
