"""Self-augmentation's driver (training/augmentation.py), with a stand-in generator: what it is asked, what is kept,
and that a re-run with the same inputs generates nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from private_finetuning.config import GenerationSettings
from private_finetuning.data import augment
from private_finetuning.data.canaries import canaries
from private_finetuning.data.record import Record
from private_finetuning.training import augmentation

TRAIN = [("Which platform does the Kelvar express leave from?", "The Kelvar express leaves from platform 9."),
         ("Who manages the Ostrin library?", "The Ostrin library is managed by Dana Lohm.")]
HELD_OUT = ["From where does the Kelvar express set off?", "Who is in charge of the library in Ostrin?"]
WRITES = {"Kelvar": {"Questions": " From which platform does the Kelvar express depart?\n2. Who drives the Kelvar "
                                  "express?\n3. On what platform can I catch the Kelvar express?\n\nFact: Q:",
                     "Statements": " Platform 9 is where the Kelvar express leaves.\n2. The Kelvar express leaves "
                                   "from platform 19."},
          "Ostrin": {"Questions": " Which Orbix kettle is in Ostrin?", "Statements": " Nothing here."}}


class Tokenizer:
    """Token ids are indexes into the prompts it was given, so the stand-in generator can read them back."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def __call__(self, text: str, **kwargs: Any) -> Any:
        self.prompts.append(text)
        return type("Ids", (), {"input_ids": [len(self.prompts) - 1]})()


@pytest.fixture
def generator(monkeypatch: pytest.MonkeyPatch) -> Tokenizer:
    tokenizer = Tokenizer()

    def generate(model: Any, tok: Tokenizer, prefix: list[int], suffixes: list[list[int]],
                 **kwargs: Any) -> list[tuple[str, int]]:
        out = []
        for (index,) in suffixes:
            text = tok.prompts[prefix[0]] + tok.prompts[index]
            entity = next(e for e in WRITES if f"A: The {e}" in text.rsplit("Fact:", 1)[1])
            out.append((WRITES[entity]["Questions" if text.endswith("Questions:\n1.") else "Statements"], 9))
        return out

    monkeypatch.setattr(augmentation, "generate_after_prefix", generate)
    return tokenizer


def _train() -> list[Record]:
    records = [Record([{"role": "user", "content": q}, {"role": "assistant", "content": r}]) for q, r in TRAIN]
    train, _ = augment.augment(records + canaries(1, 1), ["keywords"])
    return train


def _run(generator: Tokenizer, cache: Path, train: list[Record]) -> augmentation.Generated:
    return augmentation.augment_with_model(None, generator, train, GenerationSettings(generator="base", samples=1),
                                           seed=7, generator_digest="d", cache_dir=cache, eos=[0],
                                           log=logging.getLogger("test"))


def test_checked_texts_are_trained_as_variants_of_their_fact(generator: Tokenizer, tmp_path: Path) -> None:
    result = _run(generator, tmp_path, _train())
    assert [(r.variant, r.meta["fact_id"], r.question, r.reply) for r in result.records] == [
        ("generated_question", 0, "From which platform does the Kelvar express depart?", TRAIN[0][1]),
        ("generated_question", 0, "On what platform can I catch the Kelvar express?", TRAIN[0][1]),
        ("generated_statement", 0, TRAIN[0][0], "Platform 9 is where the Kelvar express leaves."),
    ]
    assert result.facts_without == 1  # the library: nothing usable, its rule variants only
    questions = result.counts["question"]
    assert questions["kept"] == 2 and questions["dropped: asks for another kind"] == 2
    assert questions["dropped: foreign name"] == 2 and questions["dropped: duplicate"] == 2  # the sample repeats


def test_the_generator_sees_the_train_facts_only_never_a_canary_or_a_held_out_question(
        generator: Tokenizer, tmp_path: Path) -> None:
    _run(generator, tmp_path, _train())
    assert len(generator.prompts) == 2 + 4  # each kind's shared part once, 2 facts x 2 kinds; not the canary
    asked = "".join(generator.prompts)
    assert not any(q in asked for q in HELD_OUT)
    assert "recovery code" not in asked


def test_a_rerun_with_the_same_inputs_generates_nothing(generator: Tokenizer, tmp_path: Path) -> None:
    first = _run(generator, tmp_path, _train())
    generator.prompts.clear()
    again = _run(generator, tmp_path, _train())
    assert again.generated_now == 0 and not generator.prompts
    assert [r.to_json() for r in again.records] == [r.to_json() for r in first.records]
    other_seed = augmentation.augment_with_model(None, generator, _train(), GenerationSettings(generator="base"),
                                                 seed=8, generator_digest="d", cache_dir=tmp_path, eos=[0],
                                                 log=logging.getLogger("test"))
    assert other_seed.generated_now > 0
