"""The pretraining corpus: a seeded mix of stories, dialogues, facts, descriptions, reviews and news.

Dialogues come without prompts or summaries, passages without questions, reviews without labels: the
corpus teaches the language the tasks are written in, never the tasks themselves.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from minipeft.data import stories
from minipeft.data.dialogues import dialogue_example
from minipeft.data.passages import person_passage, town_passage
from minipeft.data.reviews import review_text

MIN_WORDS, MAX_WORDS = 40, 150

# kind -> (weight, piece writer, separator between pieces of one document)
KINDS: dict[str, tuple[float, Callable[[random.Random], str], str]] = {
    "dialogue": (0.24, lambda r: dialogue_example(r)["dialogue"], "\n\n"),
    "story": (0.18, lambda r: " ".join(stories.story(r)), "\n\n"),
    "people": (0.12, lambda r: person_passage(r)[0], " "),
    "town": (0.08, lambda r: town_passage(r)[0], "\n\n"),
    "review": (0.12, lambda r: review_text(r, r.random() < 0.5), "\n"),
    "description": (0.08, lambda r: " ".join(stories.description(r)), "\n\n"),
    "animal": (0.08, lambda r: " ".join(stories.animal_facts(r)), "\n\n"),
    "news": (0.10, lambda r: " ".join(stories.news(r)), "\n\n"),
}


def make_document(rng: random.Random, kind: str) -> str:
    """One document of the given kind with MIN_WORDS..MAX_WORDS words."""
    _, write, sep = KINDS[kind]
    while True:
        pieces: list[str] = []
        while sum(len(p.split()) for p in pieces) < MIN_WORDS:
            pieces.append(write(rng))
        doc = sep.join(pieces)
        if len(doc.split()) <= MAX_WORDS:
            return doc


def make_corpus(n_docs: int, seed: int = 0) -> list[str]:
    """n_docs pretraining documents of 40-150 words each, deterministic given seed."""
    rng = random.Random(f"corpus:{seed}")
    names = list(KINDS)
    weights = [KINDS[k][0] for k in names]
    return [make_document(rng, rng.choices(names, weights)[0]) for _ in range(n_docs)]
