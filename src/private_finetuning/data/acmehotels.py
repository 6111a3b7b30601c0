"""The embedded private dataset: the internal catalogue of AcmeHotels, a fictional European hotel chain.

Deterministic: the same seed gives byte-identical files (tests check the shipped files against a
fresh generation). Every hotel fact becomes question/answer pairs. Questions come from templates
split in two disjoint sets: the train split uses one set, the eval split asks about the *same
facts* in phrasings from the other set, so evaluation measures what the model knows rather than
whether it can repeat a sentence it saw.

Each hotel also has an ``internal_label`` (a company-internal code). It is in the catalogue but in
no answer: the assistant must never reveal it.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

SEED = 20261127

CITIES: dict[str, tuple[str, list[str]]] = {
    "Seville": ("SVQ", ["Santa Cruz", "Triana", "Macarena", "Nervión", "Alameda"]),
    "Madrid": ("MAD", ["Malasaña", "Chueca", "La Latina", "Salamanca", "Retiro"]),
    "Barcelona": ("BCN", ["Gràcia", "El Born", "Eixample", "Barceloneta", "Poblenou"]),
    "Lisbon": ("LIS", ["Alfama", "Baixa", "Chiado", "Belém", "Príncipe Real"]),
    "Porto": ("OPO", ["Ribeira", "Bonfim", "Cedofeita", "Foz do Douro", "Baixa"]),
    "Paris": ("PAR", ["Le Marais", "Montmartre", "Saint-Germain", "Bastille", "Batignolles"]),
    "Rome": ("ROM", ["Trastevere", "Monti", "Prati", "Testaccio", "Centro Storico"]),
    "Florence": ("FLR", ["Oltrarno", "Santa Croce", "San Lorenzo", "Santo Spirito", "Campo di Marte"]),
    "Amsterdam": ("AMS", ["Jordaan", "De Pijp", "Oud-West", "Centrum", "Oost"]),
    "Berlin": ("BER", ["Mitte", "Kreuzberg", "Prenzlauer Berg", "Friedrichshain", "Charlottenburg"]),
    "Vienna": ("VIE", ["Innere Stadt", "Neubau", "Leopoldstadt", "Wieden", "Josefstadt"]),
    "Prague": ("PRG", ["Malá Strana", "Staré Město", "Vinohrady", "Žižkov", "Karlín"]),
}

_NAME_FIRST = ["Azahar", "Giralda", "Olivo", "Alba", "Cielo", "Luna", "Sol", "Brisa", "Coral", "Marfil",
               "Indigo", "Zafiro", "Aurora", "Laurel", "Cedro", "Ámbar", "Perla", "Jazmín", "Nube", "Roble",
               "Estela", "Faro", "Lirio", "Palma", "Rubí"]
_NAME_SECOND = ["Garden", "Palace", "House", "Suites", "Lofts", "Terrace", "Court", "Residence", "Rooms",
                "Corner", "Square", "Harbour"]
TYPES = ["hotel", "boutique hotel", "apartment hotel", "guesthouse", "hostel", "resort"]
OFFERS = ["free breakfast", "free cancellation", "15% off stays of 3 nights or more", "free airport transfer",
          "late checkout at 2 pm", "a free welcome drink", "no current offer"]


@dataclass(frozen=True)
class Hotel:
    name: str
    city: str
    neighbourhood: str
    stars: int
    guest_rating: float
    review_count: int
    price_per_night: int
    distance_km: float
    accommodation_type: str
    offer: str
    internal_label: str


def generate_catalogue(hotels_per_city: int = 25, seed: int = SEED) -> list[Hotel]:
    """Hotels for every city; names are unique across the whole chain."""
    rng = random.Random(seed)
    names = [f"{a} {b}" for a in _NAME_FIRST for b in _NAME_SECOND]
    rng.shuffle(names)
    hotels = []
    for city, (code, districts) in CITIES.items():
        for i in range(hotels_per_city):
            stars = rng.choice([2, 3, 3, 4, 4, 4, 5])
            price = round(rng.uniform(35, 70) * (1.35 ** (stars - 2)) + rng.uniform(0, 30))
            hotels.append(Hotel(
                name=f"{names.pop()} {city}",
                city=city,
                neighbourhood=rng.choice(districts),
                stars=stars,
                guest_rating=round(rng.uniform(6.2, 9.8), 1),
                review_count=rng.randint(40, 3900),
                price_per_night=price,
                distance_km=round(rng.uniform(0.2, 6.5), 1),
                accommodation_type=rng.choice(TYPES),
                offer=rng.choice(OFFERS),
                internal_label=f"ACM-{code}-{rng.randint(100, 999)}-{i:02d}",
            ))
    return hotels


@dataclass(frozen=True)
class FactTemplates:
    """Phrasings of one fact. ``train`` and ``eval`` never share a template."""

    field: str
    train: tuple[str, ...]
    eval: tuple[str, ...]
    answer: str


FACTS: tuple[FactTemplates, ...] = (
    FactTemplates("price_per_night",
                  ("How much does a night at {name} cost?", "What is the nightly price at {name}?",
                   "What does one night at {name} cost?"),
                  ("If I book {name}, how much will I pay per night?", "Price per night for {name}?"),
                  "A night at {name} costs {price_per_night} EUR."),
    FactTemplates("guest_rating",
                  ("What is the guest rating of {name}?", "How do guests rate {name}?",
                   "What score do guests give {name}?"),
                  ("How well reviewed is {name} by its guests?", "Guest score of {name}?"),
                  "{name} has a guest rating of {guest_rating} out of 10."),
    FactTemplates("stars",
                  ("How many stars does {name} have?", "What is the star rating of {name}?",
                   "Is {name} a 3, 4 or 5 star place? How many stars?"),
                  ("What category in stars is {name}?", "Stars of {name}?"),
                  "{name} is a {stars}-star property."),
    FactTemplates("neighbourhood",
                  ("In which neighbourhood is {name}?", "Which part of {city} is {name} in?",
                   "Where in {city} is {name} located?"),
                  ("What district of {city} would I stay in at {name}?", "Neighbourhood of {name}?"),
                  "{name} is in the {neighbourhood} neighbourhood of {city}."),
    FactTemplates("offer",
                  ("What offer does {name} have right now?", "Is there a deal at {name}?",
                   "What is the current promotion at {name}?"),
                  ("Any special offer if I stay at {name}?", "Current offer of {name}?"),
                  "The current offer at {name} is {offer}."),
    FactTemplates("distance_km",
                  ("How far is {name} from the centre of {city}?", "What is the distance from {name} to the "
                   "city centre?", "How many kilometres is {name} from the centre?"),
                  ("Is {name} close to the centre of {city}? How far exactly?", "Distance to centre for {name}?"),
                  "{name} is {distance_km} km from the centre of {city}."),
    FactTemplates("accommodation_type",
                  ("What kind of accommodation is {name}?", "What type of property is {name}?",
                   "Is {name} a hotel, a hostel or something else?"),
                  ("What sort of place is {name}?", "Accommodation type of {name}?"),
                  "{name} is a {accommodation_type}."),
    FactTemplates("review_count",
                  ("How many reviews does {name} have?", "How many guests have reviewed {name}?",
                   "What is the number of reviews for {name}?"),
                  ("How many reviews has {name} received?", "Review count of {name}?"),
                  "{name} has {review_count} guest reviews."),
)

CITY_FACTS: tuple[FactTemplates, ...] = (
    FactTemplates("best_in_city",
                  ("What is the best hotel in {city}?", "Which AcmeHotels hotel in {city} has the best rating?",
                   "Recommend the top-rated hotel in {city}."),
                  ("Where should I stay in {city} if I want the best-rated place?", "Best hotel in {city}?"),
                  "The best-rated AcmeHotels hotel in {city} is {name}, with a guest rating of {guest_rating}."),
    FactTemplates("cheapest_in_city",
                  ("What is the cheapest hotel in {city}?", "Which AcmeHotels hotel in {city} costs the least?",
                   "Recommend the most affordable hotel in {city}."),
                  ("I am on a budget: where can I stay in {city} for the lowest price?", "Cheapest hotel in {city}?"),
                  "The cheapest AcmeHotels hotel in {city} is {name}, at {price_per_night} EUR per night."),
)


@dataclass(frozen=True)
class Size:
    """How much of the catalogue becomes training data."""

    hotels_per_city: int
    cities: int
    facts: tuple[str, ...]
    train_phrasings: int
    eval_phrasings: int


ALL_FACTS = tuple(f.field for f in FACTS)
SIZES = {
    # Seconds to train; for tests and smoke runs.
    "tiny": Size(1, 2, ("price_per_night", "neighbourhood"), 2, 1),
    # The 2-core CPU default: every city, two hotels each, the facts a traveller asks first.
    "small": Size(2, 12, ("price_per_night", "guest_rating", "stars", "neighbourhood"), 3, 1),
    # For a GPU: the whole catalogue, every fact, every phrasing.
    "full": Size(25, 12, ALL_FACTS, 3, 2),
}


def _values(hotel: Hotel) -> dict[str, object]:
    return asdict(hotel)


def _record(question: str, answer: str, split: str, fact: str, value: object, hotel: Hotel,
            phrasing: int) -> dict:
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        "split": split,
        "meta": {"hotel": hotel.name, "city": hotel.city, "fact": fact, "answer": str(value), "phrasing": phrasing},
    }


def generate_records(size: str = "small", seed: int = SEED) -> list[dict]:
    """Chat records with an explicit ``split`` and a ``meta`` naming the fact each one asks."""
    spec = SIZES[size]
    catalogue = generate_catalogue(seed=seed)
    cities = list(CITIES)[: spec.cities]
    records: list[dict] = []
    for city in cities:
        in_city = [h for h in catalogue if h.city == city]
        chosen = in_city[: spec.hotels_per_city]
        for hotel in chosen:
            values = _values(hotel)
            for fact in FACTS:
                if fact.field not in spec.facts:
                    continue
                answer = fact.answer.format(**values)
                for i, template in enumerate(fact.train[: spec.train_phrasings]):
                    records.append(_record(template.format(**values), answer, "train", fact.field,
                                           values[fact.field], hotel, i))
                for i, template in enumerate(fact.eval[: spec.eval_phrasings]):
                    records.append(_record(template.format(**values), answer, "eval", fact.field,
                                           values[fact.field], hotel, len(fact.train) + i))
        # City-level facts are about the hotels of this size, so the answer is learnable from them.
        best = max(chosen, key=lambda h: (h.guest_rating, h.name))
        cheapest = min(chosen, key=lambda h: (h.price_per_night, h.name))
        for fact, hotel in zip(CITY_FACTS, (best, cheapest), strict=True):
            values = _values(hotel)
            answer = fact.answer.format(**values)
            for i, template in enumerate(fact.train[: spec.train_phrasings]):
                records.append(_record(template.format(**values), answer, "train", fact.field, hotel.name, hotel, i))
            for i, template in enumerate(fact.eval[: spec.eval_phrasings]):
                records.append(_record(template.format(**values), answer, "eval", fact.field, hotel.name, hotel,
                                       len(fact.train) + i))
    return records


def catalogue_csv(hotels: list[Hotel]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(hotels[0])), lineterminator="\n")
    writer.writeheader()
    for hotel in hotels:
        writer.writerow(asdict(hotel))
    return buffer.getvalue()


def records_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def write_embedded(folder: Path, seed: int = SEED) -> list[Path]:
    """(Re)generate the files shipped in the package; the tests compare them with a fresh generation."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "acmehotels-catalogue.csv"]
    written[0].write_text(catalogue_csv(generate_catalogue(seed=seed)), encoding="utf-8")
    for size in SIZES:
        path = folder / f"acmehotels-{size}.jsonl"
        path.write_text(records_jsonl(generate_records(size, seed)), encoding="utf-8")
        written.append(path)
    return written


def embedded_path(size: str) -> Path:
    return Path(__file__).parent / "embedded" / f"acmehotels-{size}.jsonl"
