"""Short factual passages about people and towns, and extractive questions about them.

A passage describes two people (or a town and its neighbour) with distinct facts, so a question names
one entity and its answer is a 1-3 word span that must be looked up, not guessed.
"""

from __future__ import annotations

import random

from minipeft.workshop.data import vocab as V

TOWN_HEADS = (
    "Ash Bel Cal Dun El Fair Glen Hart Ivy Kings Lang Mar North Oak Pen Red Stan Thorn West Wil Bright "
    "Clear Stone Green Amber Brook Elder"
).split()
TOWN_TAILS = "ford ton bury field wick mouth dale port by stead haven brook ridge well moor".split()
RIVERS = "Silver Amber Kestrel Willow Otter Black Swift Lune Tamar Elm Heron Crane Mill Rowan Alder".split()
FAMOUS = (
    "lighthouse", "cheese market", "old castle", "flower festival", "stone bridge", "wooden boats",
    "glass museum", "apple orchards", "jazz festival", "hot springs", "clock tower", "chocolate factory",
    "marble quarry", "horse races", "paper mills", "salt mines", "botanical garden", "film festival",
    "red cliffs", "windmills", "street markets", "old library",
)
INDUSTRIES = (
    "fishing", "farming", "tourism", "mining", "textiles", "shipbuilding", "wine making", "forestry",
    "pottery", "printing", "dairy farming", "trade",
)
REGIONS = ("north", "south", "east", "west", "far north", "southwest", "northeast", "center")

Fact = tuple[str, list[tuple[str, str]]]  # (sentence, [(question, answer), ...])


def town_name(rng: random.Random) -> str:
    """A made-up town name like 'Ashford' or 'Glenmouth'."""
    return rng.choice(TOWN_HEADS) + rng.choice(TOWN_TAILS)


def _person_facts(rng: random.Random, p: V.Person, s: dict) -> list[Fact]:
    """Every fact about one person, each with the questions it answers."""
    he, his, f = V.cap(p.he), V.cap(p.his), p.first
    act3, act = s["act"]
    facts: list[Fact] = [
        (f"{he} is {s['age']} years old.", [(f"How old is {f}?", str(s["age"]))]),
        (f"{he} works at the {s['work']}.", [(f"Where does {f} work?", f"the {s['work']}")]),
        (f"{his} favorite food is {s['food']}.", [(f"What is {f}'s favorite food?", s["food"])]),
        (f"{he} has {V.an(s['pet'])} called {s['petname']}.",
         [(f"What is the name of {f}'s {s['pet']}?", s["petname"]), (f"What pet does {f} have?", s["pet"])]),
        (f"{his} {s['rel']}, {s['relname']}, lives in {s['city2']}.",
         [(f"Who is {f}'s {s['rel']}?", s["relname"]), (f"Where does {f}'s {s['rel']} live?", s["city2"])]),
    ]
    qs = [(f"On which day does {f} {act}?", s["day"])]
    if len(act3.split()) <= 3:
        qs.append((f"What does {f} do every {s['day']}?", act3))
    facts.append((f"Every {s['day']}, {p.he} {act3}.", qs))
    return facts


def person_passage(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    """A passage about two people, with every (question, answer) pair it supports."""
    a, b = V.people(rng, 2)
    cols = {
        "job": V.distinct(rng, V.JOBS, 2), "city": V.distinct(rng, V.CITIES, 4),
        "age": V.distinct(rng, range(19, 80), 2), "work": V.distinct(rng, V.WORKPLACES, 2),
        "food": V.distinct(rng, V.FOODS, 2), "pet": V.distinct(rng, V.PETS, 2),
        "petname": V.distinct(rng, V.PET_NAMES, 2), "day": V.distinct(rng, V.DAYS, 2),
        "act": V.distinct(rng, V.ACTIVITIES, 2),
        "relname": [x.first for x in V.people(rng, 4) if x.first not in (a.first, b.first)][:2],
    }
    sentences, qa = [], []
    for i, p in enumerate((a, b)):
        s = {k: v[i] for k, v in cols.items()}
        s["city2"] = cols["city"][2 + i]
        s["rel"] = rng.choice(V.RELATIVES_F if s["relname"] in V.FEMALE_NAMES else V.RELATIVES_M)
        intro = (f"{p.full} is {V.an(s['job'])} who lives in {s['city']}.",
                 [(f"What is {p.first}'s job?", s["job"]), (f"Where does {p.first} live?", s["city"])])
        facts = rng.sample(_person_facts(rng, p, s), rng.randint(2, 4))
        for sent, qs in [intro, *facts]:
            sentences.append(sent)
            qa += qs
    return " ".join(sentences), qa


def town_passage(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    """An encyclopedia-style passage about a town and a nearby village."""
    t1, t2 = town_name(rng), town_name(rng)
    while t2 == t1:
        t2 = town_name(rng)
    river = rng.choice(RIVERS)
    y1, y2 = V.distinct(rng, range(1100, 1950), 2)
    f1, f2 = V.distinct(rng, FAMOUS, 2)
    ind1, ind2 = V.distinct(rng, INDUSTRIES, 2)
    pop = f"{rng.randint(2, 95)},{rng.choice(['000', '500'])}"
    region = rng.choice(REGIONS)
    facts: list[Fact] = [
        (f"The town was founded in {y1}.", [(f"When was {t1} founded?", str(y1))]),
        (f"It is famous for its {f1}.", [(f"What is {t1} famous for?", f1)]),
        (f"About {pop} people live there.", [(f"How many people live in {t1}?", pop)]),
        (f"Most people in {t1} work in {ind1}.", [(f"What do most people in {t1} work in?", ind1)]),
    ]
    rng.shuffle(facts)
    facts.insert(0, (f"{t1} is a town in the {region} of the country, on the {river} River.",
                     [(f"Which river is {t1} on?", f"the {river} River"),
                      (f"In which part of the country is {t1}?", f"the {region}")]))
    near = [(f"{t2}, a village near {t1}, was founded in {y2}.", [(f"When was {t2} founded?", str(y2))]),
            (f"{t2} is known for its {f2}.", [(f"What is {t2} known for?", f2)]),
            (f"In {t2} most people work in {ind2}.", [(f"What do most people in {t2} work in?", ind2)])]
    facts += near[:1] + rng.sample(near[1:], rng.randint(0, 2))
    return " ".join(s for s, _ in facts), [q for _, qs in facts for q in qs]


def qa_example(rng: random.Random) -> dict:
    """One {"passage", "question", "answer"} example; the answer is a span of the passage."""
    passage, qa = (person_passage if rng.random() < 0.65 else town_passage)(rng)
    question, answer = rng.choice(qa)
    assert answer in passage and 1 <= len(answer.split()) <= 3, (answer, passage)
    return {"passage": passage, "question": question, "answer": answer}


def make_qa(n: int, seed: int = 0) -> list[dict]:
    """n extractive QA examples {"passage", "question", "answer"}, deterministic given seed."""
    rng = random.Random(f"qa:{seed}")
    return [qa_example(rng) for _ in range(n)]
