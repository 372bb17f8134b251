"""Two-person dialogues with a reference summary, in the shape of DialogSum.

Each scenario draws its slots (names, places, days, times, items, prices), may add a twist (a first
proposal is refused and a second one accepted), and writes a summary that states the final decision,
so a summary can only be produced by reading the dialogue.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from minipeft.workshop.data import vocab as V

Scenario = Callable[[random.Random], tuple[list[str], str]]
MAX_DIALOGUE_WORDS = 110
MAX_SUMMARY_WORDS = 30
P1, P2 = "#Person1#", "#Person2#"


_NAMES = frozenset(V.FEMALE_NAMES + V.MALE_NAMES + V.SURNAMES)


def fact_kind(word: str) -> str:
    """The kind of one fact of a summary (see metrics.facts): "names", "days", "numbers" (times, prices,
    counts) or "places" (restaurants, cities, firms and the other capitalized words)."""
    if word in _NAMES:
        return "names"
    if word in V.DAYS:
        return "days"
    if word[:1].isdigit():
        return "numbers"
    return "places"


def _one(rng: random.Random, *options: str) -> str:
    return rng.choice(options)


def meeting(rng: random.Random) -> tuple[list[str], str]:
    """Two friends fix a day, a time and a place to work together."""
    friend = V.person(rng)
    day1, day2 = V.distinct(rng, V.DAYS[:6], 2)
    place, time = rng.choice(V.MEETING_PLACES), V.clock(rng, 9, 20)
    purpose = rng.choice(V.TASK_PURPOSES).format(subject=rng.choice(V.SUBJECTS))
    t = [_one(rng, f"Hi {friend.first}, are you free on {day1}? I'd like to {purpose} with you.",
              f"{friend.first}, do you want to {purpose} together on {day1}?")]
    if rng.random() < 0.6:
        t += [_one(rng, f"Sorry, I'm busy on {day1}. Can we do it on {day2}?",
                   f"{day1} doesn't work for me. How about {day2}?"),
              _one(rng, f"{day2} is fine. Where should we meet?", f"OK, {day2} then. Where?")]
    else:
        day2 = day1
        t += [_one(rng, "Sure, good idea. Where should we meet?", "Yes, I need to do that too. Where?"),
              _one(rng, "I don't mind. You choose.", "Anywhere quiet is fine with me.")]
    t += [_one(rng, f"Let's meet at the {place}. Is {time} OK?", f"How about the {place} at {time}?"),
          _one(rng, f"Perfect. See you at the {place} at {time}.", f"{time} at the {place}. Great.")]
    if rng.random() < 0.5:
        t += [_one(rng, "Don't forget to bring your notes.", "Please bring your laptop.", "See you then.")]
    s = f"{P1} and {P2} decide to meet at the {place} at {time} on {day2} to {purpose}."
    return t, s


def book_table(rng: random.Random) -> tuple[list[str], str]:
    """A guest books a restaurant table; the first time may be full."""
    guest, rest, day = V.person(rng), rng.choice(V.RESTAURANTS), rng.choice(V.DAYS)
    n = rng.randint(2, 8)
    time1, time2 = V.distinct(rng, ["6 pm", "6:30 pm", "7 pm", "7:30 pm", "8 pm", "8:30 pm", "9 pm"], 2)
    t = [_one(rng, f"Good evening, {rest}. How can I help you?", f"{rest}, good afternoon. Can I help you?"),
         _one(rng, f"Hello. I'd like to book a table for {V.number_word(n)} on {day} at {time1}.",
              f"Hi, do you have a table for {V.number_word(n)} people on {day} at {time1}?")]
    if rng.random() < 0.5:
        t += [_one(rng, f"I'm sorry, we are full at {time1}. We have a table at {time2}.",
                   f"{time1} is fully booked, I'm afraid. Would {time2} be all right?"),
              _one(rng, f"{time2} is fine.", f"OK, {time2} then.")]
    else:
        time2 = time1
        t += ["Let me check. Yes, that's no problem.", "Great, thank you."]
    t += [_one(rng, "May I have your name, please?", "Can I have a name for the booking?"),
          _one(rng, f"It's {guest.last}. {guest.first} {guest.last}.", f"{guest.full}.")]
    if rng.random() < 0.5:
        t += [f"Thank you, {guest.title}. See you on {day}."]
    s = (f"{P2} books a table for {V.number_word(n)} at {rest} at {time2} on {day} "
         f"under the name {guest.last}.")
    return t, s


def doctor(rng: random.Random) -> tuple[list[str], str]:
    """A patient makes an appointment, perhaps moving it earlier."""
    doc, patient = rng.choice(V.SURNAMES), V.person(rng)
    symptom, days = rng.choice(V.SYMPTOMS), rng.randint(2, 9)
    day1, day2 = V.distinct(rng, V.DAYS[:5], 2)
    time1, time2 = V.clock(rng, 8, 11), V.clock(rng, 13, 17)
    t = [_one(rng, f"Dr. {doc}'s office. How can I help you?", f"Good morning, Dr. {doc}'s clinic."),
         _one(rng, f"Hello, I'd like to see the doctor. I've had {symptom} for {V.number_word(days)} days.",
              f"Hi. I need an appointment. I have {symptom}."),
         _one(rng, f"The doctor can see you on {day1} at {time1}.", f"Is {day1} at {time1} OK for you?")]
    if rng.random() < 0.5:
        t += [_one(rng, "Is there anything earlier?", f"I work on {day1} morning. Any other time?"),
              _one(rng, f"We have {day2} at {time2}.", f"There is a free slot on {day2} at {time2}.")]
        day1, time1 = day2, time2
    t += [_one(rng, "That's fine. Thank you.", "Yes, that works."), "Can I have your name, please?",
          _one(rng, f"{patient.full}.", f"My name is {patient.full}.")]
    s = f"{patient.full} makes an appointment with Dr. {doc} at {time1} on {day1} because of {symptom}."
    return t, s


def ticket(rng: random.Random) -> tuple[list[str], str]:
    """A traveller buys train or bus tickets."""
    city, mode, n = rng.choice(V.CITIES), rng.choice(["train", "bus"]), rng.randint(1, 4)
    trip = rng.choice(["one-way", "round-trip"])
    time, price, platform = V.clock(rng, 6, 20), rng.randint(5, 60) * n, rng.randint(1, 12)
    tix = f"{V.number_word(n)} {trip} ticket{'s' if n > 1 else ''}"
    t = [_one(rng, "Good morning. Where would you like to go?", "Next, please. Where to?"),
         _one(rng, f"{V.cap(tix)} to {city}, please.", f"I need {tix} to {city}.")]
    if rng.random() < 0.4:
        t += [f"When does the next {mode} leave?", f"The next {mode} leaves at {time}."]
    else:
        t += ["Sure. When do you want to travel?", f"On the {mode} at {time}, please."]
    t += [_one(rng, f"That's {price} dollars.", f"That will be {price} dollars in total.")]
    t += rng.choice([["Can I pay by card?", f"Yes, of course. Your {mode} leaves from platform {platform}."],
                     ["Here you are.", f"Thank you. Go to platform {platform}."]])
    s = (f"{P2} buys {tix} to {city} for {price} dollars. "
         f"The {mode} leaves at {time} from platform {platform}.")
    return t, s


def return_item(rng: random.Random) -> tuple[list[str], str]:
    """A customer returns a faulty item for a refund or an exchange."""
    item, problem, day = rng.choice(V.ITEMS), rng.choice(V.PROBLEMS), rng.choice(V.DAYS)
    price, color = rng.randint(12, 150), rng.choice(V.COLORS)
    t = [_one(rng, "Hello, can I help you?", "Good afternoon. What can I do for you?"),
         _one(rng, f"I bought this {item} here on {day}, but {problem}.",
              f"I'd like to return this {item}. {V.cap(problem)}."),
         _one(rng, "Do you have the receipt?", "I see. Do you have your receipt?"),
         _one(rng, f"Yes, here it is. I paid {price} dollars.", f"Here. It cost {price} dollars."),
         _one(rng, "Would you like a refund or an exchange?", "Do you want your money back or another one?")]
    if rng.random() < 0.5:
        t += [_one(rng, "A refund, please.", "I'd like my money back."), "No problem."]
        s = f"{P2} returns {V.an(item)} because {problem} and gets a refund of {price} dollars."
    else:
        t += [f"Can I exchange it for {V.an(color)} one?",
              _one(rng, "Of course.", f"Sure, here is {V.an(color)} one.")]
        s = f"{P2} returns {V.an(item)} because {problem} and exchanges it for {V.an(color)} one."
    return t, s


def interview(rng: random.Random) -> tuple[list[str], str]:
    """A job interview: experience, start date, and when the company will call."""
    cand, job, company = V.person(rng), rng.choice(V.JOBS), rng.choice(V.COMPANIES)
    yrs, month, day = V.number_word(rng.randint(2, 12)), rng.choice(V.MONTHS), rng.choice(V.DAYS[:5])
    t = [_one(rng, "Please tell me about yourself.", "Thank you for coming. Can you introduce yourself?"),
         _one(rng, f"My name is {cand.full}. I've worked as {V.an(job)} at {company} for {yrs} years.",
              f"I'm {cand.full}. I have been {V.an(job)} at {company} for {yrs} years."),
         _one(rng, "Why do you want to leave?", "Why are you interested in this job?"),
         _one(rng, "I want new challenges.", "I'd like to work closer to home.", "I want to learn more."),
         "When could you start?", _one(rng, f"I can start in {month}.", f"I'm free from {month}."),
         _one(rng, f"Thank you. We will call you on {day}.", f"Great. You'll hear from us on {day}.")]
    s = (f"{cand.full} has been {V.an(job)} at {company} for {yrs} years and can start in "
         f"{month}. {P1} will call on {day}.")
    return t, s


def borrow(rng: random.Random) -> tuple[list[str], str]:
    """One friend borrows an object and agrees when to give it back."""
    friend, obj = V.person(rng), rng.choice(V.OBJECTS)
    use = V.OBJECT_USES[obj]
    day1, day2 = V.distinct(rng, V.DAYS, 2)
    t = [_one(rng, f"{friend.first}, can I borrow your {obj}? I need to {use}.",
              f"Hi {friend.first}. Could you lend me your {obj}? I want to {use}.")]
    if rng.random() < 0.5:
        t += ["Sure. When will you give it back?", f"By {day1}, I think.",
              f"I need it on {day1}. Can you return it by {day2}?", f"Yes, {day2} is fine. Thanks a lot."]
    else:
        day2 = day1
        t += [_one(rng, "Of course. When do you need it?", "No problem. How long do you need it?"),
              f"Only until {day2}.", "That's fine. Take it."]
    if rng.random() < 0.5:
        t += [f"Thank you. I'll be careful with your {obj}."]
    s = f"{P1} borrows {friend.first}'s {obj} to {use} and will return it by {day2}."
    return t, s


def directions(rng: random.Random) -> tuple[list[str], str]:
    """A stranger asks the way to a place."""
    place, near = V.distinct(rng, V.WORKPLACES, 2)
    street, mark, turn = rng.choice(V.STREETS), rng.choice(V.LANDMARKS), rng.choice(["left", "right"])
    minutes = rng.choice([2, 3, 5, 10, 15, 20])
    t = [_one(rng, f"Excuse me, how do I get to the {place}?", f"Sorry, where is the {place}?"),
         _one(rng, f"Go straight along {street} and turn {turn} at the {mark}.",
              f"Walk down {street} and turn {turn} at the {mark}."),
         _one(rng, "Is it far?", "How long does it take?"),
         f"About {V.number_word(minutes)} minutes on foot. It's next to the {near}."]
    t += rng.choice([["Thank you very much.", "You're welcome."], ["Thanks!"], ["Great, thanks.", "Bye."]])
    s = (f"{P2} tells {P1} how to get to the {place}: along {street}, then {turn} at the {mark}. "
         f"It is next to the {near}.")
    return t, s


def shopping(rng: random.Random) -> tuple[list[str], str]:
    """A customer buys a present, perhaps a cheaper one than first shown."""
    item, (c1, c2) = rng.choice(V.ITEMS), V.distinct(rng, V.COLORS, 2)
    rel = rng.choice(V.RELATIVES_F + V.RELATIVES_M)
    p1 = rng.randint(40, 200)
    p2 = p1 - rng.randint(5, 35)
    t = [_one(rng, "Can I help you?", "Hello, are you looking for something?"),
         _one(rng, f"Yes, I'm looking for {V.an(item)} for my {rel}.",
              f"I need {V.an(item)}. It's a present for my {rel}."),
         f"What about this {c1} one? It's {p1} dollars."]
    if rng.random() < 0.6:
        t += [_one(rng, "That's too expensive. Do you have a cheaper one?", "Hmm, anything cheaper?"),
              f"This {c2} one is {p2} dollars.", f"I'll take the {c2} one."]
    else:
        c2, p2 = c1, p1
        t += ["It's lovely. I'll take it."]
    t += [_one(rng, "Cash or card?", "Shall I wrap it for you?"), _one(rng, "Card, please.", "Yes, please.")]
    s = f"{P2} buys {V.an(c2)} {item} for {p2} dollars as a present for {P2}'s {rel}."
    return t, s


def invitation(rng: random.Random) -> tuple[list[str], str]:
    """One friend invites the other to a weekend activity."""
    other, day = V.person(rng), rng.choice(["Saturday", "Sunday", "Friday"])
    act, place = rng.choice(V.ACTIVITIES)[1], rng.choice(V.MEETING_PLACES)
    time, food = V.clock(rng, 8, 18, halves=False), rng.choice(V.FOODS)
    t = [_one(rng, f"What are you doing on {day}?", f"Are you busy this {day}?"),
         _one(rng, "Nothing special. Why?", "I have no plans yet."),
         _one(rng, f"{other.first} and I are going to {act}. Do you want to come?",
              f"I'm going to {act} with {other.first}. Join us!"),
         _one(rng, "I'd love to. When and where?", "Sounds fun. Where do we meet?"),
         f"We'll meet at the {place} at {time}."]
    if rng.random() < 0.6:
        t += ["Should I bring anything?", f"Bring some {food}."]
        s = (f"{P1} invites {P2} to {act} with {other.first} on {day}. "
             f"They will meet at the {place} at {time}, and {P2} will bring {food}.")
    else:
        t += ["OK, see you there."]
        s = (f"{P1} invites {P2} to {act} with {other.first} on {day}. "
             f"They will meet at the {place} at {time}.")
    return t, s


def message(rng: random.Random) -> tuple[list[str], str]:
    """A caller leaves a message for someone who is out."""
    caller, absent = V.people(rng, 2)
    company, time = rng.choice(V.COMPANIES), V.clock(rng, 10, 18)
    when = rng.choice(["today", "tomorrow"])
    he, him = absent.he, absent.him
    t = [f"Hello, can I speak to {absent.first}, please?",
         _one(rng, f"Sorry, {he} is out. Can I take a message?", f"{absent.first} isn't here. Any message?"),
         f"Yes, this is {caller.full} from {company}. Please ask {him} to call me before {time} {when}.",
         _one(rng, f"Sure. Before {time}. Does {he} have your number?", "Of course. I'll write it down."),
         _one(rng, "Yes, I think so. Thank you.", "Yes. Thanks for your help."),
         f"I'll give {him} the message."]
    s = (f"{caller.full} from {company} calls for {absent.first}, who is out. {P2} will ask {absent.first} "
         f"to call back before {time} {when}.")
    return t, s


SCENARIOS: dict[str, Scenario] = {
    "meeting": meeting, "book_table": book_table, "doctor": doctor, "ticket": ticket,
    "return_item": return_item, "interview": interview, "borrow": borrow, "directions": directions,
    "shopping": shopping, "invitation": invitation, "message": message,
}


def format_dialogue(turns: list[str]) -> str:
    """Join utterances, alternating #Person1# and #Person2#, one turn per line."""
    return "\n".join(f"{P1 if i % 2 == 0 else P2}: {u}" for i, u in enumerate(turns))


def dialogue_example(rng: random.Random) -> dict:
    """One {"dialogue", "summary", "scenario"} example within the word budgets and 4-8 turns."""
    while True:
        name = rng.choice(sorted(SCENARIOS))
        turns, summary = SCENARIOS[name](rng)
        dialogue = format_dialogue(turns)
        if (4 <= len(turns) <= 8 and len(dialogue.split()) <= MAX_DIALOGUE_WORDS
                and len(summary.split()) <= MAX_SUMMARY_WORDS):
            return {"dialogue": dialogue, "summary": summary, "scenario": name}


def make_dialogsum(n: int, seed: int = 0) -> list[dict]:
    """n DialogSum-shaped examples {"dialogue", "summary"}, deterministic given seed."""
    rng = random.Random(f"dialogsum:{seed}")
    return [{k: ex[k] for k in ("dialogue", "summary")} for ex in (dialogue_example(rng) for _ in range(n))]
