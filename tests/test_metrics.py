"""Hand-written metrics: ROUGE equals the rouge-score package; exact match normalizes like SQuAD."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from minipeft.workshop.metrics import (
    accuracy,
    exact_match,
    fact_recall,
    fact_recall_by_kind,
    facts,
    normalize_answer,
    perplexity,
    rouge,
    rouge_scores,
    rouge_tokenize,
)

REFERENCE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
WORDS = ["the", "cat", "Cat", "sat", "on", "mat", "a", "5", "pm", "#Person1#", "don't", "café", "", "x-ray",
         "İstanbul", "42nd"]
SEPS = [" ", "  ", ", ", ". ", "\n", "!", "-", "\t", "'s "]
texts = st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(SEPS)), max_size=14).map(
    lambda ws: "".join(w + s for w, s in ws))


@settings(max_examples=400, deadline=None)
@given(texts, texts)
def test_rouge_matches_rouge_score_package(pred, ref):
    ours = rouge_scores(pred, ref)
    theirs = REFERENCE.score(ref, pred)  # rouge-score takes (target, prediction)
    for k in ("rouge1", "rouge2", "rougeL"):
        assert abs(ours[k] - theirs[k].fmeasure) <= 1e-12, (k, pred, ref, ours[k], theirs[k])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(texts, texts), min_size=1, max_size=5))
def test_corpus_rouge_is_the_mean_of_pair_scores(pairs):
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    got = rouge(preds, refs)
    for k in got:
        expected = sum(REFERENCE.score(r, p)[k].fmeasure for p, r in pairs) / len(pairs)
        assert got[k] == pytest.approx(expected, abs=1e-12)


def test_rouge_known_values():
    assert rouge_tokenize("The CAT's 5-pm nap!") == ["the", "cat", "s", "5", "pm", "nap"]
    assert rouge_scores("the cat sat", "the cat sat") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert rouge_scores("a b", "c d") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    s = rouge_scores("the cat", "the dog")
    assert s["rouge1"] == 0.5 and s["rouge2"] == 0.0 and s["rougeL"] == 0.5
    # LCS ignores gaps but keeps order: "a c" is a subsequence of "a b c" (P = 1, R = 2/3)
    assert rouge_scores("a c", "a b c")["rougeL"] == pytest.approx(0.8)
    assert rouge_scores("c a", "a b c")["rougeL"] == pytest.approx(0.4)
    assert rouge_scores("", "a")["rougeL"] == 0.0
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge(["a", "b"], ["a"])


@pytest.mark.parametrize("pred, ref, same", [
    ("The Bakery.", "bakery", True),
    ("an apple", "Apple", True),
    ("  Hello,   world! ", "hello world", True),
    ("12,000", "12000", True),
    ("the Silver River", "Silver River", True),
    ("theater", "the ater", False),  # articles are removed as whole words only
    ("Paris", "London", False),
    ("a nurse", "nurses", False),
])
def test_exact_match_normalization(pred, ref, same):
    assert (normalize_answer(pred) == normalize_answer(ref)) is same
    assert exact_match([pred], [ref]) == float(same)


def test_exact_match_and_accuracy_average_over_examples():
    assert exact_match(["the bank", "Tom", "x"], ["bank", "tom", "y"]) == pytest.approx(2 / 3)
    preds, refs = [" Positive\n", "negative", "positive"], ["positive", "negative", "negative"]
    assert accuracy(preds, refs) == pytest.approx(2 / 3)
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 0]) == 0.5
    with pytest.raises(ValueError, match="no predictions"):
        accuracy([], [])


def test_perplexity_is_exp_of_mean_nll():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(50)) == pytest.approx(50)
    assert perplexity(1e4) == math.inf
    with pytest.raises(ValueError, match="mean NLL"):
        perplexity(-0.1)


def test_fact_recall_counts_names_days_and_numbers_only():
    ref = "#Person1# invites Oscar to the cafeteria on Saturday at 8 am. They will pay 12 dollars."
    assert facts(ref) == {"Oscar", "Saturday", "8", "12"}
    assert fact_recall([ref], [ref]) == 1.0
    wrong = "#Person1# invites Kate to the cafeteria on Sunday at 8 am. They will pay 12 dollars."
    assert fact_recall([wrong], [ref]) == 0.5  # 8 and 12 right, Kate and Sunday wrong
    assert fact_recall(["", ref], [ref, ref]) == 0.5
    assert math.isnan(fact_recall(["x"], ["no facts here."]))


def test_fact_recall_by_kind_pools_each_kind_over_the_pairs():
    refs = ["Anna meets Oscar at 8 on Monday.", "Ben pays 30 dollars at Luigi's on Friday."]
    preds = ["Anna meets Tom at 8 on Monday.", "Ben pays 40 dollars at Luigi's on Friday."]
    kind = {"Anna": "names", "Oscar": "names", "Ben": "names", "Tom": "names", "Monday": "days", "Friday": "days",
            "Luigi": "places", "8": "numbers", "30": "numbers", "40": "numbers"}.__getitem__
    got = fact_recall_by_kind(preds, refs, kind)
    assert got == {"days": 1.0, "names": 2 / 3, "numbers": 1 / 2, "places": 1.0}
    assert fact_recall(preds, refs) == pytest.approx((3 / 4 + 3 / 4) / 2)   # the per-summary mean, for contrast
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        fact_recall_by_kind(preds, refs[:1], kind)


def test_fact_kinds_of_the_dialogue_task():
    from minipeft.workshop.data.dialogues import fact_kind

    assert [fact_kind(w) for w in ("Oscar", "Monday", "8:30", "30", "Paris")] == [
        "names", "days", "numbers", "numbers", "places"]
