"""More ways of asking for each trained fact: question variants and the reply as a statement.

A fact trained under one phrasing is recalled under that phrasing and rarely under another (Allen-Zhu
& Li, *Physics of Language Models 3.1*: out-of-distribution QA ~10% with one phrasing per fact, ~96%
with several). Users' datasets mostly have one question per fact, so the dataset stage adds, to the
**train split only**, variants made by rules of English syntax that know nothing of any one domain:

- ``wrapper``: the question inside a conversational frame ("Quick question: ...");
- ``keywords``: the question cut to its content words, as people type in a search box;
- ``imperative``: a wh-question turned into a request ("What is X?" -> "Tell me X.");
- ``reorder``: a trailing name moved to the front ("What is the SLA in Lokar?" -> "Lokar: what is the SLA?");
- ``statement``: the reply itself, to be completed from its words before the fact ("Complete: The
  Lokar office connects through the VPN host ..."), so the fact is also learnt as a statement, cued
  by the reply's own vocabulary rather than the question's.

Every variant keeps the record's reply; a variant whose prompt states the record's fact (its ``answer``,
or the specific facts derived from its reply, data/expected.py: it would teach copying, not recall),
repeats the question, or repeats another variant is not emitted. Variants are a pure function of the
train split: the same file gives the same variants on every run.
Each carries ``meta.variant`` (its kind) and ``meta.fact_id`` (the index of the record it came from,
also set on the original), which training uses to count epochs per fact, not per variant.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from private_finetuning.data.expected import Expected, expectations, expected
from private_finetuning.data.facts import fact_spans, normalize
from private_finetuning.data.record import Record
from private_finetuning.data.words import FUNCTION_WORDS

WRAPPERS = ("Quick question: {q}", "{q} Please answer briefly.", "I need to know this. {q}",
            "Can you help me? {q}", "Please tell me: {q}", "{q} Thanks!")
# Every pattern here sees user text, so each runs in time linear in it: no quantifier nests another over
# optional separators (the trailing-name pattern once took 8.7 s on one row of capitalised words), and the
# end's punctuation is cut before matching instead of by a lazy group that re-scans it at every position.
_WH = re.compile(r"(?:what|which)(?:'s|\s+(?:is|are|was|were))\s+(?P<rest>.+)", re.IGNORECASE | re.DOTALL)
_NAME_WORD = re.compile(r"[A-Z0-9][\w'’.-]*")
_NAME_PREPOSITIONS = frozenset({"of", "for", "in", "at", "from", "about"})
_END = " \t\n\r\f\v?.!"
MIN_STATEMENT_WORDS = 3  # words of the reply before the fact, so the cue says which fact it is


def _first_lower(text: str) -> str:
    """Lower-case the first letter unless the first word is a name or an acronym (``Lokar``, ``VPN``)."""
    word = text.split(" ", 1)[0]
    return text[:1].lower() + text[1:] if word.lower() in FUNCTION_WORDS else text


def _strip_end(text: str) -> str:
    return text.strip().rstrip("?.! ").strip()


def wrapper(question: str, reply: str, fact: Expected) -> str | None:
    return WRAPPERS[zlib.crc32(question.encode()) % len(WRAPPERS)].format(q=question.strip())


def keywords(question: str, reply: str, fact: Expected) -> str | None:
    found = [w.rstrip(".") for w in re.findall(r"[\w'’.-]+", question) if w.strip(".")]
    words = [w for i, w in enumerate(found) if w.lower() not in FUNCTION_WORDS
             # "how" stays before a word that gives it its meaning: "how many", "how far", "how quickly"
             or (w.lower() == "how" and i + 1 < len(found) and found[i + 1].lower() not in FUNCTION_WORDS)]
    return " ".join(words) + "?" if len(words) >= 2 else None


def imperative(question: str, reply: str, fact: Expected) -> str | None:
    match = _WH.fullmatch(question.strip().rstrip(_END))
    return f"Tell me {match['rest']}." if match else None


def trailing_name(question: str) -> tuple[str, str] | None:
    """(head, name) of "<head> <of|for|in|at|from|about> <Capitalised Words>", the name being every capitalised
    word after the last such preposition; None otherwise. One pass over the words, whatever the text."""
    words = question.strip().rstrip(_END).split()
    start = len(words)
    while start > 0 and _NAME_WORD.fullmatch(words[start - 1]):
        start -= 1
    if start == len(words) or start < 2 or words[start - 1] not in _NAME_PREPOSITIONS:
        return None
    head = " ".join(words[:start - 1])
    return (head, " ".join(words[start:])) if len(head) >= 2 else None


def reorder(question: str, reply: str, fact: Expected) -> str | None:
    found = trailing_name(question)
    if found is None or found[0].split(" ", 1)[0].lower() not in FUNCTION_WORDS:
        return None  # only a question that starts with a function word reads well with its end moved first
    head, name = found
    return f"{name}: {_first_lower(head)}?"


def statement(question: str, reply: str, fact: Expected) -> str | None:
    start = fact_start(reply, fact)
    if start is None:
        return None
    cue = reply[:start].strip()
    if len(cue.split()) < MIN_STATEMENT_WORDS:
        return None
    return f"Complete: {cue} ..."


def fact_start(reply: str, fact: Expected) -> int | None:
    """Where ``reply`` first states its fact: the record's ``answer``, else its first derived span."""
    if fact.how == "answer":
        spans = fact_spans(reply, fact.spans[0].text)
        return spans[0][0] if spans else None
    return fact.spans[0].start if fact.spans else None


@dataclass(frozen=True)
class Kind:
    make: Callable[[str, str, Expected], str | None]
    help: str


# The extension point: a kind of variant is one function and one row; the config's choices come from here.
KINDS: dict[str, Kind] = {
    "wrapper": Kind(wrapper, "the question inside a conversational frame"),
    "keywords": Kind(keywords, "the question's content words only"),
    "imperative": Kind(imperative, "a what/which question as a request (Tell me ...)"),
    "reorder": Kind(reorder, "a trailing name moved to the front"),
    "statement": Kind(statement, "the reply to complete from its words before the fact (its `answer`, or the first "
                      "fact derived from the reply)"),
}


def variants(record: Record, kinds: list[str], fact: Expected | None = None) -> list[tuple[str, str]]:
    """(kind, prompt) for each variant of a single-question record, in ``kinds`` order; ``fact``: what its reply
    states (data/expected.py; derived from the record alone when not given)."""
    if not record.is_single_question():
        return []  # multi-turn conversations and plain text are trained as they are
    question, reply = (m["content"] for m in record.messages if m["role"] != "system")
    fact = fact if fact is not None else expected(record)
    seen = {normalize(question)}
    out = []
    for kind in kinds:
        prompt = KINDS[kind].make(question, reply, fact)
        if not prompt or normalize(prompt) in seen or fact.given_away_by(prompt):
            continue
        seen.add(normalize(prompt))
        out.append((kind, prompt))
    return out


def augment(train: list[Record], kinds: list[str]) -> tuple[list[Record], Counter[str]]:
    """The train split with every record's variants after it, and how many of each kind were made."""
    out: list[Record] = []
    made: Counter[str] = Counter()
    facts = expectations(train)
    for fact_id, (record, fact) in enumerate(zip(train, facts, strict=True)):
        meta = {**record.meta, "fact_id": fact_id}
        out.append(record.replace(meta=meta))
        system = [m for m in record.messages if m["role"] == "system"]
        for kind, prompt in variants(record, kinds, fact):
            messages = [*system, {"role": "user", "content": prompt}, dict(record.messages[-1])]
            out.append(record.replace(messages=messages, meta={**meta, "variant": kind}))
            made[kind] += 1
    return out, made
