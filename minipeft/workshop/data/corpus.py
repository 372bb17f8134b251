"""The pretraining corpus: a seeded mix of stories, dialogues, facts, descriptions, reviews and news.

Dialogues come without prompts or summaries, passages without questions, reviews without labels: the
corpus teaches the language the tasks are written in, never the tasks themselves.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from minipeft.workshop.data import stories
from minipeft.workshop.data import vocab as V
from minipeft.workshop.data.dialogues import dialogue_example
from minipeft.workshop.data.passages import person_passage, town_passage
from minipeft.workshop.data.reviews import review_text

MIN_WORDS, MAX_WORDS = 40, 150

# Words worth writing down from a conversation: names, places, days, firms, things, times and prices.
_FACT_WORDS = sorted({w for lst in (V.FEMALE_NAMES, V.MALE_NAMES, V.SURNAMES, V.MEETING_PLACES, V.WORKPLACES,
                                    V.CITIES, V.DAYS, V.RESTAURANTS, V.COMPANIES, V.FOODS, V.OBJECTS, V.ITEMS,
                                    V.STREETS, V.LANDMARKS) for w in lst if isinstance(w, str)}, key=len, reverse=True)
_FULL_NAME = (r"(?:" + "|".join(map(re.escape, V.FEMALE_NAMES + V.MALE_NAMES)) + r") (?:"
              + "|".join(map(re.escape, V.SURNAMES)) + r")")
_FACT_RE = re.compile(r"\b(" + _FULL_NAME + "|" + "|".join(map(re.escape, _FACT_WORDS))
                      + r"|\d{1,2}(?::\d{2})? ?[ap]m|\d+ dollars)\b")


def dialogue_notes(rng: random.Random) -> str:
    """A conversation followed by someone's jotted notes of its details, copied in order of mention.

    Real text repeats what was said earlier (minutes, messages, diaries); these documents give the
    base model that habit of copying names, places and times from earlier in the context, a skill
    the summarization task needs. They are notes (a list of words), never a summary sentence.
    """
    dialogue = dialogue_example(rng)["dialogue"]
    facts = list(dict.fromkeys(_FACT_RE.findall(dialogue)))
    header = rng.choice(["Notes:", "Key details:", "To remember:", "Written down:", "Details:"])
    return f"{dialogue}\n\n{header} {', '.join(facts)}." if facts else dialogue

_LIST_HEADS = [("Guest list:", "Checked in:"), ("Shopping list:", "Bought:"), ("Packing list:", "Packed:"),
               ("Order:", "Delivered:"), ("Agenda:", "Minutes, in order:"), ("Names to call:", "Called:")]


def copied_list(rng: random.Random) -> str:
    """A list, then the same list written again (attendance, receipts): copying from context pays off.

    The items are drawn at random, so the second copy can only be predicted by looking back at the
    first -- the same skill a summary needs to repeat the names and times of its dialogue.
    """
    pool = rng.choice([[f"{p.first} {p.last}" for p in V.people(rng, 10)], list(V.FOODS), list(V.OBJECTS),
                       list(V.MEETING_PLACES) + list(V.RESTAURANTS), list(V.COMPANIES) + list(V.CITIES)])
    items = rng.sample([w for w in pool if isinstance(w, str)], k=min(len(pool), rng.randint(4, 9)))
    head, again = rng.choice(_LIST_HEADS)
    return f"{head} {', '.join(items)}.\n{again} {', '.join(items)}."


# kind -> (weight, piece writer, separator between pieces of one document)
KINDS: dict[str, tuple[float, Callable[[random.Random], str], str]] = {
    "dialogue": (0.14, lambda r: dialogue_example(r)["dialogue"], "\n\n"),
    "dialogue_notes": (0.10, dialogue_notes, "\n\n"),
    "lists": (0.10, copied_list, "\n\n"),
    "story": (0.14, lambda r: " ".join(stories.story(r)), "\n\n"),
    "people": (0.12, lambda r: person_passage(r)[0], " "),
    "town": (0.08, lambda r: town_passage(r)[0], "\n\n"),
    "review": (0.10, lambda r: review_text(r, r.random() < 0.5), "\n"),
    "description": (0.08, lambda r: " ".join(stories.description(r)), "\n\n"),
    "animal": (0.08, lambda r: " ".join(stories.animal_facts(r)), "\n\n"),
    "news": (0.06, lambda r: " ".join(stories.news(r)), "\n\n"),
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


def make_corpus(n_docs: int, seed: int = 0, weights: dict[str, float] | None = None) -> list[str]:
    """n_docs pretraining documents of 40-150 words each, deterministic given seed.

    weights: {kind: weight} overriding KINDS' mix for the kinds it names (e.g. more copying documents).
    """
    unknown = sorted(set(weights or {}) - set(KINDS))
    if unknown:
        raise ValueError(f"make_corpus: unknown document kinds {unknown}; kinds are {sorted(KINDS)}")
    rng = random.Random(f"corpus:{seed}")
    names = list(KINDS)
    weights = [(weights or {}).get(k, KINDS[k][0]) for k in names]
    return [make_document(rng, rng.choices(names, weights)[0]) for _ in range(n_docs)]
