"""Question variants in the dataset stage: made for the train split only, never giving the answer away,
the same on every run, and counted (never quoted) in the manifest and the log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import published_rows, write_config
from private_finetuning.artifacts.store import open_artifact
from private_finetuning.config import ConfigError, parse_config
from private_finetuning.data import augment
from private_finetuning.data.facts import fact_match
from private_finetuning.data.record import Record
from private_finetuning.stages import dataset_relocation

ALL = list(augment.KINDS)

# Three made-up domains in three shapes, one phrasing per fact, answers that are codes, names and numbers.
RECORDS = [
    {"instruction": "What is the ticket response time in Lokar?", "output": "Tickets from Lokar are answered "
     "within 24 hours.", "answer": "24", "fact": "sla", "split": "train"},
    {"instruction": "Which VPN host does the Bello office use?", "output": "The Bello office connects through the "
     "VPN host BEL-GW-42.", "answer": "BEL-GW-42", "fact": "vpn", "split": "train"},
    {"instruction": "How quickly does IT answer a ticket from the Lokar office?", "output": "Tickets from Lokar are "
     "answered within 24 hours.", "answer": "24", "fact": "sla", "split": "eval"},
    {"messages": [{"role": "user", "content": "Who is the attending physician for ward 7B?"},
                  {"role": "assistant", "content": "The attending physician for ward 7B is Dr. Okafor."}],
     "answer": "Dr. Okafor", "fact": "physician", "split": "train"},
    {"prompt": "What is the maximum load of crane C-12?", "completion": "Crane C-12 lifts at most 3.5 tonnes.",
     "answer": "3.5", "fact": "load", "split": "train"},
    {"prompt": "Is a 3, 4 or 12 tonne crane at berth 4? Which one?", "completion": "Berth 4 has the 12 tonne crane.",
     "answer": "12", "fact": "crane", "split": "train"},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "What is the badge office's extension?"},
                  {"role": "assistant", "content": "Dial 4410."}], "answer": "4410", "split": "train"},
]


def run(tmp_path: Path, kinds: list[str] | None = None, name: str = "v") -> tuple[int, Path]:
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    dataset: dict = {"source": {"type": "file", "path": "facts.jsonl"}}
    if kinds is not None:
        dataset["augmentation"] = {"kinds": kinds}
    config = write_config(tmp_path / f"{name}.yaml", {"dataset": dataset})
    volume = tmp_path / name
    return dataset_relocation.main(["--config", str(config), "--output", str(volume)]), volume


def splits(volume: Path) -> dict[str, list[dict]]:
    artifact = open_artifact(volume, "dataset", "dataset")
    return {s: published_rows(artifact.file(f"{s}.jsonl")) for s in ("train", "eval")}


def test_variants_are_added_to_the_train_split_only_and_keep_the_reply(tmp_path: Path) -> None:
    code, volume = run(tmp_path)
    assert code == 0
    published = splits(volume)
    assert published["eval"] == [{"messages": [{"role": "user", "content": RECORDS[2]["instruction"]},
                                               {"role": "assistant", "content": RECORDS[2]["output"]}],
                                  "meta": {"answer": "24", "fact": "sla", "source_line": 3}}]
    train = published["train"]
    originals = [r for r in train if "variant" not in r["meta"]]
    variants = [r for r in train if "variant" in r["meta"]]
    assert len(originals) == 6 and len(variants) > 10
    by_id = {r["meta"]["fact_id"]: r for r in originals}
    for variant in variants:
        source = by_id[variant["meta"]["fact_id"]]
        assert variant["messages"][-1] == source["messages"][-1]  # the reply is the record's, word for word
        assert variant["meta"]["answer"] == source["meta"]["answer"]
        assert variant["messages"][-2]["content"] != source["messages"][-2]["content"]
    # A conversation of several turns is trained as it is.
    assert not [v for v in variants if by_id[v["meta"]["fact_id"]]["messages"][0]["content"] == "hi"]


def test_no_variant_states_the_answer_in_its_question(tmp_path: Path) -> None:
    code, volume = run(tmp_path)
    assert code == 0
    for record in splits(volume)["train"]:
        if "variant" in record["meta"]:
            assert not fact_match(record["messages"][-2]["content"], record["meta"]["answer"])
    # The crane question names "12" among its choices: none of its variants may keep it.
    crane_record = Record([{"role": "user", "content": RECORDS[5]["prompt"]},
                           {"role": "assistant", "content": RECORDS[5]["completion"]}], {"answer": "12"})
    crane = augment.variants(crane_record, ALL)
    assert crane and all("12" not in prompt for _, prompt in crane)


def test_variants_are_the_same_on_every_run(tmp_path: Path) -> None:
    assert run(tmp_path, name="a")[0] == 0 and run(tmp_path, name="b")[0] == 0
    a, b = (open_artifact(tmp_path / n, "dataset", "dataset") for n in "ab")
    assert a.file("train.jsonl").read_bytes() == b.file("train.jsonl").read_bytes()


def test_the_manifest_and_log_count_variants_and_never_quote_them(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    code, volume = run(tmp_path)
    assert code == 0
    manifest = open_artifact(volume, "dataset", "dataset").manifest.metadata["augmentation"]
    train = splits(volume)["train"]
    made = [r["meta"]["variant"] for r in train if "variant" in r["meta"]]
    assert manifest == {"kinds": ALL, "train_facts": 6, "variants": {k: made.count(k) for k in set(made)}}
    log = capsys.readouterr().err
    assert f"augmentation: 6 train records, {len(made)} variants made" in log
    for record in train:
        assert record["messages"][-2]["content"] not in log and record["messages"][-1]["content"] not in log


def test_no_kinds_trains_the_data_as_given(tmp_path: Path) -> None:
    code, volume = run(tmp_path, kinds=[])
    assert code == 0
    assert [r["meta"].get("variant") for r in splits(volume)["train"]] == [None] * 6


@pytest.mark.parametrize(("kind", "question", "reply", "answer", "expected"), [
    ("keywords", "How far is the depot from gate 3?", "The depot is 1.2 km from gate 3.", "1.2",
     "How far depot gate 3?"),
    ("imperative", "What is the staff Wi-Fi network in Bello?", "Staff join BelloNet-4.", "BelloNet-4",
     "Tell me the staff Wi-Fi network in Bello."),
    ("reorder", "What is the ticket response time in Lokar?", "Within 24 hours.", "24",
     "Lokar: what is the ticket response time?"),
    ("statement", "Which VPN host does the Bello office use?", "The Bello office connects through the VPN host "
     "BEL-GW-42.", "BEL-GW-42", "Complete: The Bello office connects through the VPN host ..."),
    # Rules that do not apply make no variant rather than a broken one.
    ("reorder", "How much does a night at Casa Luna cost?", "A night costs 84 EUR.", "84", None),
    ("imperative", "Is the canteen open on Sundays?", "No, it is closed.", "closed", None),
    ("statement", "Floor?", "4.", "4", None),
])
def test_each_kind_of_variant(kind: str, question: str, reply: str, answer: str, expected: str | None) -> None:
    record = Record([{"role": "user", "content": question}, {"role": "assistant", "content": reply}],
                    {"answer": answer})
    assert dict(augment.variants(record, [kind])).get(kind) == expected


def test_an_unknown_kind_is_named_with_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"<config>:3: dataset.augmentation.kinds\[1\]: 'synonyms' is not one of "
                                          r"'wrapper', 'keywords', 'imperative', 'reorder' or 'statement'"):
        parse_config("dataset:\n  augmentation:\n    kinds: [wrapper, synonyms]\n")
