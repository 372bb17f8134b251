"""What a fine-tune makes a real model forget: general-knowledge questions it answered, and English text it read.

knowledge.jsonl holds short questions ({"question", "answers", "kind"}) that SmolLM2-135M-Instruct answers
correctly zero-shot (knowledge.meta.json says how many of how many candidates, measured how); english.txt is
public-domain English prose (english.meta.json names it). After a fine-tune, knowledge_score with the adapter
active says what share is still answered, and text_perplexity how well the model still reads plain English.

Scoring rule (is_correct): the reply and each accepted answer are normalized (accents dropped, lowercase,
"1,000" -> "1000", every other non-alphanumeric character a space, spaces collapsed) and compared as word
sequences. How depends on the kind:
- "instruction" (the question asks for only some text): the whole reply must equal an answer;
- "yesno": the reply must start with the answer ("Yes, the Sun is a star." is yes);
- every other kind: the answer must occur somewhere in the reply as whole words ("The capital of France is
  Paris." holds "paris"; "Parisian" does not), but not right after a negation: "not Paris", "no, Paris ..." and
  "isn't Paris" do not count. The questions never contain their answers (a test checks), so echoing a question
  scores nothing. A reply that hedges, naming a wrong answer beside the right one, still counts; the stored
  replies (knowledge.meta.json) let a reader see that none of the kept ones does.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from pathlib import Path

import numpy as np

from minipeft.autograd import no_grad
from minipeft.generate import context_left
from minipeft.loss import IGNORE_INDEX, causal_lm_loss
from minipeft.workshop.chat import chat_reply

DATA = Path(__file__).parent
KNOWLEDGE_FILE = DATA / "knowledge.jsonl"            # the kept questions
CANDIDATES_FILE = DATA / "knowledge_candidates.jsonl"  # every question written, answered right or not
ENGLISH_FILE = DATA / "english.txt"
KINDS = ("capital", "arithmetic", "unit", "science", "fact", "language", "instruction", "yesno")
NEGATIONS = ("not", "no", "never", "t")                # "t": the end of "isn't", "doesn't" once normalized


def normalize(text: str) -> str:
    """Accents dropped, lowercase, digit-grouping commas removed, other non-alphanumerics as single spaces."""
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text).split())


def is_correct(reply: str, answers: list[str], kind: str) -> bool:
    """Whether `reply` gives one of `answers` under the rule of `kind` (see the module docstring)."""
    words = normalize(reply).split()
    for answer in answers:
        a = normalize(answer).split()
        if not a:
            continue
        if kind == "instruction":
            hit = words == a
        elif kind == "yesno":
            hit = words[:len(a)] == a
        else:
            hit = any(words[i:i + len(a)] == a and (i == 0 or words[i - 1] not in NEGATIONS)
                      for i in range(len(words) - len(a) + 1))
        if hit:
            return True
    return False


def load_knowledge(path: str | Path = KNOWLEDGE_FILE) -> list[dict]:
    """The rows of a knowledge JSONL file, each checked: a non-empty question, a non-empty list of non-empty
    answer strings, a kind from KINDS. Errors name the file, the line and the field."""
    path = Path(path)
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e}); each line is one object") from None
        if not isinstance(row, dict) or set(row) != {"question", "answers", "kind"}:
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{where}: a row must be an object with exactly the fields question, answers, kind; "
                             f"got {got}")
        if not isinstance(row["question"], str) or not row["question"].strip():
            raise ValueError(f"{where}: field 'question' must be a non-empty string, got {row['question']!r}")
        answers = row["answers"]
        if (not isinstance(answers, list) or not answers
                or not all(isinstance(a, str) and normalize(a) for a in answers)):
            raise ValueError(f"{where}: field 'answers' must be a non-empty list of strings with a letter or digit "
                             f"each, got {answers!r}")
        if row["kind"] not in KINDS:
            raise ValueError(f"{where}: field 'kind' is {row['kind']!r}; use one of {', '.join(KINDS)}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows; a knowledge file holds one JSON object per line")
    return rows


def knowledge_score(model, tok, items: list[dict], max_new_tokens: int = 16) -> dict:
    """Greedy replies to each question, asked as a user turn through the chat template, scored by is_correct.

    Returns {"accuracy": share correct, "by_kind": {kind: share}, "correct": [bool], "replies": [str]}. Works
    with a PeftModel as with a bare model: the replies are the model's with its active adapter.
    """
    replies = [chat_reply(model, tok, [{"role": "user", "content": it["question"]}], max_new_tokens=max_new_tokens)
               for it in items]
    correct = [is_correct(r, it["answers"], it["kind"]) for r, it in zip(replies, items, strict=True)]
    by_kind: dict[str, list[bool]] = {}
    for ok, it in zip(correct, items, strict=True):
        by_kind.setdefault(it["kind"], []).append(ok)
    return {"accuracy": sum(correct) / max(len(correct), 1),
            "by_kind": {k: sum(v) / len(v) for k, v in by_kind.items()}, "correct": correct, "replies": replies}


def text_perplexity(model, tok, text: str, max_len: int | None = None, stride: int | None = None) -> float:
    """exp(mean next-token NLL) of `text`, teacher-forced, in windows of at most max_len tokens (default: the
    context the model leaves, at most 512).

    Windows start `stride` tokens apart (default max_len // 2); each scores only the tokens that no earlier window
    scored, so every token but the first is scored exactly once, with at least max_len - stride tokens of context
    once the first window is past (Hugging Face's "perplexity of fixed-length models" recipe).
    """
    ctx = context_left(model)
    max_len = min(512, ctx) if max_len is None else max_len
    stride = max(1, max_len // 2) if stride is None else stride
    for name, v in (("max_len", max_len), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"text_perplexity: {name} must be an int >= 1, got {v!r}")
    if max_len > ctx:
        raise ValueError(f"text_perplexity: max_len={max_len} is longer than the {ctx} positions the model takes; "
                         f"pass max_len <= {ctx}")
    if stride > max_len:
        raise ValueError(f"text_perplexity: stride={stride} > max_len={max_len} would skip tokens; pass "
                         "stride <= max_len")
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    if ids.size < 2:
        raise ValueError(f"text_perplexity: the text encodes to {ids.size} token(s); it needs at least 2 (one to "
                         "predict from, one to predict)")
    total, count, scored = 0.0, 0, 0          # scored: targets ids[1 .. scored] are done
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for start in range(0, ids.size - 1, stride):
                end = min(start + max_len, ids.size - 1)           # inputs ids[start:end], targets ids[start+1:end+1]
                targets = ids[start + 1:end + 1].copy()
                targets[:max(scored - start, 0)] = IGNORE_INDEX   # already scored by an earlier window
                n = int((targets != IGNORE_INDEX).sum())
                loss = causal_lm_loss(model, ids[None, start:end], targets[None])
                total += float(loss.data) * n
                count, scored = count + n, end
                if end == ids.size - 1:
                    break
    finally:
        model.train(was_training)
    return math.exp(total / count)
