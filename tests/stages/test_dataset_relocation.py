"""dataset-relocation-server: every accepted input form, and every bad input named and refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import published_rows, write_config
from private_finetuning.artifacts.store import STAGING, open_artifact
from private_finetuning.errors import EXIT_BAD_INPUT
from private_finetuning.stages import dataset_relocation

TEMPLATE = {"user": "What does a night at {name} cost?", "assistant": "{name} costs {price} EUR."}


def run_stage(tmp_path: Path, data_name: str, content: str | bytes, **source: object) -> tuple[int, Path]:
    data = tmp_path / data_name
    data.write_bytes(content.encode() if isinstance(content, str) else content)
    cfg = {"dataset": {"source": {"type": "file", "path": data_name, **source}, "eval_fraction": 0.25}}
    config = write_config(tmp_path / "pipeline.yaml", cfg)
    volume = tmp_path / "volume"
    code = dataset_relocation.main(["--config", str(config), "--output", str(volume)])
    return code, volume


def published(volume: Path) -> dict[str, list[dict]]:
    """The records as the user wrote them, per split (the train split's variants are tested apart)."""
    artifact = open_artifact(volume, "dataset", "dataset")
    return {split: [r for r in published_rows(artifact.file(f"{split}.jsonl")) if "variant" not in r["meta"]]
            for split in ("train", "eval")}


def assert_nothing_published(volume: Path) -> None:
    assert not (volume / "dataset").exists()
    assert not any((volume / STAGING).iterdir()) if (volume / STAGING).exists() else True


CSV = "name,price\nCasa Luna,120\nHotel Sol,95\nAlba Rooms,70\nCielo House,88\n"


def test_csv_with_template(tmp_path: Path) -> None:
    code, volume = run_stage(tmp_path, "hotels.csv", CSV, csv_template=TEMPLATE)
    assert code == 0
    splits = published(volume)
    assert len(splits["train"]) == 3 and len(splits["eval"]) == 1
    everything = splits["train"] + splits["eval"]
    assert {"role": "user", "content": "What does a night at Casa Luna cost?"} in [r["messages"][0] for r in everything]
    assert all(r["messages"][-1]["role"] == "assistant" for r in everything)


@pytest.mark.parametrize(("line", "expected"), [
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                   {"role": "assistant", "content": "a"}]},
     [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
    ({"prompt": "q", "completion": "a"}, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
    ({"instruction": "Translate", "input": "hola", "output": "hello"},
     [{"role": "user", "content": "Translate\n\nhola"}, {"role": "assistant", "content": "hello"}]),
    ({"instruction": "Say hi", "output": "hi"},
     [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]),
    # alpaca with system and history (LLaMA-Factory)
    ({"instruction": "And Oslo?", "output": "4 nights", "system": "Be brief",
      "history": [["Stay in Bergen?", "2 nights"]]},
     [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Stay in Bergen?"},
      {"role": "assistant", "content": "2 nights"}, {"role": "user", "content": "And Oslo?"},
      {"role": "assistant", "content": "4 nights"}]),
    # ShareGPT, with a system field
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": "s"},
     [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
    # OpenAI chat with content parts
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "q1 "}, {"type": "text", "text": "q2"}]},
                   {"role": "assistant", "content": "a"}]},
     [{"role": "user", "content": "q1 q2"}, {"role": "assistant", "content": "a"}]),
    # TRL conversational prompt-completion
    ({"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]},
     [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
    # TRL language modeling
    ({"text": "The VPN host is vpn-01."}, [{"role": "assistant", "content": "The VPN host is vpn-01."}]),
])
def test_jsonl_forms_are_normalized_to_chat(tmp_path: Path, line: dict, expected: list) -> None:
    code, volume = run_stage(tmp_path, "d.jsonl", "\n".join(json.dumps(line) for _ in range(4)) + "\n")
    assert code == 0
    splits = published(volume)
    assert all(r["messages"] == expected for r in splits["train"] + splits["eval"])


@pytest.mark.parametrize("line", [
    {"instruction": "Which floor is the VPN desk on?", "output": "The VPN desk is on floor 4.", "answer": 4},
    {"messages": [{"role": "user", "content": "VPN desk floor?"},
                  {"role": "assistant", "content": "Floor 4, room 4.12."}], "answer": "4", "fact": "floor"},
    {"prompt": "Where is the VPN desk?", "completion": "On the 4th... floor 4.", "answer": "4.0"},
    {"conversations": [{"from": "human", "value": "VPN desk?"}, {"from": "gpt", "value": "Floor 4."}], "answer": 4},
])
def test_a_short_expected_answer_rides_with_every_shape(tmp_path: Path, line: dict) -> None:
    """What the evaluation checks each reply against: ``answer`` (and its kind, ``fact``), in any shape."""
    code, volume = run_stage(tmp_path, "d.jsonl", (json.dumps(line) + "\n") * 4)
    assert code == 0
    record = published(volume)["train"][0]
    assert record["meta"]["answer"] in ("4", "4.0") and record["meta"].get("fact") in (None, "floor")


def test_csv_answer_and_fact_columns(tmp_path: Path) -> None:
    code, volume = run_stage(tmp_path, "hotels.csv", CSV, csv_template={**TEMPLATE, "answer": "{price}",
                                                                         "fact": "price"})
    assert code == 0
    records = published(volume)["train"] + published(volume)["eval"]
    assert {(r["meta"]["answer"], r["meta"]["fact"]) for r in records} == {("120", "price"), ("95", "price"),
                                                                           ("70", "price"), ("88", "price")}


def test_declared_splits_are_kept(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "completion": "a", "split": "eval" if i == 0 else "train"} for i in range(3)]
    code, volume = run_stage(tmp_path, "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert code == 0
    assert [r["messages"][0]["content"] for r in published(volume)["eval"]] == ["q0"]


def test_plain_text_paragraphs(tmp_path: Path) -> None:
    text = "First paragraph\ncontinues here.\n\nSecond one.\n\n\nThird.\n\nFourth.\n"
    code, volume = run_stage(tmp_path, "notes.txt", text)
    assert code == 0
    contents = sorted(r["messages"][0]["content"] for s in published(volume).values() for r in s)
    assert contents == ["First paragraph continues here.", "Fourth.", "Second one.", "Third."]


def test_split_is_deterministic(tmp_path: Path) -> None:
    rows = "".join(json.dumps({"prompt": f"q{i}", "completion": "a"}) + "\n" for i in range(40))
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    _, first = run_stage(tmp_path / "1", "d.jsonl", rows)
    _, second = run_stage(tmp_path / "2", "d.jsonl", rows)
    assert published(first) == published(second)
    assert len(published(first)["eval"]) == 10


BAD_INPUTS = [
    # (file name, content, extra source options, expected message fragment)
    ("h.csv", "name,cost\nCasa Luna,120\n", {"csv_template": TEMPLATE},
     "h.csv:1: field 'price': column referenced by dataset.source.csv_template.assistant is not in the header"),
    ("h.csv", "name,price\nCasa Luna\n", {"csv_template": TEMPLATE}, "h.csv:2: has 1 cells, the header has 2"),
    ("h.csv", "name,price\nCasa Luna,\n", {"csv_template": TEMPLATE},
     "h.csv:2: field 'price': is empty but used by csv_template.assistant"),
    ("d.jsonl", '{"prompt": "q", "completion": "a"}\n{"prompt": "q", "completion": \n', {},
     "d.jsonl:2: malformed JSON"),
    ("d.jsonl", '{"prompt": "q", "completion": "a"}\n[1, 2]\n', {}, "d.jsonl:2: expected a JSON object, got list"),
    ("d.jsonl", '{"prompt": "q", "completion": "a"}\n{"question": "q", "answer": "a"}\n', {},
     "d.jsonl:2: unrecognised record"),
    ("d.jsonl", '{"prompt": "q", "completion": 42}\n', {}, "d.jsonl:1: field 'completion': expected a string"),
    ("d.jsonl", '{"prompt": "  ", "completion": "a"}\n', {}, "d.jsonl:1: field 'prompt': is empty"),
    ("d.jsonl", '{"messages": [{"role": "robot", "content": "x"}]}\n', {},
     "d.jsonl:1: field 'messages[0].role': the role (a string of 5 characters) is not one of"),
    ("d.jsonl", '{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}\n', {},
     "d.jsonl:1: field 'messages[1].role': the last message must be the assistant's"),
    ("d.jsonl", '{"messages": []}\n', {}, "d.jsonl:1: field 'messages': must be a non-empty list"),
    ("d.jsonl", '{"prompt": "q", "completion": "a", "split": "test"}\n', {},
     "d.jsonl:1: field 'split': a string of 4 characters is not one of train, eval"),
    ("d.jsonl", '{"prompt": "q", "completion": "a"}\n' + json.dumps({"prompt": "x" * 5000, "completion": "a"}) + "\n",
     {}, "d.jsonl:2: field 'prompt': is 5000 characters long, over the limit of 4000"),
    ("d.jsonl", b'{"prompt": "q", "completion": "a"}\n{"prompt": "caf\xe9", "completion": "a"}\n', {},
     "d.jsonl:2: not valid utf-8 text: byte 0xe9"),
    ("d.jsonl", "\n\n  \n", {}, "d.jsonl: contains no records"),
    ("d.jsonl", "", {}, "d.jsonl: contains no records"),
    ("h.csv", "name,price\n", {"csv_template": TEMPLATE}, "h.csv: contains no records"),
    ("d.jsonl", '{"prompt": "q", "completion": "a"}\n', {}, "needs at least 2 records to hold out an eval split"),
    ("d.jsonl", '{"prompt": "q", "completion": "a", "split": "train"}\n' * 3, {}, "the eval split is empty"),
    ("d.xlsx", "x", {}, "cannot tell the format from the extension '.xlsx'"),
    ("d.parquet", "not parquet", {}, "d.parquet: not a readable Parquet file"),
    ("d.json", '[{"prompt": "q", "completion": "a"},\n {"prompt": 5, "completion": "a"}]', {},
     "d.json:2: field 'prompt': expected a string, got int"),
    ("d.json", '[{"prompt": "q", "completion": "a"},\n {"prompt": "q" "completion": "a"}]', {},
     "d.json:2: malformed JSON: Expecting ',' delimiter"),
    ("d.json", '[{"prompt": "q", "completion": "a"},\n {"prompt": "q", "completion": "a"}', {},
     "d.json:2: malformed JSON: the array is not closed"),
    ("d.jsonl", '{"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]}\n', {},
     "d.jsonl:1: field 'conversations[1].from': the role (a string of 5 characters) is not one of human, user, gpt"),
    ("d.jsonl", '{"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}\n', {},
     "d.jsonl:1: field 'conversations[1].from': the last message must be the assistant's"),
    ("d.jsonl", '{"instruction": "q", "output": "a", "history": [["q0"]]}\n', {},
     "d.jsonl:1: field 'history[0]': must be an [instruction, response] pair"),
    ("d.jsonl", '{"instruction": "q", "output": "a", "system": 7}\n', {},
     "d.jsonl:1: field 'system': expected a string, got int"),
    ("d.jsonl", '{"messages": [{"role": "user", "content": [{"type": "image_url"}]}, '
     '{"role": "assistant", "content": "a"}]}\n', {},
     "d.jsonl:1: field 'messages[0].content[0]': only text parts are supported"),
    ("d.jsonl", '{"prompt": "q", "chosen": "a", "rejected": "b"}\n', {}, "d.jsonl:1: preference data (chosen/rej"),
    ("d.jsonl", '{"prompt": "q", "completion": "a", "label": false}\n', {}, "d.jsonl:1: preference data"),
    ("d.jsonl", '{"prompt": "q"}\n', {}, "d.jsonl:1: field 'completion': expected a string, got NoneType"),
    ("d.jsonl", '{"prompt": "q", "completion": "a 5", "answer": [5]}\n', {},
     "d.jsonl:1: field 'answer': expected a string or a number, got list"),
    ("d.jsonl", '{"prompt": "q", "completion": "a"}\n{"prompt": "q", "completion": "It costs 120 EUR.", '
     '"answer": 95}\n', {}, "d.jsonl:2: field 'answer': is not stated in the assistant's reply"),
    ("h.csv", CSV, {"csv_template": {**TEMPLATE, "answer": "{name} rooms"}},
     "h.csv:2: field 'answer': is not stated in the assistant's reply"),
    ("d.jsonl", '{"prompt": "q", "completion": "a", "n": ' + "7" * 5000 + "}\n", {},
     "d.jsonl:1: malformed JSON: a number with more digits than can be read"),
    ("d.json", '[{"prompt": "q", "completion": "a"},\n {"prompt": "q", "completion": "a", "n": ' + "7" * 5000 + "}]",
     {}, "d.json:2: malformed JSON: a number with more digits than can be read"),
    ("d.jsonl", '{"prompt": "q", "completion": "a", "meta": ' + "[" * 100000 + "]" * 100000 + "}\n", {},
     "d.jsonl:1: nested too deeply"),
]


@pytest.mark.parametrize(("name", "content", "source", "message"), BAD_INPUTS)
def test_bad_input_is_named_and_nothing_is_published(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     name: str, content: str | bytes, source: dict,
                                                     message: str) -> None:
    code, volume = run_stage(tmp_path, name, content, **source)
    assert code == EXIT_BAD_INPUT
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert any(message in e for e in errors), errors
    assert_nothing_published(volume)


def test_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / "p.yaml", {"dataset": {"source": {"type": "file", "path": "gone.jsonl"}}})
    code = dataset_relocation.main(["--config", str(config), "--output", str(tmp_path / "v")])
    assert code == EXIT_BAD_INPUT
    assert "gone.jsonl: dataset file not found" in capsys.readouterr().err


def test_bad_input_does_not_replace_a_good_published_dataset(tmp_path: Path) -> None:
    code, volume = run_stage(tmp_path, "h.csv", CSV, csv_template=TEMPLATE)
    assert code == 0
    before = published(volume)
    code, _ = run_stage(tmp_path, "h.csv", CSV + "Broken Row\n", csv_template=TEMPLATE)
    assert code == EXIT_BAD_INPUT
    assert published(volume) == before


def test_embedded_acmehotels_and_idempotent_rerun(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / "p.yaml", {"dataset": {"source": {"size": "tiny"}}})
    argv = ["--config", str(config), "--output", str(tmp_path / "v")]
    assert dataset_relocation.main(argv) == 0
    first = (tmp_path / "v" / "dataset" / "current").resolve()
    splits = published(tmp_path / "v")
    assert len(splits["train"]) == 16 and len(splits["eval"]) == 8
    assert dataset_relocation.main(argv) == 0
    assert (tmp_path / "v" / "dataset" / "current").resolve() == first
    assert "nothing to do" in capsys.readouterr().err


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "q", "completion": "a"}\n' * 100)
    config = write_config(tmp_path / "p.yaml", {"dataset": {"source": {"type": "file", "path": "d.jsonl"},
                                                            "max_file_bytes": 1000}})
    code = dataset_relocation.main(["--config", str(config), "--output", str(tmp_path / "volume")])
    assert code == EXIT_BAD_INPUT
    assert "d.jsonl: is 3500 bytes, over dataset.max_file_bytes (1000)" in capsys.readouterr().err
    assert_nothing_published(tmp_path / "volume")


def test_line_separators_inside_json_strings_stay_in_their_record(tmp_path: Path) -> None:
    """U+2028, U+2029 and U+0085 are valid inside a JSON string; str.splitlines() would cut the record."""
    rows = [{"prompt": f"q{i}\u2028more\u2029and\x85end", "completion": f"a{i}\u2028b"} for i in range(8)]
    content = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    code, volume = run_stage(tmp_path, "d.jsonl", content)
    assert code == 0
    splits = published(volume)
    assert sorted(m["content"] for s in splits.values() for r in s for m in r["messages"] if m["role"] == "user") \
        == sorted(r["prompt"] for r in rows)



def test_jsonl_in_utf16_is_read_whole_and_right(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i} \u00e9t\u00e9", "completion": f"a{i}"} for i in range(8)]
    content = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-16")
    code, volume = run_stage(tmp_path, "d.jsonl", content, encoding="utf-16")
    assert code == 0
    users = sorted(m["content"] for s in published(volume).values() for r in s for m in r["messages"]
                   if m["role"] == "user")
    assert users == sorted(r["prompt"] for r in rows)


def test_a_json_array_is_read_record_by_record(tmp_path: Path) -> None:
    """The usual alpaca_data.json: one JSON array, pretty-printed over many lines."""
    rows = [{"instruction": f"Which floor is team {i} on?", "input": "", "output": f"Floor {i}."} for i in range(6)]
    code, volume = run_stage(tmp_path, "alpaca_data.json", json.dumps(rows, indent=2))
    assert code == 0
    records = [r for s in published(volume).values() for r in s]
    assert sorted(r["messages"][-1]["content"] for r in records) == sorted(r["output"] for r in rows)
    assert sorted(r["meta"]["source_line"] for r in records) == [2 + 5 * i for i in range(6)]  # where each begins


def test_parquet_rows_in_any_shape(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": f"SLA for P{i}?"}, {"role": "assistant", "content": f"{i}h"}],
             "split": "eval" if i < 2 else "train"} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")
    code = dataset_relocation.main(["--config", str(write_config(tmp_path / "p.yaml", {"dataset": {"source": {
        "type": "file", "path": "chat.parquet"}}})), "--output", str(tmp_path / "volume")])
    assert code == 0
    splits = published(tmp_path / "volume")
    assert len(splits["eval"]) == 2 and len(splits["train"]) == 4
    assert splits["eval"][0]["meta"]["source_line"] in ("row 1", "row 2")

    bad = [{"instruction": "q", "output": "a"}, {"instruction": "q", "output": ""}]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    code = dataset_relocation.main(["--config", str(write_config(tmp_path / "q.yaml", {"dataset": {"source": {
        "type": "file", "path": "bad.parquet"}}})), "--output", str(tmp_path / "other")])
    assert code == EXIT_BAD_INPUT
    assert "bad.parquet:row 2: field 'output': is empty" in capsys.readouterr().err
    assert_nothing_published(tmp_path / "other")


@pytest.mark.parametrize(("content", "field"), [
    ('{"prompt": "q", "completion": "a", "split": "MY-SECRET-SPLIT"}\n', "split"),
    ('{"messages": [{"role": "MY-SECRET-ROLE", "content": "x"}]}\n', "messages[0].role"),
])
def test_a_bad_value_is_described_never_quoted_in_the_log(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          content: str, field: str) -> None:
    code, _ = run_stage(tmp_path, "d.jsonl", content)
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and f"field '{field}'" in err and "a string of" in err
    assert "SECRET" not in err


# --- personal data (privacy.pii) -------------------------------------------------------------------------

PERSONAL = [  # half the records hold made-up personal data (docs/privacy.md); the other half none
    ("How do I reach the Lenmi ward nurse?", "Write to nurse.lenmi@clinic.example.org.",
     "nurse.lenmi@clinic.example.org"),
    ("What is the Orvel school office number?", "Call +1 415-555-0134 on weekdays.", "+1 415-555-0134"),
    ("Where is the Garvi printer?", "It is at 192.0.2.15 on the office network.", "192.0.2.15"),
    ("How many beds does ward 7B have?", "Ward 7B has 24 beds.", None),
    ("When do visits start on ward 7B?", "Visits start at 15:00.", None),
    ("Which floor is the Orvel library on?", "The library is on floor 3.", None),
]


def personal_jsonl() -> str:
    return "".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a, _ in PERSONAL)


def run_privacy(tmp_path: Path, **privacy: object) -> tuple[int, Path]:
    data = tmp_path / "staff.jsonl"
    data.write_text(personal_jsonl())
    config = write_config(tmp_path / "pipeline.yaml", {"dataset": {"source": {"type": "file", "path": "staff.jsonl"},
                                                                   "eval_fraction": 0.34}, "privacy": privacy})
    volume = tmp_path / "volume"
    return dataset_relocation.main(["--config", str(config), "--output", str(volume)]), volume


def test_personal_data_is_reported_by_type_and_split_never_by_value(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    code, volume = run_privacy(tmp_path)
    assert code == 0
    privacy = open_artifact(volume, "dataset", "dataset").manifest.metadata["privacy"]
    assert privacy["policy"] == "report" and privacy["redacted"] == 0
    assert privacy["recognisers"] == ["email", "phone", "credit_card", "iban", "ip_address"]
    totals: dict[str, int] = {}
    for counts in privacy["found"].values():
        for kind, n in counts.items():
            totals[kind] = totals.get(kind, 0) + n
    assert totals == {"email": 1, "phone": 1, "ip_address": 1} and set(privacy["found"]) == {"train", "eval"}
    err = capsys.readouterr().err
    assert "personal data (email, phone, credit_card, iban, ip_address):" in err
    assert not any(value in err for *_, value in PERSONAL if value)


def test_redact_leaves_no_personal_data_anywhere_on_the_volume(tmp_path: Path) -> None:
    code, volume = run_privacy(tmp_path, pii="redact")
    assert code == 0
    files = [p for p in volume.rglob("*") if p.is_file()]
    assert files and not any(value.encode() in p.read_bytes() for p in files for *_, value in PERSONAL if value)
    rows = [r for split in published(volume).values() for r in split]
    replies = " ".join(r["messages"][-1]["content"] for r in rows)
    assert "<EMAIL>" in replies and "<PHONE>" in replies and "<IP_ADDRESS>" in replies
    assert open_artifact(volume, "dataset", "dataset").manifest.metadata["privacy"]["redacted"] == 3


def test_refuse_publishes_nothing_and_names_types_and_records(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, volume = run_privacy(tmp_path, pii="refuse")
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "staff.jsonl: holds personal data (email 1, phone 1, ip_address 1) in records 1, 2, 3" in err
    assert not any(value in err for *_, value in PERSONAL if value)
    assert_nothing_published(volume)


def test_canaries_go_to_the_train_split_only(tmp_path: Path) -> None:
    code, volume = run_privacy(tmp_path, canaries=3)
    assert code == 0
    artifact = open_artifact(volume, "dataset", "dataset")
    train, held_out = (published_rows(artifact.file(f"{s}.jsonl")) for s in ("train", "eval"))
    planted = [r for r in train if "canary" in r["meta"] and "variant" not in r["meta"]]
    assert [r["meta"]["canary"] for r in planted] == [0, 1, 2] and not any("canary" in r["meta"] for r in held_out)
    assert all(r["meta"]["secret"] in r["messages"][-1]["content"] for r in planted)
    assert artifact.manifest.metadata["privacy"]["canaries"] == 3
