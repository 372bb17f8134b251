"""Spec of the copying probes: aligned so that a perfect copier scores 1 and a model that cannot read scores
about chance, whatever model they are given."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from minipeft import Tensor, backend
from minipeft.workshop.data import Tokenizer, make_corpus
from minipeft.workshop.probes import list_copy_accuracy, repeat_accuracy


class InductionOracle:
    """A stand-in model: at each position find the last earlier occurrence of the current two tokens (else of
    the current token) and predict the token that followed it (the induction rule), or token 0 if there is
    none. It reads its context perfectly and knows nothing else."""

    def __init__(self, vocab_size: int, context_length: int = 512, read: bool = True):
        self.config = SimpleNamespace(vocab_size=vocab_size, context_length=context_length)
        self.training, self.read = True, read

    def new_kv_cache(self):
        return None

    def eval(self):
        self.training = False
        return self

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def __call__(self, ids):
        ids = backend.to_numpy(ids)
        logits = np.zeros((*ids.shape, self.config.vocab_size))
        for b, row in enumerate(ids):
            row = [int(v) for v in row]
            last: dict[tuple, int] = {}
            for t, tok in enumerate(row):
                pair = (row[t - 1] if t else -1, tok)
                j = last.get(pair, last.get((tok,)))
                logits[b, t, row[j + 1] if self.read and j is not None else 0] = 1.0
                last[pair], last[(tok,)] = t, t
        return Tensor(logits), None


def test_repeat_accuracy_is_one_for_a_copier_and_chance_for_a_model_that_cannot_read():
    assert repeat_accuracy(InductionOracle(1000), n_seq=16, length=20) > 0.95   # < 1 only where s repeats a token
    assert repeat_accuracy(InductionOracle(1000, read=False), n_seq=16, length=20) < 0.01


def test_repeat_accuracy_checks_its_arguments():
    with pytest.raises(ValueError, match="context_length=16"):
        repeat_accuracy(InductionOracle(64, context_length=16), length=10)
    with pytest.raises(ValueError, match="low=64"):
        repeat_accuracy(InductionOracle(64), low=64)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(make_corpus(300, seed=3), vocab_size=384)


def test_list_copy_accuracy_separates_reading_from_guessing(tok):
    copier = list_copy_accuracy(InductionOracle(tok.vocab_size), tok, n_docs=16)
    guesser = list_copy_accuracy(InductionOracle(tok.vocab_size, read=False), tok, n_docs=16)
    assert copier["second"] > 0.8 and copier["second"] > copier["first"] + 0.5
    assert guesser["second"] < 0.05 and guesser["first"] < 0.05
