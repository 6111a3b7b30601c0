"""Questions and statements of a fact written by a language model: the prompts, and the checks every text passes.

Knowledge injection needs each fact in diverse forms (Allen-Zhu & Li, *Physics of Language Models 3.1*;
Abonizio et al. 2025: model-generated rephrasings beat plain training, and a model's own serve about as
well as a larger one's). The rules of data/augment.py vary a question's frame; a model can vary its
words. This module is the text side, knowing nothing of models (training/augmentation.py runs the
generator): one few-shot prompt per kind (:data:`GEN_KINDS`), the same for every dataset, whose examples
are invented facts of no user's domain; and the checks a generated text must pass to be trained on:

- a question names its record's entity (every name or code its question has) and does not state the fact;
- a statement states the fact exactly (:meth:`Expected.met_by`) and names the entity;
- neither brings a name the record does not have (a small model copies the prompt's examples' names or
  invents others), nor repeats the question, a rule variant or another generated text, nearly or exactly.

What is dropped is counted by reason, never logged as text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from private_finetuning.data.expected import number_value
from private_finetuning.data.facts import normalize
from private_finetuning.data.words import FUNCTION_WORDS

if TYPE_CHECKING:
    from private_finetuning.data.expected import Expected

PROMPT_VERSION = 1  # part of the generation cache's key: a changed prompt generates again

_EXAMPLES = (
    ("How long is the warranty on the Orbix kettle?", "The Orbix kettle comes with a warranty of 3 years.",
     ("For how many years is the Orbix kettle covered?", "What warranty period applies to an Orbix kettle?",
      "If I buy the Orbix kettle, how long does its guarantee last?"),
     ("An Orbix kettle is covered for 3 years.", "The warranty on the Orbix kettle lasts 3 years.",
      "Buyers of the Orbix kettle get a 3 year warranty.")),
    ("Who leads the Tamsel choir?", "The Tamsel choir is led by Ingrid Valo.",
     ("Which person conducts the choir in Tamsel?", "Who is in charge of the Tamsel choir?",
      "Under whose direction does the Tamsel choir sing?"),
     ("Ingrid Valo leads the Tamsel choir.", "The choir of Tamsel is conducted by Ingrid Valo.",
      "In Tamsel, the choir's leader is Ingrid Valo.")),
)


def _few_shot(what: str, header: str, pick: int) -> str:
    """The prompt: an instruction, the examples' facts each with three texts of the kind, and the fact to write for,
    ending on "1." so a completion continues the numbered list."""
    blocks = [f"Fact: Q: {q} A: {r}\n{header}:\n" + "\n".join(f"{i}. {t}" for i, t in enumerate(ex[pick], 1))
              for q, r, *ex in _EXAMPLES]
    return (f"Each fact below is followed by three {what}, in other words.\n\n" + "\n\n".join(blocks)
            + "\n\nFact: Q: {question} A: {reply}\n" + header + ":\n1.")


_WORD = re.compile(r"[\w'’.-]+")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s*")
MIN_WORDS, MAX_WORDS = 3, 40
NEAR_DUPLICATE = 0.8  # word-set Jaccard at or above which two texts say the same thing


def _words(text: str) -> set[str]:
    return {w.strip(".'’-").lower() for w in _WORD.findall(text) if w.strip(".'’-")}


def entity_words(question: str) -> set[str]:
    """The words that say what a question is about: its names and codes (``Lokar``, ``7B``, ``KAL-GW-42``), in
    lower case; a capitalised function word opening a sentence ("What") is not one."""
    found = set()
    for word in _WORD.findall(question):
        word = word.strip(".'’-")
        if word and (word[0].isupper() or any(c.isdigit() for c in word)) and word.lower() not in FUNCTION_WORDS:
            found.add(word.lower())
    return found


def parse(completion: str) -> list[str]:
    """The numbered lines a completion continues the prompt's list with (the prompt ends on "1."), up to the first
    blank line or the next "Fact:"."""
    lines = ("1." + completion).split("\n")
    out = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("Fact:"):
            break
        text = _NUMBERED.sub("", line).strip()
        if text:
            out.append(text)
    return out


def _common(text: str, question: str, reply: str) -> str | None:
    words = _words(text)
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return "length"
    known = _words(question) | _words(reply)
    first = (_WORD.findall(text) or [""])[0].strip(".'’-").lower()
    for word in entity_words(text) - known:
        if word != first or any(c.isdigit() for c in word):  # a sentence's first word is capitalised anyway
            return "foreign name"  # the prompt's example names, or an invented entity
    if not entity_words(question) <= words:
        return "entity missing"
    return None


# What a question's first wh-word asks for, as the kinds of fact (data/expected.py) that can answer it: a small
# model often asks "who" of a floor or "is it..." of a code, and training that pairs the question with the
# reply would teach the entity's other facts as answers to it.
_ASKS = (("who", {"name", "answer-name"}), ("whom", {"name", "answer-name"}), ("whose", {"name", "answer-name"}),
         ("how many", {"number", "answer-number"}), ("how much", {"number", "answer-number"}),
         ("when", {"date", "time", "number", "answer-number", "answer-date"}))
_YES_NO = re.compile(r"(?:is|are|was|were|do|does|did|has|have|will|would|should|can|could)\b(?!\s+you\s+tell)",
                     re.IGNORECASE)


def answer_kinds(fact: Expected) -> set[str]:
    """The kinds of the fact a question must ask for: derived spans' kinds, or what the record's ``answer`` reads as."""
    if fact.how != "answer":
        return set(fact.kinds)
    text = fact.spans[0].text.strip()
    if number_value(text) is not None:
        return {"answer-number"}
    if re.search(r"\d{4}-\d{1,2}-\d{1,2}|\b\d{1,2} [A-Z][a-z]+ \d{4}\b", text):
        return {"answer-date"}
    if text[:1].isupper() and not any(c.isdigit() for c in text):
        return {"answer-name"}
    return {"answer-text"}


def asks_for(text: str) -> set[str] | None:
    """The kinds of fact a question can be answered by, by its first wh-word; None when it does not say."""
    lowered = text.lower()
    if _YES_NO.match(lowered):
        return {"yes/no"}
    found = [(m.start(), kinds) for word, kinds in _ASKS for m in [re.search(rf"\b{word}\b", lowered)] if m]
    return min(found, key=lambda f: f[0])[1] if found else None


def check_question(text: str, question: str, reply: str, fact: Expected) -> str | None:
    """Why a generated question cannot be trained on, or None when it can."""
    if not text.endswith("?"):
        return "not a question"
    if fact.given_away_by(text):
        return "states the fact"
    wanted = asks_for(text)
    if wanted is not None and not wanted & answer_kinds(fact) and asks_for(question) != wanted:
        return "asks for another kind"
    return _common(text, question, reply)


def check_statement(text: str, question: str, reply: str, fact: Expected) -> str | None:
    """Why a generated statement cannot be trained on, or None when it can."""
    if text.endswith("?"):
        return "not a statement"
    if fact.how == "none" or not fact.met_by(text):
        return "fact missing"
    return _common(text, question, reply)


@dataclass(frozen=True)
class GenKind:
    prompt: str  # str.format'ed with question and reply
    check: Callable[[str, str, str, Expected], str | None]
    help: str


# The extension point: a kind of generated text is one row (a prompt and its check).
GEN_KINDS: dict[str, GenKind] = {
    "question": GenKind(_few_shot("different questions a person could ask to get it", "Questions", 0), check_question,
                        "other questions that ask for the fact, naming its entity, never stating it"),
    "statement": GenKind(_few_shot("different sentences that state it", "Statements", 1), check_statement,
                         "the fact stated in other sentences, its value exactly as the reply has it"),
}


def prompt(kind: str, question: str, reply: str) -> str:
    return "".join(prompt_parts(kind, question, reply))


def prompt_parts(kind: str, question: str, reply: str) -> tuple[str, str]:
    """The prompt as (the part every record shares, the record's own part), split before the space that opens the
    record's question, so the two tokenize as the whole does (the generator computes the first once)."""
    shared, _, own = GEN_KINDS[kind].prompt.partition(" {question}")
    return shared, (" {question}" + own).format(question=" ".join(question.split()), reply=" ".join(reply.split()))


def _near(words: set[str], others: list[set[str]]) -> bool:
    return any(len(words & o) / max(1, len(words | o)) >= NEAR_DUPLICATE for o in others)


def select(kind: str, candidates: list[str], question: str, reply: str, fact: Expected, seen: list[str],
           limit: int) -> tuple[list[str], Counter[str]]:
    """The first ``limit`` candidates that pass the kind's check and are not (nearly) one of ``seen`` (the
    question, the rule variants) or of each other; and the reasons the others were dropped."""
    kept: list[str] = []
    dropped: Counter[str] = Counter()
    exact = {normalize(t) for t in seen}
    sets = [_words(t) for t in seen]
    for text in candidates:
        reason = GEN_KINDS[kind].check(text, question, reply, fact)
        if reason is None and (normalize(text) in exact or _near(_words(text), sets)):
            reason = "duplicate"
        if reason is None and len(kept) >= limit:
            reason = "over the limit"
        if reason:
            dropped[reason] += 1
            continue
        kept.append(text)
        exact.add(normalize(text))
        sets.append(_words(text))
    return kept, dropped
