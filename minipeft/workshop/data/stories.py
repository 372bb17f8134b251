"""Narrative prose for the pretraining corpus: short stories, descriptions, animal facts and news items.

Every writer takes a `random.Random` and returns a list of sentences about the same names, places,
times and objects that the tasks use.
"""

from __future__ import annotations

import random

from minipeft.workshop.data import vocab as V

ANIMALS = (  # (animal, home, food, fact)
    ("red fox", "forests and fields", "mice, rabbits and berries", "hunts mostly at night"),
    ("honey bee", "hives in trees and gardens", "nectar and pollen", "lives in colonies of thousands"),
    ("brown bear", "mountain forests", "fish, roots and berries", "sleeps through the winter"),
    ("gray wolf", "forests and open plains", "deer and smaller animals", "lives and hunts in packs"),
    ("sea turtle", "warm oceans", "jellyfish and sea grass", "returns to the same beach to lay eggs"),
    ("barn owl", "old barns and hollow trees", "mice and voles", "can hear a mouse moving under snow"),
    ("river otter", "rivers and lakes", "fish and frogs", "holds its breath for several minutes"),
    ("camel", "deserts", "dry plants and grass", "can go for days without water"),
    ("penguin", "cold southern coasts", "fish and krill", "cannot fly but swims very fast"),
    ("elephant", "grasslands and forests", "grass, leaves and fruit", "remembers places for many years"),
    ("hedgehog", "gardens and hedges", "insects and worms", "rolls into a ball when it is afraid"),
    ("dolphin", "seas and oceans", "fish and squid", "talks to other dolphins with clicks"),
    ("squirrel", "parks and woods", "nuts and seeds", "hides food for the winter"),
    ("swallow", "farms and villages", "flying insects", "flies south every autumn"),
    ("goat", "hills and mountains", "grass and leaves", "is an excellent climber"),
    ("frog", "ponds and wet meadows", "insects and snails", "begins its life as a tadpole"),
)


def _day_out(rng: random.Random) -> list[str]:
    a, b = V.people(rng, 2)
    place, shop = rng.choice(V.MEETING_PLACES), rng.choice(V.WORKPLACES)
    time, day, food = V.clock(rng, 9, 18), rng.choice(V.DAYS), rng.choice(V.FOODS)
    return [
        rng.choice([f"It was a {rng.choice(V.WEATHER)} {day} in {rng.choice(V.CITIES)}.",
                    f"On {day} morning, {a.first} woke up early."]),
        f"{a.first} had promised to meet {b.first} at the {place} at {time}.",
        rng.choice([f"On the way, {a.he} stopped at the {shop}.", f"{V.cap(a.he)} walked past the {shop}."]),
        f"{b.first} was already waiting, holding a bag of {food}.",
        rng.choice(["They talked about their plans for the summer.", f"They talked about {b.his} new job.",
                    f"They talked about the {rng.choice(V.SUBJECTS)} exam."]),
        rng.choice([f"Later they decided to {rng.choice(V.ACTIVITIES)[1]} on {rng.choice(V.DAYS)}.",
                    "In the end they walked home together.", f"{a.first} went home tired but happy."]),
    ]


def _lost_object(rng: random.Random) -> list[str]:
    a, b = V.people(rng, 2)
    obj, place, place2 = rng.choice(V.OBJECTS), rng.choice(V.MEETING_PLACES), rng.choice(V.WORKPLACES)
    return [
        f"{a.full} could not find {a.his} {obj}.",
        f"{V.cap(a.he)} had used it on {rng.choice(V.DAYS)} to {V.OBJECT_USES[obj]}.",
        f"{V.cap(a.he)} looked under the bed, in the kitchen and in the car.",
        f"Then {a.he} called {a.his} friend {b.first}.",
        f"\"Did you leave it at the {place}?\" {b.first} asked.",
        rng.choice([f"{a.first} went back to the {place}, and the {obj} was there.",
                    f"The {obj} was at the {place2}, where a kind {rng.choice(V.JOBS)} had kept it."]),
        rng.choice([f"{a.first} thanked {b.first} with a box of {rng.choice(V.FOODS)}.",
                    f"Since that day, {a.first} always checks {a.his} bag twice."]),
    ]


def _first_day(rng: random.Random) -> list[str]:
    a, boss = V.people(rng, 2)
    job, company, time = rng.choice(V.JOBS), rng.choice(V.COMPANIES), V.clock(rng, 7, 10, halves=False)
    return [
        f"{a.first} started a new job as {V.an(job)} at {company} on {rng.choice(V.DAYS[:5])}.",
        f"{V.cap(a.he)} arrived at {time}, a little nervous.",
        f"{boss.full}, the manager, showed {a.him} the office and the {rng.choice(['kitchen', 'garden'])}.",
        rng.choice([f"The others were friendly, and one of them offered {a.him} some {rng.choice(V.FOODS)}.",
                    "Nobody talked much, but everyone smiled."]),
        rng.choice([f"By the evening, {a.he} had learned everyone's name.",
                    f"At five {a.he} took the bus home along {rng.choice(V.STREETS)}."]),
        f"{V.cap(a.he)} told {a.his} {rng.choice(V.RELATIVES_F + V.RELATIVES_M)} it had been a good day.",
    ]


def _cooking(rng: random.Random) -> list[str]:
    a, b, c = V.people(rng, 3)
    f1, f2, f3 = V.distinct(rng, V.FOODS, 3)
    return [
        f"{a.first} invited {b.first} and {c.first} for dinner on {rng.choice(V.DAYS)}.",
        f"{V.cap(a.he)} decided to cook {f1}, because it was {b.first}'s favorite.",
        f"In the afternoon {a.he} went to the market to buy everything {a.he} needed.",
        rng.choice([f"The {f1} took longer than expected.", f"{V.cap(a.he)} almost burned the {f1}."]),
        f"{c.first} brought {f2}, and {b.first} brought {f3}.",
        rng.choice(["They ate, laughed and played cards until midnight.",
                    f"Everyone said the {f1} was the best they had ever tasted."]),
    ]


def _trip(rng: random.Random) -> list[str]:
    a = V.person(rng)
    c1, c2 = V.distinct(rng, V.CITIES, 2)
    mode, time = rng.choice(["train", "bus", "plane"]), V.clock(rng, 6, 22)
    return [
        f"Last {rng.choice(V.MONTHS)}, {a.full} traveled from {c1} to {c2} by {mode}.",
        f"The {mode} left at {time}, and {a.he} had a window seat.",
        f"{V.cap(a.he)} read a book about {rng.choice(V.SUBJECTS)} and ate some {rng.choice(V.FOODS)}.",
        f"In {c2}, {a.he} stayed at a small hotel on {rng.choice(V.STREETS)}.",
        rng.choice([f"{V.cap(a.he)} visited the {rng.choice(V.WORKPLACES)} where {a.his} father had worked.",
                    f"Every morning {a.he} had coffee at the {rng.choice(V.MEETING_PLACES)}."]),
        f"After {V.number_word(rng.randint(2, 9))} days {a.he} went home with many photos.",
    ]


def _lesson(rng: random.Random) -> list[str]:
    a, b = V.people(rng, 2)
    subject, product = rng.choice(V.SUBJECTS), rng.choice(V.ITEMS)
    return [
        f"In the {subject} class on {rng.choice(V.DAYS[:5])}, the students read a short passage about "
        f"{rng.choice(V.CITIES)}.",
        f"The teacher, {b.title}, asked a question about it, and {a.first} gave the right answer.",
        rng.choice(["Then they listened to a recorded conversation between two friends.",
                    "Then everyone had to summarize the text in one sentence."]),
        f"{a.first} wrote a short summary, and {b.title} said it was clear and correct.",
        rng.choice([f"After class, {a.he} read an online review of {V.an(product)} that {a.he} wanted to buy.",
                    "For homework, they had to classify the opinions in ten reviews as positive or negative."]),
        rng.choice(["The sentiment of most reviews was positive.", "Most of the opinions were negative.",
                    f"{V.cap(a.he)} decided to follow the advice of the teacher."]),
    ]


def story(rng: random.Random) -> list[str]:
    """A short story with a beginning, a middle and an end."""
    return rng.choice([_day_out, _lost_object, _first_day, _cooking, _trip, _lesson])(rng)


def description(rng: random.Random) -> list[str]:
    """A description of a room, a shop or a street."""
    a, color, obj = V.person(rng), rng.choice(V.COLORS), rng.choice(V.OBJECTS)
    if rng.random() < 0.5:
        return [
            f"{a.first}'s kitchen is small but bright.",
            f"There is a round {color} table near the window and {V.an(rng.choice(V.ITEMS))} on the shelf.",
            f"In the corner there is an old {obj}.",
            f"On most mornings the room smells of {rng.choice(V.FOODS)}.",
            f"From the window you can see {rng.choice(V.STREETS)} and the {rng.choice(V.WORKPLACES)}.",
        ]
    shop = rng.choice(V.WORKPLACES)
    return [
        f"The {shop} on {rng.choice(V.STREETS)} opens at {V.clock(rng, 7, 10, halves=False)} every day "
        f"except {rng.choice(V.DAYS)}.",
        f"It has {V.an(color)} door and a large window.",
        f"The owner, {a.full}, has worked there for {V.number_word(rng.randint(2, 20))} years.",
        f"Next to it there is {V.an(rng.choice(V.MEETING_PLACES))} where people meet after work.",
        f"On {rng.choice(V.DAYS)} evenings it is always busy.",
    ]


def animal_facts(rng: random.Random) -> list[str]:
    """Encyclopedia-style facts about one animal."""
    name, home, food, fact = rng.choice(ANIMALS)
    return [
        f"The {name} lives in {home}.", f"It eats {food}.", f"The {name} {fact}.",
        rng.choice([f"Many people in {rng.choice(V.CITIES)} have seen one in the wild.",
                    f"Scientists at the {rng.choice(V.WORKPLACES)} study how the {name} finds food.",
                    f"Children learn about the {name} at school."]),
    ]


def news(rng: random.Random) -> list[str]:
    """A local news item that reports decisions, times and places in the third person."""
    a, b = V.people(rng, 2)
    place, day, time = rng.choice(V.WORKPLACES), rng.choice(V.DAYS), V.clock(rng, 9, 20)
    return rng.choice([
        [f"The {place} on {rng.choice(V.STREETS)} will close early on {day}.",
         f"{a.full}, who runs it, said the staff will have a party at {time}.",
         f"Customers can still buy {rng.choice(V.FOODS)} until noon."],
        [f"{a.full} and {b.full} won the {rng.choice(V.CITIES)} chess cup on {day}.",
         f"They decided to give the prize money to the {place}.",
         f"The next game is at {time} on {rng.choice(V.DAYS)} at the {rng.choice(V.MEETING_PLACES)}."],
        [f"{a.full} booked a table for {V.number_word(rng.randint(2, 9))} at {rng.choice(V.RESTAURANTS)} "
         f"to celebrate {a.his} new job as {V.an(rng.choice(V.JOBS))}.",
         f"{b.first} made an appointment with Dr. {rng.choice(V.SURNAMES)} for {rng.choice(V.SYMPTOMS)}.",
         f"Both of them will meet at the {place} at {time} on {day}."],
    ])
