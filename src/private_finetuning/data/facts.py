"""Does a reply state the expected fact? Plain text functions, used to check data and to score answers.

Numbers are compared as numbers (``84`` matches ``84 EUR`` and ``84.0`` but not ``184``), text
ignoring case, accents and spacing. Token F1 (as in SQuAD) grades a reply against a reference when
a record carries no short answer.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter

_NUMBER = re.compile(r"(?<![\d.,])-?\d+(?:[.,]\d+)?")
_STATED_NUMBER = re.compile(r"(?<![\w.,])\d+(?:[.,]\d+)?")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"[^\w%.,-]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _as_number(text: str) -> float | None:
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    return float(text.replace(",", "."))


def _numbers_equal_to(text: str, value: float) -> list[re.Match[str]]:
    """The numbers ``text`` states that equal ``value`` (``84`` and ``84.0``, not ``184``)."""
    return [m for m in _NUMBER.finditer(text) if math.isclose(float(m.group().replace(",", ".")), value)]


def fact_match(answer: str, expected: str) -> bool:
    """True when ``answer`` states ``expected``: as a number if it is one, else as whole words."""
    value = _as_number(expected)
    if value is not None:
        return bool(_numbers_equal_to(answer, value))
    wanted = normalize(expected)
    if not wanted:
        return False
    return re.search(rf"(?<!\w){re.escape(wanted)}(?!\w)", normalize(answer)) is not None


def fact_spans(text: str, expected: str) -> list[tuple[int, int]]:
    """Character spans of ``text`` that state ``expected``: numbers as :func:`fact_match` reads them,
    text as whole words ignoring case and accents but, unlike :func:`fact_match`, with the spacing and
    punctuation as written (spans of the text itself, so training can weigh the tokens of the fact)."""
    value = _as_number(expected)
    if value is not None:
        return [m.span() for m in _numbers_equal_to(text, value)]
    wanted = _plain(expected.strip())[0]
    if not wanted:
        return []
    plain, origin = _plain(text)
    origin.append(len(text))
    return [(origin[m.start()], origin[m.end()])
            for m in re.finditer(rf"(?<!\w){re.escape(wanted)}(?!\w)", plain, re.IGNORECASE)]


def number_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of every number ``text`` states (not digits inside a word, like a model name's)."""
    return [m.span() for m in _STATED_NUMBER.finditer(text)]


def _plain(text: str) -> tuple[str, list[int]]:
    """``text`` without accents, and for each of its characters the index it came from."""
    chars, origin = [], []
    for i, char in enumerate(text):
        for part in unicodedata.normalize("NFKD", char):
            if not unicodedata.combining(part):
                chars.append(part)
                origin.append(i)
    return "".join(chars), origin


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall of ``prediction`` against ``reference`` (normalized words)."""
    predicted, expected = normalize(prediction).split(), normalize(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)
