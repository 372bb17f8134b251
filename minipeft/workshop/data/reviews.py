"""Short product and restaurant reviews whose sentiment follows from their words.

A review mixes opinions: its label is the polarity of the majority of its opinion sentences (at most
one sentence of the other polarity, always outnumbered). Negation flips an adjective ("not bad" is
positive), so a model must read the words, not spot one marker.
"""

from __future__ import annotations

import random

from minipeft.workshop.data import vocab as V

PRODUCTS = (
    "blender", "vacuum cleaner", "pair of headphones", "coffee maker", "backpack", "desk lamp", "kettle",
    "phone", "laptop", "camera", "rice cooker", "electric toothbrush", "hair dryer", "office chair",
    "tent", "bicycle", "watch", "pair of running shoes", "printer", "speaker", "keyboard", "toaster",
    "winter jacket", "suitcase", "tablet", "microwave", "air fryer", "fan", "mattress", "board game",
)
PRODUCT_ASPECTS = ("quality", "price", "design", "battery", "sound", "size", "material", "delivery")
FOOD_ASPECTS = ("food", "service", "staff", "atmosphere", "menu", "music", "wine list", "dessert")
POS_ADJ = (
    "excellent", "great", "wonderful", "fantastic", "superb", "perfect", "lovely", "amazing", "brilliant",
    "impressive", "solid", "pleasant", "outstanding", "good", "fine",
)
NEG_ADJ = (
    "terrible", "awful", "poor", "horrible", "disappointing", "bad", "dreadful", "useless", "weak",
    "mediocre", "annoying", "unpleasant", "cheap-looking", "frustrating", "sloppy",
)
PRODUCT_POS = (
    "It works perfectly.", "It was easy to set up.", "It feels very solid.", "It was worth every penny.",
    "The battery lasts all day.", "It arrived quickly and well packed.", "It is quiet and fast.",
    "I use it every day and love it.", "It does exactly what it promises.", "My whole family likes it.",
)
PRODUCT_NEG = (
    "It stopped working after a week.", "The battery dies in an hour.", "It feels flimsy.",
    "The instructions were useless.", "It arrived broken.", "It is far too loud.",
    "It broke on the first day.", "It overheats after ten minutes.", "Support never answered my emails.",
    "It is a waste of money.",
)
FOOD_POS = (
    "The {food} was delicious.", "The waiter was friendly and helpful.", "Our food came quickly.",
    "The portions were generous.", "The prices were fair.", "The {food} was fresh and full of flavor.",
    "The room was cozy and clean.", "The chef came out to say hello.",
)
FOOD_NEG = (
    "The {food} was cold.", "The waiter was rude.", "We waited an hour for our food.",
    "The portions were tiny.", "It was far too expensive.", "The {food} tasted stale.",
    "The tables were dirty.", "They forgot half of our order.",
)
VERDICT_POS = ("I would recommend it to anyone.", "Highly recommended.", "Five stars from me.")
VERDICT_NEG = ("I would not recommend it.", "Never again.", "One star.", "Avoid it.", "What a letdown.")
VERDICT_PRODUCT = (("I am very happy with it.", "I would buy it again."),
                   ("I want my money back.", "I regret buying it."))
VERDICT_FOOD = (("I will definitely come back.", "We had a lovely evening."),
                ("We will not go back.", "It ruined our evening."))


def _opinion(rng: random.Random, positive: bool, restaurant: bool) -> str:
    """One opinion sentence of the given polarity."""
    aspects = FOOD_ASPECTS if restaurant else PRODUCT_ASPECTS
    r = rng.random()
    if r < 0.4:
        adj = rng.choice(POS_ADJ if positive else NEG_ADJ)
        return f"The {rng.choice(aspects)} {'was' if restaurant else 'is'} {adj}."
    if r < 0.55:  # negation flips the adjective's polarity
        adj = rng.choice(NEG_ADJ[:8] if positive else POS_ADJ[:9])
        verb = "was" if restaurant else "is"
        return f"The {rng.choice(aspects)} {verb} not {adj}{' at all' if positive else ''}."
    pool = (FOOD_POS if positive else FOOD_NEG) if restaurant else (PRODUCT_POS if positive else PRODUCT_NEG)
    return rng.choice(pool).format(food=rng.choice(V.FOODS))


def review_text(rng: random.Random, positive: bool) -> str:
    """A 2-6 sentence review whose majority of opinions has the given polarity."""
    restaurant = rng.random() < 0.45
    if restaurant:
        opener = rng.choice([
            f"We had dinner at {rng.choice(V.RESTAURANTS)} on {rng.choice(V.DAYS)}.",
            f"I went to {rng.choice(V.RESTAURANTS)} with my {rng.choice(V.RELATIVES_F + V.RELATIVES_M)}.",
            f"We tried {rng.choice(V.RESTAURANTS)} for lunch last week.",
        ])
    else:
        product = rng.choice(PRODUCTS)
        when = rng.choice(["last week", "a month ago", f"in {rng.choice(V.MONTHS)}"])
        opener = rng.choice([
            f"I bought this {product} {when}.",
            f"I got this {product} as a present.", f"This is my second {product}.",
            f"I ordered the {product} online.",
        ])
    n_major = rng.randint(1, 3)
    n_minor = rng.randint(0, n_major - 1)
    opinions: list[str] = []
    for polarity, count in ((positive, n_major), (not positive, n_minor)):
        while count:
            op = _opinion(rng, polarity, restaurant)
            if op not in opinions:  # a repeated sentence reads badly
                opinions.append(op)
                count -= 1
    rng.shuffle(opinions)
    sentences = [opener, *opinions] if rng.random() < 0.8 else opinions
    if rng.random() < 0.5:
        own = (VERDICT_FOOD if restaurant else VERDICT_PRODUCT)[0 if positive else 1]
        sentences.append(rng.choice((VERDICT_POS if positive else VERDICT_NEG) + own))
    return " ".join(sentences)


def make_sentiment(n: int, seed: int = 0) -> list[dict]:
    """n reviews {"text", "label"}, labels "positive"/"negative" balanced (differ by at most one)."""
    rng = random.Random(f"sentiment:{seed}")
    labels = [i % 2 == 0 for i in range(n)]
    rng.shuffle(labels)
    return [{"text": review_text(rng, pos), "label": "positive" if pos else "negative"} for pos in labels]
