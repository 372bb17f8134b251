"""Metrics written out by hand: ROUGE-1/2/L (as the `rouge-score` package computes them), perplexity,
accuracy and SQuAD-style exact match.

ROUGE follows `rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)`:
lowercase, every run of characters other than a-z0-9 becomes a space, split on whitespace. ROUGE-N counts
clipped n-gram overlaps; ROUGE-L uses the longest common subsequence (LCS). Each reports the F-measure
F = 2PR / (P + R), with P = overlap / prediction length and R = overlap / reference length.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def rouge_tokenize(text: str) -> list[str]:
    """rouge-score's default tokens: lowercase, non-[a-z0-9] -> space, whitespace split."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    """F-measure from an overlap count, with rouge-score's guards against empty texts."""
    precision = overlap / max(n_pred, 1)
    recall = overlap / max(n_ref, 1)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(pred_tokens: list[str], ref_tokens: list[str], n: int) -> float:
    """ROUGE-N F-measure: overlap = sum over reference n-grams of min(count in ref, count in pred)."""
    pred, ref = _ngrams(pred_tokens, n), _ngrams(ref_tokens, n)
    overlap = sum(min(c, pred[g]) for g, c in ref.items())
    return _f1(overlap, sum(pred.values()), sum(ref.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, by dynamic programming over one row at a time."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    """ROUGE-L F-measure: P = LCS / len(pred), R = LCS / len(ref); 0 if either text has no tokens."""
    if not pred_tokens or not ref_tokens:
        return 0.0
    return _f1(lcs_length(ref_tokens, pred_tokens), len(pred_tokens), len(ref_tokens))


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures of one prediction against one reference."""
    p, r = rouge_tokenize(prediction), rouge_tokenize(reference)
    return {"rouge1": rouge_n(p, r, 1), "rouge2": rouge_n(p, r, 2), "rougeL": rouge_l(p, r)}


def _check_pairs(predictions: Sequence, references: Sequence, name: str) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{name}: {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError(f"{name}: no predictions to score")


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures over prediction/reference pairs."""
    _check_pairs(predictions, references, "rouge")
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for p, r in zip(predictions, references, strict=True):
        for k, v in rouge_scores(p, r).items():
            totals[k] += v
    return {k: v / len(predictions) for k, v in totals.items()}


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood per token, in nats); inf when it overflows."""
    if math.isnan(mean_nll) or mean_nll < 0:
        raise ValueError(f"perplexity needs a mean NLL >= 0 (nats per token), got {mean_nll}")
    return math.exp(mean_nll) if mean_nll < 709 else math.inf


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and articles (a, an, the), squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after normalize_answer."""
    _check_pairs(predictions, references, "exact_match")
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True))
    return hits / len(predictions)


def accuracy(predictions: Sequence, references: Sequence) -> float:
    """Fraction of exact matches; strings are compared stripped and lowercased ("Positive " == "positive")."""
    _check_pairs(predictions, references, "accuracy")

    def norm(v):
        return v.strip().lower() if isinstance(v, str) else v

    return sum(norm(p) == norm(r) for p, r in zip(predictions, references, strict=True)) / len(predictions)


_FACT = re.compile(r"\b(?:[A-Z][a-z]+|\d+(?::\d+)?)\b")
_NOT_FACTS = {"Person1", "Person2", "They", "The", "He", "She", "His", "Her", "It", "A", "An", "On", "At", "In"}


def facts(text: str) -> set[str]:
    """The checkable content of a summary: capitalized words (names, places, days) and numbers (times, prices)."""
    return {w for w in _FACT.findall(text) if w not in _NOT_FACTS}


def fact_recall(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean fraction of each reference's facts (see `facts`) that the prediction also states.

    ROUGE rewards the shared wording of a summary template; this asks only whether the names, days,
    places and numbers that had to be read from the input came out right.
    """
    _check_pairs(predictions, references, "fact_recall")
    scores = [len(facts(p) & facts(r)) / len(facts(r)) for p, r in zip(predictions, references, strict=True)
              if facts(r)]
    return sum(scores) / len(scores) if scores else math.nan


def fact_recall_by_kind(predictions: Sequence[str], references: Sequence[str],
                        kind_of: Callable[[str], str]) -> dict[str, float]:
    """Fact recall per kind of fact (e.g. names, days, places, numbers): for each kind, the share of all the
    references' facts of that kind that their predictions also state (pooled over the pairs).

    `kind_of(word)` names the kind of one fact; a kind no reference has is left out.
    """
    _check_pairs(predictions, references, "fact_recall_by_kind")
    hits: Counter = Counter()
    totals: Counter = Counter()
    for p, r in zip(predictions, references, strict=True):
        stated = facts(p)
        for f in facts(r):
            totals[kind_of(f)] += 1
            hits[kind_of(f)] += f in stated
    return {k: hits[k] / totals[k] for k in sorted(totals)}
