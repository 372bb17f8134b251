"""Seeded, offline data: a pretraining corpus and three fine-tuning tasks, deterministic given the seed.

Nothing is downloaded. Every generator draws from its own `random.Random` (never the global one), so
the same seed always gives the same text, on any machine.

Pretraining corpus -- `make_corpus(n_docs, seed)`: documents of 40-150 words mixing short stories,
`#Person1#: ...` / `#Person2#: ...` dialogues, facts about people and towns, animal facts,
descriptions, product and restaurant reviews, and local news. It uses the tasks' vocabulary (about
100 first names, 60 places, 40 cities, days, times, objects, foods, ...) but never a task prompt, a
summary, a question or a label.

Tasks (`TASKS[name]`; `Task.to_prompt_completion(example)` builds the strings a model is tuned on):

1. "dialogsum" -- dialogue summarization in DialogSum's shape `{"dialogue", "summary"}`, scored with
   ROUGE. Eleven scenarios (planning a meeting, booking a table, a doctor's appointment, buying a
   ticket, returning an item, a job interview, borrowing something, asking directions, buying a
   present, an invitation, taking a phone message), 4-8 turns, <= 110 words. The summary
   (<= 30 words) states the final decision with names, places, days, times, items and prices that
   appear only in the dialogue. Prompt, then completion (after the space following "Summary:")::

       Summarize the following conversation.

       {dialogue}

       Summary: {summary}

2. "qa" -- extractive question answering `{"passage", "question", "answer"}`, scored with exact match
   (SQuAD normalization). A passage describes two people or a town and a village; the answer is a
   1-3 word span of the passage (where someone works, lives, their age, pet, relative, hobby day, a
   town's river, founding year, population, ...)::

       Answer the question using the passage.

       Passage: {passage}

       Question: {question}

       Answer: {answer}

3. "sentiment" -- review classification `{"text", "label"}`, label "positive" or "negative", scored
   with accuracy. The label is the polarity of most opinion sentences; negation flips adjectives::

       Classify the sentiment of the review.

       Review: {text}

       Sentiment: {label}

Blank lines above are "\\n\\n" in the template; each prompt ends with one space after its colon.

`make_splits(task, n_train, n_val, n_test, seed)` returns disjoint splits: no prompt occurs in two
splits. The test split is drawn first from its own stream, so it does not change when n_train does.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from minipeft.workshop.data.corpus import make_corpus
from minipeft.workshop.data.dialogues import dialogue_example, make_dialogsum
from minipeft.workshop.data.passages import make_qa, qa_example
from minipeft.workshop.data.reviews import make_sentiment, review_text

DATA_VERSION = 3  # bump whenever generated text changes: cached base models are keyed on it

__all__ = ["DATA_VERSION", "TASKS", "Task", "make_corpus", "make_dialogsum", "make_qa", "make_sentiment", "make_splits"]


@dataclass(frozen=True)
class Task:
    """A fine-tuning task: its data, its prompt format and how it is scored."""

    name: str  # "dialogsum", "qa" or "sentiment"
    prompt_template: str  # str.format template over the input fields; the completion follows it
    input_fields: tuple[str, ...]  # example fields the prompt is built from
    completion_field: str  # example field the model must generate
    metric: str  # "rouge", "exact_match" or "accuracy" (see minipeft.workshop.metrics)
    make: Callable[[int, int], list[dict]]  # make(n, seed) -> n examples
    draw: Callable[[random.Random], dict]  # one random example from an rng
    labels: tuple[str, ...] = ()  # closed set of completions of a classification task; kept balanced

    def to_prompt_completion(self, example: dict) -> tuple[str, str]:
        """(prompt, completion) strings for one example; the model learns completion given prompt."""
        fields = (*self.input_fields, self.completion_field)
        if not isinstance(example, dict):   # e.g. one row passed where a list of rows belongs
            raise TypeError(f"{self.name} example must be a dict with fields {list(fields)}, got "
                            f"{type(example).__name__} {str(example)[:40]!r}; pass a list of such dicts")
        missing = [f for f in fields if f not in example]
        if missing:
            raise ValueError(f"{self.name} example lacks field(s) {missing}; it has {sorted(example)}")
        not_text = {f: type(example[f]).__name__ for f in fields if not isinstance(example[f], str)}
        if not_text:
            raise TypeError(f"{self.name} example fields must be strings, got {not_text}; convert them with str() "
                            "(or fix the data)")
        prompt = self.prompt_template.format(**{f: example[f] for f in self.input_fields})
        return prompt, example[self.completion_field]


def _draw_dialogue(rng: random.Random) -> dict:
    ex = dialogue_example(rng)
    return {"dialogue": ex["dialogue"], "summary": ex["summary"]}


def _draw_review(rng: random.Random) -> dict:
    positive = rng.random() < 0.5
    return {"text": review_text(rng, positive), "label": "positive" if positive else "negative"}


TASKS: dict[str, Task] = {
    "dialogsum": Task(
        "dialogsum", "Summarize the following conversation.\n\n{dialogue}\n\nSummary: ",
        ("dialogue",), "summary", "rouge", make_dialogsum, _draw_dialogue),
    "qa": Task(
        "qa",
        "Answer the question using the passage.\n\nPassage: {passage}\n\nQuestion: {question}\n\nAnswer: ",
        ("passage", "question"), "answer", "exact_match", make_qa, qa_example),
    "sentiment": Task(
        "sentiment", "Classify the sentiment of the review.\n\nReview: {text}\n\nSentiment: ",
        ("text",), "label", "accuracy", make_sentiment, _draw_review, labels=("positive", "negative")),
}


def get_task(task: str | Task) -> Task:
    """The Task for a name (or the Task itself); unknown names raise with the known ones."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {sorted(TASKS)}")
    return TASKS[task]


def _collect(task: Task, rng: random.Random, n: int, seen: set[str]) -> list[dict]:
    """n examples whose prompts are not in `seen` (and adds them), balanced over task.labels if any."""
    quota: Counter | None = None
    if task.labels:
        values = rng.sample(task.labels, len(task.labels))  # which label gets the odd example is random
        quota = Counter({v: n // len(values) + (i < n % len(values)) for i, v in enumerate(values)})
    out: list[dict] = []
    for _ in range(100 * n + 1000):
        if len(out) == n:
            return out
        ex = task.draw(rng)
        prompt = task.to_prompt_completion(ex)[0]
        label = ex[task.completion_field]
        if prompt in seen or (quota is not None and quota[label] == 0):
            continue
        if quota is not None:
            quota[label] -= 1
        seen.add(prompt)
        out.append(ex)
    if len(out) == n:
        return out
    raise RuntimeError(f"could only draw {len(out)} distinct {task.name} examples out of {n} requested")


def make_splits(task: str, n_train: int, n_val: int, n_test: int, seed: int = 0) -> dict[str, list[dict]]:
    """Disjoint {"train", "val", "test"} splits of a task; no prompt appears in two splits."""
    t = get_task(task)
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    seen: set[str] = set()
    splits = {split: _collect(t, random.Random(f"{t.name}:{seed}:{split}"), n, seen)
              for split, n in (("test", n_test), ("val", n_val), ("train", n_train))}
    prompts = {s: {t.to_prompt_completion(ex)[0] for ex in rows} for s, rows in splits.items()}
    assert not (prompts["train"] & prompts["val"] or prompts["train"] & prompts["test"]
                or prompts["val"] & prompts["test"]), "splits overlap"
    return {"train": splits["train"], "val": splits["val"], "test": splits["test"]}
