"""The fact a correct answer must state, for any record: its ``answer`` where it has one, else what its
reply states that its question does not.

Users' alpaca, ShareGPT, chat and CSV data has full replies, rarely a short ``answer``. Scoring such
an answer by word overlap with the whole reply measures style, not facts (a full sentence holding the
exact identifier scored F1 0.02 against a reply that was the identifier alone). So each expected
reply's fact-bearing spans are derived from its text, one finder per kind (:data:`SPAN_KINDS`):
e-mail addresses, URLs, dates, times, codes, numbers, names, a yes/no, and the content words that
are new to the question. A span the question already states is not a fact of the reply.

An answer is correct when it states:

- every *specific* span (e-mail, URL, date, time, code, number, name), each compared as its kind
  reads it: numbers as numbers standing alone (``2`` is not in ``24 hours``; ``two`` is ``2``),
  dates and times as values (``12 March 2025`` is ``March 12, 2025``; ``2 pm`` is ``14:00``), the
  rest as whole words ignoring case and accents; else
- the reply's yes or no, where the reply starts with one; else
- at least half of the reply's new content words (compared by stem): a reply of words only, which
  another wording of the same content still matches.

Nothing here knows a domain: the word lists (data/words.py) are English grammar, units and currencies.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from private_finetuning.data.facts import fact_match, normalize
from private_finetuning.data.words import STOP_WORDS, UNIT_WORDS

if TYPE_CHECKING:
    from private_finetuning.data.record import Record

Found = Iterator[tuple[int, int]]  # character spans of a reply

# --- numbers: standing alone, with thousands separators, or as words --------------------------------
_NUMBER = re.compile(r"(?<![\w.,])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+|,\d{1,2}(?!\d))?")
_NUMBER_NAMES = ("zero one two three four five six seven eight nine "
                 "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen "
                 "twenty thirty forty fifty sixty seventy eighty ninety")
_UNITS, _TEENS, _TENS = (_NUMBER_NAMES.split()[a:b] for a, b in ((0, 10), (10, 20), (20, 28)))
NUMBER_WORDS = {w: i for i, w in enumerate(_UNITS + _TEENS)} | {w: 20 + 10 * i for i, w in enumerate(_TENS)}
_NUMBER_WORD = re.compile(rf"(?<![\w-])(?:(?:{'|'.join(_TENS)})(?:[- ](?:{'|'.join(_UNITS[1:])}))?"
                          rf"|{'|'.join(_TEENS + _UNITS)})(?![\w-])", re.IGNORECASE)
_UNIT_SUFFIX = re.compile(r"\d+(?:[.,]\d+)?[a-z]{1,3}")  # 24h, 5kg, 2nd: a number and its unit, not a code


def number_value(text: str) -> float | None:
    """The value of one number as written: ``1,200`` is 1200, ``84,5`` is 84.5, ``two`` is 2."""
    text = text.strip()
    words = re.split(r"[- ]", text.lower())
    if all(w in NUMBER_WORDS for w in words):
        return float(sum(NUMBER_WORDS[w] for w in words))
    if not _NUMBER.fullmatch(text):
        return None
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        return float(text.replace(",", ""))
    return float(text.replace(",", "."))


# Each fact of a reply is looked for in the same answer: what an answer states is read once, not per fact.
@functools.lru_cache(maxsize=64)
def numbers_in(text: str) -> tuple[float, ...]:
    """Every number ``text`` states, standing alone (not the 4 of ``A4``), digits or words."""
    values = [number_value(m.group()) for m in _NUMBER.finditer(text)]
    values += [number_value(m.group()) for m in _NUMBER_WORD.finditer(text)]
    return tuple(v for v in values if v is not None)


def _find_numbers(reply: str, question: str) -> Found:
    for m in _NUMBER.finditer(reply):
        yield m.span()
    for m in _NUMBER_WORD.finditer(reply):
        if m.group().lower() not in ("one", "zero"):  # "one of", "zero in on": rarely the fact
            yield m.span()


def _number_stated(text: str, answer: str) -> bool:
    value = number_value(text)
    return value is not None and any(math.isclose(v, value) for v in numbers_in(answer))


# --- dates and times, compared as values -------------------------------------------------------------
_MONTH_NAMES = ("january february march april may june july august september october november december "
                "jan feb mar apr may jun jul aug sep oct nov dec")
_MONTHS = {name: i % 12 + 1 for i, name in enumerate(_MONTH_NAMES.split())} | {"sept": 9}
_MONTH = r"(?P<month>" + "|".join(sorted((m.capitalize() for m in _MONTHS), key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"
_YEAR = r"(?P<year>\d{4})"
_DATES = [re.compile(p) for p in (
    r"(?<!\d)(?P<year>\d{4})-(?P<month>[01]?\d)-(?P<day>[0-3]?\d)(?!\d)",
    rf"(?<![\w]){_DAY}(?:\s+of)?\s+{_MONTH}(?:,?\s+{_YEAR})?(?!\w)",
    rf"(?<![\w]){_MONTH}\s+{_DAY}(?!\d)(?:,?\s+{_YEAR})?(?!\w)",
    rf"(?<![\w]){_MONTH}\s+{_YEAR}(?!\w)",
    r"(?<![\d/])\d{1,2}/\d{1,2}/\d{2,4}(?![\d/])",  # 03/04/2025: which is the month depends on the writer
)]
DateValue = tuple[int | None, int, int | None]  # year, month, day


def _date_value(match: re.Match[str]) -> DateValue | None:
    groups = match.groupdict()
    if "month" not in groups:
        return None
    month = groups["month"]
    number = int(month) if month.isdigit() else _MONTHS[month.lower().rstrip(".")]
    year, day = groups.get("year"), groups.get("day")
    return (int(year) if year else None, number, int(day) if day else None)


def _dates(text: str) -> Iterator[tuple[re.Match[str], DateValue | None]]:
    taken: list[tuple[int, int]] = []
    for pattern in _DATES:
        for m in pattern.finditer(text):
            if not any(s < m.end() and m.start() < e for s, e in taken):
                taken.append(m.span())
                yield m, _date_value(m)


def _find_dates(reply: str, question: str) -> Found:
    return (m.span() for m, _ in _dates(reply))


@functools.lru_cache(maxsize=64)
def _dates_in(text: str) -> tuple[DateValue | None, ...]:
    return tuple(value for _, value in _dates(text))


def _date_stated(text: str, answer: str) -> bool:
    wanted = next((value for _, value in _dates(text)), None)
    if wanted is None:
        return _text_stated(text, answer)
    year, month, day = wanted
    return any(v is not None and v[1] == month and (day is None or v[2] == day) and (year is None or v[0] == year)
               for v in _dates_in(answer))


_TIME = re.compile(r"(?<![\d:.])(?P<hour>[0-2]?\d)(?::(?P<minute>[0-5]\d))?\s*(?P<half>[ap])(?:\.m\.|m)(?!\w)"
                   r"|(?<![\d:.])(?P<hour24>[0-2]?\d):(?P<minute24>[0-5]\d)(?![\d:])", re.IGNORECASE)


def _minutes(m: re.Match[str]) -> int:
    if m["hour24"] is not None:
        return int(m["hour24"]) * 60 + int(m["minute24"])
    hour = int(m["hour"]) % 12 + (12 if m["half"].lower() == "p" else 0)
    return hour * 60 + int(m["minute"] or 0)


def _find_times(reply: str, question: str) -> Found:
    return (m.span() for m in _TIME.finditer(reply))


@functools.lru_cache(maxsize=64)
def _times_in(text: str) -> frozenset[int]:
    return frozenset(_minutes(m) for m in _TIME.finditer(text))


def _time_stated(text: str, answer: str) -> bool:
    wanted = [_minutes(m) for m in _TIME.finditer(text)]
    return bool(wanted) and wanted[0] in _times_in(answer)


# --- codes, e-mail addresses, URLs: compared as written, ignoring case ------------------------------
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"']+")
# A token of letters and digits joined by - _ . /; a code when it holds both (checked after matching: a
# lookahead over the token would scan it again from every position).
_TOKEN = re.compile(r"(?<![\w@/.-])[A-Za-z0-9]+(?:[-_./][A-Za-z0-9]+)*(?![\w@-])")


def _regex_finder(pattern: re.Pattern[str]) -> Callable[[str, str], Found]:
    def find(reply: str, question: str) -> Found:
        for m in pattern.finditer(reply):
            yield m.start(), m.start() + len(m.group().rstrip(".,;:!?)"))
    return find


def _find_codes(reply: str, question: str) -> Found:
    for m in _TOKEN.finditer(reply):
        token = m.group()
        if re.search(r"[A-Za-z]", token) and re.search(r"\d", token) and not _UNIT_SUFFIX.fullmatch(token):
            yield m.span()


_normalized = functools.lru_cache(maxsize=64)(normalize)


def _text_stated(text: str, answer: str) -> bool:
    """``text`` as whole words of ``answer``, ignoring case, accents and spacing (as data/facts.py compares)."""
    wanted = normalize(text)
    return bool(wanted) and re.search(rf"(?<!\w){re.escape(wanted)}(?!\w)", _normalized(answer)) is not None


# --- names: capitalised words the question did not say ----------------------------------------------
_WORD = re.compile(r"[^\W\d_][\w'’-]*")
_SENTENCE_END = ".!?:;\n*•"


def _sentence_initial(text: str, start: int) -> bool:
    before = text[:start].rstrip(" \t\"'(“‘-")
    return not before or before[-1] in _SENTENCE_END


def _capitalised_runs(reply: str) -> Iterator[list[re.Match[str]]]:
    """Runs of capitalised words separated by single spaces or hyphens."""
    run: list[re.Match[str]] = []
    for m in _WORD.finditer(reply):
        if m.group()[0].isupper() and (not run or reply[run[-1].end():m.start()] in (" ", "-")):
            run.append(m)
            continue
        if run:
            yield run
        run = [m] if m.group()[0].isupper() else []
    if run:
        yield run


def _find_names(reply: str, question: str) -> Found:
    said = {w.lower() for w in _WORD.findall(question)}
    for run in _capitalised_runs(reply):
        if len(run) == 1 and _sentence_initial(reply, run[0].start()):
            continue  # "Staff in ...": a capital of the sentence, not of a name (a new one is a content word)
        part: list[re.Match[str]] = []
        for m in [*run, None]:
            word = m.group().lower() if m is not None else ""
            if m is not None and word not in said and word not in STOP_WORDS and word not in UNIT_WORDS \
                    and word != "i":
                part.append(m)
                continue
            if part:
                yield part[0].start(), part[-1].end()
            part = []


# --- content words new to the question --------------------------------------------------------------
def stem(word: str) -> str:
    """A crude English stem, enough to tell ``headquartered`` was said by ``headquarters``."""
    word = "".join(c for c in unicodedata.normalize("NFKD", word.lower()) if not unicodedata.combining(c))
    word = word.replace("’", "'").removesuffix("'s")
    if word.endswith(("ss", "us", "is")):
        return word  # express, status, analysis: not plurals
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", ""), ("ly", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + repl
    return word


def _find_words(reply: str, question: str) -> Found:
    said = {stem(w) for w in _WORD.findall(question)}
    for m in _WORD.finditer(reply):
        word = m.group().lower()
        if len(word) >= 3 and word not in STOP_WORDS and word not in UNIT_WORDS and stem(word) not in said:
            yield m.span()


@functools.lru_cache(maxsize=64)
def _stems_in(text: str) -> frozenset[str]:
    return frozenset(stem(w) for w in _WORD.findall(text))


def _word_stated(text: str, answer: str) -> bool:
    return stem(text) in _stems_in(answer)


# --- yes or no ---------------------------------------------------------------------------------------
_YES, _NO = frozenset({"yes", "yeah", "yep", "sure", "correct"}), frozenset({"no", "nope"})
_NEGATION = re.compile(r"\b(?:not|no|never|cannot|none|nobody|nothing|neither|nor)\b|n['’]t\b", re.IGNORECASE)


def polarity(text: str) -> str:
    """"yes" or "no": the first word where it is one, else whether the text negates."""
    first = (_WORD.findall(text) or [""])[0].lower()
    if first in _YES or first in _NO:
        return "yes" if first in _YES else "no"
    return "no" if _NEGATION.search(text) else "yes"


def _find_polarity(reply: str, question: str) -> Found:
    first = _WORD.search(reply)
    if first is not None and first.group().lower() in _YES | _NO and first.start() <= 2:
        yield first.span()


def _polarity_stated(text: str, answer: str) -> bool:
    return polarity(answer) == polarity(text)


@dataclass(frozen=True)
class SpanKind:
    name: str
    help: str
    find: Callable[[str, str], Found]  # (reply, question) -> character spans of the reply
    stated: Callable[[str, str], bool]  # (span text, answer) -> does the answer state it
    tier: int  # 0: every span must be stated; 1: the yes/no (when no tier 0); 2: half of the words (else)


# The extension point: a kind of fact is one row. Earlier rows claim their characters first (a date's
# year is not also a number, a code's digits not a number).
SPAN_KINDS: tuple[SpanKind, ...] = (
    SpanKind("email", "e-mail addresses, as written", _regex_finder(_EMAIL), _text_stated, 0),
    SpanKind("url", "web addresses, as written", _regex_finder(_URL), _text_stated, 0),
    SpanKind("date", "dates, as values (12 March 2025 = 2025-03-12)", _find_dates, _date_stated, 0),
    SpanKind("time", "times of day, as values (2 pm = 14:00)", _find_times, _time_stated, 0),
    SpanKind("code", "identifiers of letters and digits (KAL-GW-42, v3.2)", _find_codes, _text_stated, 0),
    SpanKind("number", "numbers standing alone, as values (2 is not in 24; two = 2)", _find_numbers,
             _number_stated, 0),
    SpanKind("name", "capitalised names the question did not say", _find_names, _text_stated, 0),
    SpanKind("yes/no", "a reply's leading yes or no, against the answer's polarity", _find_polarity,
             _polarity_stated, 1),
    SpanKind("words", "content words new to the question (half must be stated)", _find_words, _word_stated, 2),
)
KINDS_BY_NAME = {k.name: k for k in SPAN_KINDS}


@dataclass(frozen=True)
class Span:
    kind: str  # a row of SPAN_KINDS, or "answer" for the record's own
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Expected:
    """What a correct answer to one record states, and how that was decided."""

    how: str  # "answer" (the record's own), "derived" (from its reply) or "none" (nothing to check)
    spans: tuple[Span, ...]
    label: str  # the kind of fact, for accuracy by kind: the record's ``fact``, else its spans' kinds

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted({s.kind for s in self.spans}))

    def met_by(self, answer: str) -> bool | None:
        """Does ``answer`` state the fact? None when there is nothing to check."""
        if self.how == "none" or not self.spans:
            return None
        if self.how == "answer":
            return fact_match(answer, self.spans[0].text)
        stated = [KINDS_BY_NAME[s.kind].stated(s.text, answer) for s in self.spans]
        if self.spans[0].kind == "words":
            return sum(stated) >= math.ceil(len(stated) / 2)
        return all(stated)

    def given_away_by(self, prompt: str) -> bool:
        """Does a prompt already state the fact (a question variant that would teach copying, not recall)? Only
        specific facts can be given away: a yes/no or a reply's words are not stated by asking."""
        if self.how == "answer" or (self.spans and KINDS_BY_NAME[self.spans[0].kind].tier == 0):
            return bool(self.met_by(prompt))
        return False


# A reply stating more facts than this is a document, not an answer: its first ones are checked (each is
# looked for in the whole answer, so an unbounded number would make scoring one row quadratic in its length).
MAX_SPANS = 32


def derive(question: str, reply: str, topic: frozenset[str] = frozenset()) -> tuple[Span, ...]:
    """The spans of ``reply`` that decide whether an answer to ``question`` is right: its specific spans if
    it has any, else its yes/no, else its new content words. Names in ``topic`` (lower case) are not facts."""
    claimed = bytearray(len(reply))  # per character: taken by an earlier span (linear, however many spans)
    tiers: dict[int, list[Span]] = {}
    for kind in SPAN_KINDS:
        for start, end in kind.find(reply, question):
            if end <= start or any(claimed[start:end]):
                continue
            text = reply[start:end]
            claimed[start:end] = b"\x01" * (end - start)
            if kind.tier == 0 and (kind.stated(text, question) or (kind.name == "name" and text.lower() in topic)):
                continue  # the question says it already, or the data's every other reply: not what this one tells
            tiers.setdefault(kind.tier, []).append(Span(kind.name, text, start, end))
    for tier in sorted(tiers):
        return tuple(sorted(tiers[tier], key=lambda s: s.start)[:MAX_SPANS])
    return ()


def expected(record: Record, topic: frozenset[str] = frozenset()) -> Expected:
    """The fact ``record``'s reply states: its ``answer`` where it has one, else derived from the reply."""
    if record.answer is not None:
        return Expected("answer", (Span("answer", record.answer, 0, 0),), record.fact_kind)
    if not record.asks_question():
        return Expected("none", (), "unscored")
    spans = derive(record.question, record.reply, topic)
    if not spans:
        return Expected("none", (), "unscored")
    label = record.meta.get("fact") or "+".join(sorted({s.kind for s in spans}))
    return Expected("derived", spans, label)


TOPIC_SHARE = 0.2  # a name in at least this share of the replies (and in 3 or more) is what the data is about


def topic_names(records: list[Record]) -> frozenset[str]:
    """Names so common in the replies that they are the data's subject (the company's own name), not a
    fact of any one reply: an answer that leaves them out still answers."""
    counts: Counter[str] = Counter()
    for record in records:
        if record.answer is None and record.asks_question():
            counts.update({s.text.lower() for s in derive(record.question, record.reply) if s.kind == "name"})
    least = max(3, TOPIC_SHARE * len(records))
    return frozenset(name for name, count in counts.items() if count >= least)


def expectations(records: list[Record]) -> list[Expected]:
    """:func:`expected` of each record, the data's topic names taken from the records together."""
    topic = topic_names(records)
    return [expected(r, topic) for r in records]


def fact_accuracy(records: list[Record], answers: list[str]) -> float | None:
    """Share of ``answers`` stating their record's fact; None when no record has one to check."""
    scored = [e.met_by(a) for e, a in zip(expectations(records), answers, strict=True)]
    checked = [s for s in scored if s is not None]
    return sum(checked) / len(checked) if checked else None
