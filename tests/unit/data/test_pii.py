"""Personal data in a dataset: what the scan finds, and what redact and refuse do with it. The planted data is
made up (documentation domains and IP ranges, fictional 555 and Ofcom drama numbers, published test card and
IBAN numbers): never real people's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO
from private_finetuning.data import pii
from private_finetuning.data.acmehotels import embedded_path
from private_finetuning.data.record import Record
from private_finetuning.errors import InputDataError

# (reply, entity, the planted value) in records of a clinic, a school and a web shop
PLANTED = [
    ("Write to the Lenmi ward nurse at nurse.lenmi@clinic.example.org for visiting times.", "email",
     "nurse.lenmi@clinic.example.org"),
    ("The Orvel school office answers on +1 415-555-0134 on weekdays.", "phone", "+1 415-555-0134"),
    ("Call the Harrow Lane desk on +44 20 7946 0958 before noon.", "phone", "+44 20 7946 0958"),
    ("The refund went to card 4111 1111 1111 1111 on Monday.", "credit_card", "4111 1111 1111 1111"),
    ("Supplier Vezu is paid to IBAN DE89 3704 0044 0532 0130 00 each month.", "iban",
     "DE89 3704 0044 0532 0130 00"),
    ("The Garvi printer is at 192.0.2.15 on the office network.", "ip_address", "192.0.2.15"),
    ("Ask payroll on payroll@corp.internal, an internal domain.", "email", "payroll@corp.internal"),
]


def record(reply: str, question: str = "How do I reach them?", **meta: str) -> Record:
    return Record([{"role": "user", "content": question}, {"role": "assistant", "content": reply}], dict(meta))


@pytest.mark.parametrize(("reply", "entity", "value"), PLANTED)
def test_every_planted_piece_is_found_exactly(reply: str, entity: str, value: str) -> None:
    found = pii.scan_text(reply)
    assert [(e, reply[s:t]) for e, s, t in found] == [(entity, value)]


@pytest.mark.parametrize("text", ["Tell me about site 1640.", "Call extension 4471.", "Founded in 2019, 1,450 EUR.",
                                  "Version 3.12.1 of KAL-GW-42 on floor 14."])
def test_numbers_that_reach_nobody_are_not_phone_numbers(text: str) -> None:
    assert pii.scan_text(text) == []


def test_nothing_is_found_in_acmehotels_or_the_other_domain_sets() -> None:
    """Prices, ratings, codes, versions, years and floors are not personal data: the demo reports 0."""
    import importlib.util  # bench/datasets.py by path: on sys.path, it would shadow Hugging Face's `datasets`

    spec = importlib.util.spec_from_file_location("bench_datasets", REPO / "bench" / "datasets.py")
    assert spec is not None and spec.loader is not None
    domains = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(domains)

    rows = [json.loads(line) for line in embedded_path("small").read_text().splitlines()]
    rows += [r for make in domains.DATASETS.values() for r in make()]
    texts = [m["content"] for r in rows for m in r.get("messages", [])]
    texts += [r[k] for r in rows for k in ("instruction", "output") if k in r]
    assert [t for t in texts if pii.scan_text(t)] == []


def test_redact_leaves_no_value_and_says_what_was_there() -> None:
    reply = " ".join(r for r, _, _ in PLANTED)
    rec = record(reply, answer="nurse.lenmi@clinic.example.org")
    redacted = pii.redact(rec, pii.scan([rec]))
    text = json.dumps(redacted.to_json())
    assert not any(value in text for _, _, value in PLANTED)
    for placeholder in ("<EMAIL>", "<PHONE>", "<CREDIT_CARD>", "<IBAN>", "<IP_ADDRESS>"):
        assert placeholder in redacted.reply
    assert redacted.answer == "<EMAIL>" and redacted.reply.count("<PHONE>") == 2


def test_refuse_names_types_and_record_numbers_never_values() -> None:
    records = [record("Nothing personal here."), *(record(r) for r, _, _ in PLANTED)]
    with pytest.raises(InputDataError) as caught:
        pii.refuse(pii.scan(records), "staff.jsonl")
    message = str(caught.value)
    assert message.startswith("staff.jsonl: holds personal data (email 2, phone 2, credit_card 1, iban 1, "
                              "ip_address 1)")
    assert "records 2, 3, 4, 5, 6, 7, 8 " in message and "privacy.pii to redact" in message
    assert not any(value in message for _, _, value in PLANTED)


def test_after_a_scan_torch_and_transformers_still_import() -> None:
    """The scan hides torch and transformers from Presidio's import (4 s saved); the process can still use both."""
    code = ("from private_finetuning.data.pii import scan_text; assert scan_text('a@b.org'); "
            "import torch, transformers; print(torch.ones(1).item(), transformers.__name__)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["1.0", "transformers"]
