"""Personal data in the dataset, found with Microsoft Presidio: counted, redacted or refused (privacy.pii).

A model trained to recall a record's facts recalls the e-mail address and the phone number in the same
record too, and its GGUF and Ollama exports leave the cluster by design. So the dataset stage scans
every message of every record before anything is published, and the evaluation audits what the model
gives away (evaluation/privacy.py). Findings are counted by type and split, never written out: a
value never reaches a log, an error, the manifest or the report.

The recognisers (:data:`ENTITIES`) are Presidio's pattern recognisers: e-mail addresses, phone numbers
(``phonenumbers``), credit-card numbers (Luhn-checked), IBANs (checksum-checked), IP addresses. Person
names need a named-entity model, which no package on PyPI from spaCy's authors carries: they are not
scanned (docs/privacy.md says so, the manifest lists the recognisers that ran). Presidio runs on a
blank English spaCy pipeline (tokens only); an e-mail address counts whatever its domain (internal
ones too), and ``tldextract`` (which Presidio imports for it) reads its bundled suffix list: nothing
is fetched.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from private_finetuning.errors import InputDataError

if TYPE_CHECKING:
    from private_finetuning.data.record import Record


@dataclass(frozen=True)
class Entity:
    name: str  # ours: the counts' key, the config's and the placeholder's word
    presidio: str  # Presidio's entity type
    help: str


# The extension point: a kind of personal data is one row (and one Presidio recogniser).
ENTITIES: tuple[Entity, ...] = (
    Entity("email", "EMAIL_ADDRESS", "e-mail addresses"),
    Entity("phone", "PHONE_NUMBER", "phone numbers (international, or national in the US, UK, DE, FR, IL, IN, CA, BR)"),
    Entity("credit_card", "CREDIT_CARD", "credit-card numbers, Luhn-checked"),
    Entity("iban", "IBAN_CODE", "IBANs, checksum-checked"),
    Entity("ip_address", "IP_ADDRESS", "IPv4 and IPv6 addresses"),
)
BY_PRESIDIO = {e.presidio: e for e in ENTITIES}
MIN_SCORE = 0.4  # Presidio's phone recogniser scores a valid number 0.4; weaker matches are not findings
# phonenumbers takes some 4-digit numbers for short codes of some region ("site 1640" was a phone): a number of
# fewer digits than a subscriber's is an extension or a count, not a way to reach a person.
MIN_PHONE_DIGITS = 7


@dataclass(frozen=True)
class Finding:
    record: int  # index of the record in what was scanned
    message: int  # index of the message in the record
    entity: str  # a row of ENTITIES
    start: int
    end: int


@contextlib.contextmanager
def _hidden(*modules: str) -> Iterator[None]:
    """Import with ``modules`` unimportable, where this process has not loaded them: Presidio's package imports its
    optional transformers engine, and spaCy's thinc imports torch, 4 s of the dataset stage's 6 on 2 cores, for
    pattern recognisers that need neither. Both guard those imports (ImportError: not installed); afterwards the
    modules import normally again."""
    hidden = [m for m in modules if m not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


@functools.cache
def _analyzer() -> Any:
    with _hidden("transformers", "torch"):
        import spacy
        import tldextract.tldextract as tld
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
        )

    # Presidio's e-mail recogniser calls tldextract, whose default fetches the public suffix list.
    tld.TLD_EXTRACTOR = tld.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class AnyDomainEmail(EmailRecognizer):
        """A company's data holds its internal domains (corp.internal, site.example), which no public suffix list
        has: an address is personal data whatever its domain."""

        def validate_result(self, pattern_text: str) -> bool:
            return True

    class TokensOnly(SpacyNlpEngine):  # no named-entity model to load: a blank English pipeline
        def load(self) -> None:
            self.nlp = {"en": spacy.blank("en")}

    engine = TokensOnly(models=[{"lang_code": "en", "model_name": "blank-en"}])
    engine.load()
    registry = RecognizerRegistry(recognizers=[AnyDomainEmail(), PhoneRecognizer(), CreditCardRecognizer(),
                                               IbanRecognizer(), IpRecognizer()], supported_languages=["en"])
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


def recognisers() -> list[str]:
    """Our names of the kinds of personal data scanned for (for the manifest and the docs)."""
    return [e.name for e in ENTITIES]


def scan_text(text: str) -> list[tuple[str, int, int]]:
    """(entity, start, end) of each piece of personal data in ``text``, overlaps resolved to the surest."""
    found = _analyzer().analyze(text=text, language="en", entities=list(BY_PRESIDIO), score_threshold=MIN_SCORE)
    spans: list[tuple[str, int, int]] = []
    for r in sorted(found, key=lambda r: (-r.score, r.start)):
        if r.entity_type == "PHONE_NUMBER" and sum(c.isdigit() for c in text[r.start:r.end]) < MIN_PHONE_DIGITS:
            continue
        if not any(s < r.end and r.start < e for _, s, e in spans):
            spans.append((BY_PRESIDIO[r.entity_type].name, r.start, r.end))
    return sorted(spans, key=lambda s: s[1])


def scan(records: list[Record]) -> list[Finding]:
    """Every finding in every message of ``records``."""
    return [Finding(i, j, entity, start, end)
            for i, record in enumerate(records) for j, message in enumerate(record.messages)
            for entity, start, end in scan_text(message["content"])]


def placeholder(entity: str) -> str:
    return f"<{entity.upper()}>"


def redact(record: Record, findings: list[Finding]) -> Record:
    """``record`` with each finding replaced by its typed placeholder (``<EMAIL>``); its ``answer`` too where it
    held one, so the record still states its own answer."""
    messages = [dict(m) for m in record.messages]
    for j, message in enumerate(messages):
        text = message["content"]
        for f in sorted((f for f in findings if f.message == j), key=lambda f: f.start, reverse=True):
            text = text[:f.start] + placeholder(f.entity) + text[f.end:]
        message["content"] = text
    meta = dict(record.meta)
    if isinstance(meta.get("answer"), str):
        for entity, start, end in sorted(scan_text(meta["answer"]), key=lambda s: s[1], reverse=True):
            meta["answer"] = meta["answer"][:start] + placeholder(entity) + meta["answer"][end:]
    return record.replace(messages=messages, meta=meta)


def counts(findings: list[Finding]) -> dict[str, int]:
    tally = Counter(f.entity for f in findings)
    return {e.name: tally[e.name] for e in ENTITIES if tally[e.name]}


def refuse(findings: list[Finding], where: str) -> None:
    """Stop the stage naming the kinds of personal data and the records holding it (numbers, never values)."""
    numbers = sorted({f.record + 1 for f in findings})
    shown = ", ".join(map(str, numbers[:20])) + (f" and {len(numbers) - 20} more" if len(numbers) > 20 else "")
    kinds = ", ".join(f"{k} {n}" for k, n in counts(findings).items())
    raise InputDataError(where, f"holds personal data ({kinds}) in records {shown} (1 = the first record read); "
                         "privacy.pii is refuse, so nothing is published: remove it, or set privacy.pii to redact")
