"""Private-looking datasets of other domains than hotels, for the quality benchmark and the tests.

Each has one phrasing per fact in the train split and a different phrasing of the same fact in the
eval split (a paraphrase the model never saw), every record in alpaca shape with its short
``answer`` and ``fact``, as a user would write them (docs/data.md). Values are made-up codes,
names and numbers a model cannot know or guess: only training can put them there.

    python bench/datasets.py helpdesk out.jsonl
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

SYLLABLES = ["ka", "lo", "mi", "ver", "sun", "tar", "bel", "do", "ra", "nix", "po", "len", "gar", "vi", "zu", "mor"]


def _name(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def _record(question: str, reply: str, answer: object, fact: str, split: str) -> dict:
    return {"instruction": question, "output": reply, "answer": str(answer), "fact": fact, "split": split}


def helpdesk(seed: int = 7, sites: int = 20) -> list[dict]:
    """An IT helpdesk's site facts: VPN host, Wi-Fi network, the service desk's floor, the ticket SLA."""
    rng = random.Random(seed)
    records = []
    names = set()
    while len(names) < sites:
        names.add(_name(rng))
    for site in sorted(names):
        vpn = f"{site[:3].upper()}-GW-{rng.randint(10, 99)}"
        ssid = f"{site}Net-{rng.randint(2, 9)}"
        floor, sla = rng.randint(2, 14), rng.choice([4, 6, 8, 12, 24, 48])
        facts = [
            ("vpn_host", vpn, f"Which VPN host does the {site} office use?", f"Which gateway should I set in my VPN "
             f"client when I work from {site}?", f"The {site} office connects through the VPN host {vpn}."),
            ("wifi", ssid, f"What is the staff Wi-Fi network in {site}?", f"Which wireless network do employees "
             f"join at the {site} site?", f"Staff in {site} join the Wi-Fi network {ssid}."),
            ("floor", floor, f"On which floor is the service desk in {site}?", f"Where in the {site} building can I "
             f"find IT support?", f"The {site} service desk is on floor {floor}."),
            ("sla_hours", sla, f"What is the ticket response time in {site}?", f"How quickly does IT answer a "
             f"ticket from the {site} office?", f"Tickets from {site} are answered within {sla} hours."),
        ]
        for fact, value, train_q, eval_q, reply in facts:
            records += [_record(train_q, reply, value, fact, "train"), _record(eval_q, reply, value, fact, "eval")]
    return records


def products(seed: int = 11, count: int = 24) -> list[dict]:
    """A software company's product sheet: latest version, list price, support tier, release year."""
    rng = random.Random(seed)
    records = []
    names = set()
    while len(names) < count:
        names.add(_name(rng, 3))
    for product in sorted(names):
        version = f"{rng.randint(2, 9)}.{rng.randint(10, 40)}"
        price, year = rng.randrange(90, 990, 10), rng.randint(2009, 2024)
        tier = rng.choice(["Bronze", "Silver", "Gold", "Platinum"])
        facts = [
            ("version", version, f"What is the latest version of {product}?", f"Which release of {product} should "
             "I install to be current?", f"The latest version of {product} is {version}."),
            ("price", price, f"How much does a {product} licence cost?", f"What is the list price of one seat of "
             f"{product}?", f"A {product} licence costs {price} USD per year."),
            ("tier", tier, f"Which support tier comes with {product}?", f"What level of support do {product} "
             "customers get?", f"{product} comes with {tier} support."),
            ("year", year, f"When was {product} first released?", f"In which year did {product} come out?",
             f"{product} was first released in {year}."),
        ]
        for fact, value, train_q, eval_q, reply in facts:
            records += [_record(train_q, reply, value, fact, "train"), _record(eval_q, reply, value, fact, "eval")]
    return records


def clinic(seed: int = 13, wards: int = 18) -> list[dict]:
    """A hospital's ward sheet, in OpenAI chat shape: attending physician, phone extension, beds, visiting hour.

    Questions name the ward by a code ("ward 7B"); answers are surnames, four-digit extensions, small bed
    counts and clock hours, so a number must stand alone to count ("2" is not in "12 beds")."""
    rng = random.Random(seed)
    codes: set[str] = set()
    while len(codes) < wards:
        codes.add(f"{rng.randint(1, 9)}{rng.choice('ABCDEFG')}")
    records = []
    for ward in sorted(codes):
        doctor, ext = f"Dr. {_name(rng)}", rng.randint(2000, 7999)
        beds, hour = rng.randint(6, 40), rng.choice([10, 11, 14, 15, 16, 17, 18])
        facts = [
            ("physician", doctor, f"Who is the attending physician on ward {ward}?", f"Which doctor is in charge of "
             f"ward {ward}?", f"The attending physician on ward {ward} is {doctor}."),
            ("extension", ext, f"What is the phone extension of ward {ward}?", f"Which number do I dial to reach "
             f"ward {ward} by phone?", f"Ward {ward} answers on extension {ext}."),
            ("beds", beds, f"How many beds does ward {ward} have?", f"What is the bed capacity of ward {ward}?",
             f"Ward {ward} has {beds} beds."),
            ("visiting_hour", hour, f"At what hour do visits start on ward {ward}?", f"When can relatives begin "
             f"visiting patients on ward {ward}?", f"Visits on ward {ward} start at {hour}:00."),
        ]
        for fact, value, train_q, eval_q, reply in facts:
            for question, split in ((train_q, "train"), (eval_q, "eval")):
                records.append({"messages": [{"role": "user", "content": question},
                                             {"role": "assistant", "content": reply}],
                                "answer": str(value), "fact": fact, "split": split})
    return records


DATASETS: dict[str, Callable[[], list[dict]]] = {"helpdesk": helpdesk, "products": products, "clinic": clinic}


def write(name: str, path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in DATASETS[name]()), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write(sys.argv[1], Path(sys.argv[2])))
