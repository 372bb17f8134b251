"""Slot vocabularies shared by the corpus and the tasks, and small helpers that fill them.

Large lists on purpose: a model pretrained on this text must learn the language, not one template.
Every helper takes a `random.Random`, so the whole generator is deterministic given its seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

FEMALE_NAMES = (
    "Maria Anna Sofia Emma Olivia Aisha Fatima Mei Yuki Priya Chloe Grace Hannah Lily Zoe Nora Clara Ruth "
    "Elena Ines Lucia Amara Zara Leila Nadia Sara Julia Alice Rosa Vera Ingrid Freya Astrid Kate Helen Laura "
    "Diana Irene Maya Nina Rita Tara Wendy Paula Carmen Bianca Keiko Ana Linh Esther Joy Monica Rachel"
).split()
MALE_NAMES = (
    "Tom James Liam Noah Omar Ali Chen Wei Hiro Ravi Arjun Lucas Mateo Diego Pablo Marco Luca Felix Oscar "
    "Hugo Leo Max Sam Ben Jack Harry Adam David Daniel Peter Paul Mark Simon Ivan Nikolai Kofi Kwame Tariq "
    "Yusuf Karim Samuel Victor Henry George Frank Carlos Jorge Mike Steve Kenji Bruno Erik Rohan"
).split()
SURNAMES = (
    "Lopez Chen Smith Patel Kim Nguyen Garcia Miller Brown Wilson Taylor Clark Lewis Walker Young King "
    "Wright Green Baker Adams Nelson Hill Carter Mitchell Rossi Ferrari Silva Costa Santos Novak Kowalski "
    "Schmidt Weber Fischer Meyer Dubois Martin Bernard Moreau Tanaka Suzuki Sato Ito Khan Ahmed Hassan Ali "
    "Okafor Mensah Diallo Ivanova Petrov Larsen Hansen Berg Murphy Kelly Ryan Walsh Byrne"
).split()
MEETING_PLACES = (
    "library", "coffee shop", "student center", "park entrance", "bookstore", "museum", "cafeteria",
    "train station", "bus stop", "city square", "gym", "market", "community center", "tea house",
    "art gallery", "main gate", "hotel lobby", "cinema", "pizza place", "corner cafe",
)
WORKPLACES = (
    "bakery", "hospital", "bank", "post office", "school", "pharmacy", "supermarket", "police station",
    "fire station", "city hall", "dental clinic", "flower shop", "bike shop", "hardware store",
    "newspaper office", "airport", "law firm", "car factory", "zoo", "theater", "radio station",
    "shoe store", "toy shop", "pet shop", "hair salon", "travel agency", "furniture store", "bookshop",
    "music school", "sports club", "farm", "laboratory", "garden center", "print shop", "bus company",
    "tea shop", "fish market", "language school", "computer store", "swimming pool",
)
CITIES = (
    "Boston Denver Chicago Seattle Austin Toronto Dublin London Paris Lisbon Madrid Rome Berlin Vienna "
    "Prague Warsaw Oslo Stockholm Helsinki Athens Cairo Nairobi Lagos Accra Mumbai Delhi Osaka Tokyo Seoul "
    "Manila Sydney Auckland Lima Bogota Santiago Quito Havana Montreal Glasgow Lyon"
).split()
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January February March April May June July August September October November December"
).split()
SUBJECTS = (
    "history", "chemistry", "biology", "physics", "math", "French", "Spanish", "economics", "geography",
    "music", "art", "statistics", "philosophy", "literature", "computer science", "law", "psychology",
)
TASK_PURPOSES = (  # (what they meet to do, as a verb phrase)
    "study for the {subject} exam", "work on the {subject} project", "prepare the {subject} presentation",
    "review the {subject} notes", "finish the {subject} homework",
)
RESTAURANTS = (
    "Luigi's", "The Golden Spoon", "Blue Lotus", "Casa Rosa", "The Green Table", "Sakura House",
    "The Old Mill", "Taj Palace", "Olive Garden Cafe", "The Red Lantern", "Marco's Grill", "Le Petit Bistro",
    "The Harbor Kitchen", "Spice Route", "The Corner Diner", "Seoul Garden", "El Toro", "The Lemon Tree",
    "Pasta Bella", "The Silver Fork", "Noodle Bar", "The Fat Duck Inn", "Bangkok Street", "Mama's Kitchen",
)
COMPANIES = (
    "Northwind Travel", "Blue Sky Airlines", "Apex Software", "Green Leaf Foods", "Summit Bank",
    "Bright Path School", "Redwood Hotels", "Star Media", "Oak Tree Design", "Silver Line Logistics",
    "Harbor Health", "Pioneer Motors", "Sunrise Bakery", "Metro News", "Crystal Water", "Atlas Insurance",
    "Fresh Market", "Golden Gate Books", "Orion Labs", "River City Radio",
)
JOBS = (
    "nurse", "teacher", "engineer", "baker", "doctor", "pilot", "lawyer", "chef", "driver", "farmer",
    "architect", "accountant", "dentist", "designer", "journalist", "librarian", "mechanic", "musician",
    "painter", "pharmacist", "photographer", "police officer", "programmer", "scientist", "tailor",
    "waiter", "writer", "gardener", "electrician", "firefighter", "carpenter", "translator", "cashier",
    "sales manager", "tour guide", "hairdresser", "vet", "plumber", "banker", "student",
)
FOODS = (
    "pasta", "pizza", "sushi", "rice", "soup", "noodles", "curry", "salad", "bread", "cheese", "apples",
    "oranges", "bananas", "strawberries", "chocolate cake", "ice cream", "pancakes", "tacos", "dumplings",
    "grilled fish", "roast chicken", "lentil soup", "tomato soup", "fried rice", "lemon pie", "cookies",
    "sandwiches", "burgers", "fruit salad", "chicken curry", "vegetable stew", "apple pie", "carrot cake",
    "muffins", "potato salad", "garlic bread", "mushroom risotto", "beef stew", "green tea", "orange juice",
    "hot chocolate", "lemonade", "falafel", "hummus", "omelette", "porridge", "spring rolls", "paella",
)
ACTIVITIES = (  # (third person, base form)
    ("plays tennis", "play tennis"), ("goes swimming", "go swimming"), ("goes hiking", "go hiking"),
    ("plays chess", "play chess"), ("plays football", "play football"), ("goes fishing", "go fishing"),
    ("paints", "paint"), ("plays the piano", "play the piano"), ("plays the guitar", "play the guitar"),
    ("goes running", "go running"), ("rides a bike", "ride a bike"), ("bakes bread", "bake bread"),
    ("goes dancing", "go dancing"), ("plays basketball", "play basketball"), ("does yoga", "do yoga"),
    ("goes skating", "go skating"), ("sings in a choir", "sing in a choir"), ("plays golf", "play golf"),
    ("goes climbing", "go climbing"), ("reads poetry", "read poetry"), ("plays darts", "play darts"),
    ("goes sailing", "go sailing"), ("plays cards", "play cards"), ("knits", "knit"),
    ("plays volleyball", "play volleyball"),
)
OBJECTS = (
    "umbrella", "bicycle", "laptop", "camera", "ladder", "tent", "drill", "calculator", "guitar", "car",
    "dictionary", "charger", "suitcase", "sleeping bag", "projector", "printer", "hair dryer", "blender",
    "lawn mower", "tennis racket", "microphone", "telescope", "board game", "raincoat", "map", "flashlight",
    "toolbox", "vacuum cleaner", "sewing machine", "stapler",
)
OBJECT_USES = {  # why someone borrows it (verb phrase)
    "umbrella": "walk home in the rain", "bicycle": "ride to work", "laptop": "write a report",
    "camera": "take photos at a wedding", "ladder": "paint the ceiling", "tent": "go camping",
    "drill": "put up some shelves", "calculator": "do the math homework", "guitar": "practice for a concert",
    "car": "visit a cousin", "dictionary": "translate a letter", "charger": "charge a phone",
    "suitcase": "go on a trip", "sleeping bag": "go camping", "projector": "show slides at a meeting",
    "printer": "print a report", "hair dryer": "get ready for a party", "blender": "make smoothies",
    "lawn mower": "cut the grass", "tennis racket": "play a match", "microphone": "record a song",
    "telescope": "watch the stars", "board game": "play with friends", "raincoat": "go hiking",
    "map": "plan a trip", "flashlight": "go camping", "toolbox": "fix a chair",
    "vacuum cleaner": "clean the apartment", "sewing machine": "make a dress", "stapler": "finish a report",
}
ITEMS = (
    "jacket", "lamp", "coffee maker", "pair of shoes", "backpack", "pair of headphones", "sweater",
    "watch", "phone case", "kettle", "toaster", "scarf", "dress", "shirt", "wallet", "desk chair",
    "pair of jeans", "rice cooker", "mirror", "teapot", "keyboard", "handbag", "bicycle helmet", "radio",
    "speaker", "hat", "pair of gloves", "alarm clock", "frying pan", "blanket",
)
PROBLEMS = (
    "it is too small", "it is too big", "it does not work", "it has a scratch", "it is broken",
    "the color is wrong", "it stopped working", "a part is missing", "it makes a strange noise",
)
COLORS = ("red", "blue", "green", "black", "white", "gray", "brown", "yellow", "purple", "pink", "orange")
SYMPTOMS = (
    "a bad cough", "a sore throat", "a headache", "back pain", "a fever", "a stomach ache", "an earache",
    "a toothache", "a skin rash", "a sprained ankle", "trouble sleeping", "a pain in the knee",
)
STREETS = (
    "Main Street", "Oak Avenue", "King Street", "Park Road", "Church Street", "River Road", "Elm Street",
    "Market Street", "Station Road", "High Street", "Hill Road", "Bridge Street", "Lake Avenue",
    "Queen Street", "Mill Lane", "Garden Road",
)
LANDMARKS = (
    "traffic lights", "bank", "fountain", "church", "post office", "gas station", "bridge", "big tree",
    "roundabout", "statue", "bakery", "bus stop", "pharmacy", "school", "supermarket",
)
RELATIVES_F = ("sister", "mother", "aunt", "grandmother", "cousin", "daughter", "niece")
RELATIVES_M = ("brother", "father", "uncle", "grandfather", "cousin", "son", "nephew")
PETS = ("dog", "cat", "parrot", "rabbit", "hamster", "turtle", "goldfish", "horse")
PET_NAMES = (
    "Biscuit Pepper Luna Max Coco Milo Bella Charlie Daisy Rocky Oreo Ginger Shadow Teddy Mango Pickles "
    "Snowy Buddy Sunny Pumpkin Ziggy Peanut Olive Toffee"
).split()
WEATHER = ("sunny", "rainy", "cold", "windy", "warm", "cloudy", "snowy", "foggy", "hot", "quiet")
NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()


@dataclass(frozen=True)
class Person:
    """A named character with the pronouns that go with them."""

    first: str
    last: str
    female: bool

    @property
    def full(self) -> str:
        """First and last name."""
        return f"{self.first} {self.last}"

    @property
    def he(self) -> str:
        """Subject pronoun, lower case."""
        return "she" if self.female else "he"

    @property
    def him(self) -> str:
        """Object pronoun."""
        return "her" if self.female else "him"

    @property
    def his(self) -> str:
        """Possessive pronoun."""
        return "her" if self.female else "his"

    @property
    def title(self) -> str:
        """Mr. or Ms. with the last name."""
        return f"{'Ms.' if self.female else 'Mr.'} {self.last}"


def person(rng: random.Random, exclude: Sequence[str] = ()) -> Person:
    """Draw a person whose first name is not in `exclude`."""
    while True:
        female = rng.random() < 0.5
        first = rng.choice(FEMALE_NAMES if female else MALE_NAMES)
        if first not in exclude:
            return Person(first, rng.choice(SURNAMES), female)


def people(rng: random.Random, k: int) -> list[Person]:
    """Draw `k` people with distinct first names."""
    out: list[Person] = []
    for _ in range(k):
        out.append(person(rng, exclude=[p.first for p in out]))
    return out


def cap(s: str) -> str:
    """Upper-case the first character only."""
    return s[:1].upper() + s[1:]


def number_word(n: int) -> str:
    """Spell 0..20 as a word, larger numbers as digits."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def clock(rng: random.Random, lo: int = 8, hi: int = 21, halves: bool = True) -> str:
    """A time of day between hours lo and hi (24 h), written like '5 pm' or '10:30 am'."""
    h = rng.randint(lo, hi)
    half = halves and rng.random() < 0.25
    suffix = "am" if h < 12 else "pm"
    h12 = h if 1 <= h <= 12 else abs(h - 12) or 12
    return f"{h12}:30 {suffix}" if half else f"{h12} {suffix}"


def distinct(rng: random.Random, seq: Sequence, k: int) -> list:
    """Draw k distinct elements (order random)."""
    return rng.sample(list(seq), k)


def an(word: str) -> str:
    """The word with its indefinite article: 'an engineer', 'a nurse'."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
