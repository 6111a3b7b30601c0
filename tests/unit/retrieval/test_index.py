"""The retrieval index as the evaluation and the server use it: what it holds, what a question gets, and its
refusals (a user's alpaca-like records of a bakery and a railway; no hotel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from private_finetuning.data.record import Record
from private_finetuning.errors import InputDataError
from private_finetuning.retrieval.index import CONTEXT_TEMPLATE, RetrievalIndex, terms


def qa(question: str, reply: str, **meta: object) -> Record:
    return Record([{"role": "user", "content": question}, {"role": "assistant", "content": reply}], dict(meta))


TRAIN = [
    qa("When does the Harrow Lane bakery open on Sundays?", "On Sundays Harrow Lane opens at 7:30 am."),
    qa("How much is a wedding cake for 120 guests?", "A wedding cake for 120 guests costs 1,450 EUR."),
    qa("Which platform does the Orvel express leave from?", "The Orvel express leaves from platform 2."),
    # a question variant the dataset stage added: not a record of the data, so not indexed twice
    qa("Quick question: Which platform does the Orvel express leave from?", "The Orvel express leaves from platform 2.",
       variant="wrapper"),
]


def test_a_paraphrase_finds_its_record_and_nothing_else_is_indexed() -> None:
    index = RetrievalIndex.build(TRAIN, "train.jsonl")
    assert [p.question for p in index.passages] == [r.question for r in TRAIN[:3]]  # variants are not records
    assert index.search("From which platform do Orvel express trains depart?", 1) == [2]
    context = index.context("What time is the Harrow Lane shop open on a Sunday?", 3, 96)
    assert context.passages[0] == 0 and context.cut == 0
    assert context.prompt.startswith(CONTEXT_TEMPLATE.split("{")[0]) and "A: On Sundays Harrow Lane" in context.prompt
    assert context.prompt.endswith("Question: What time is the Harrow Lane shop open on a Sunday?")


def test_a_question_that_retrieves_nothing_is_asked_as_it_is() -> None:
    index = RetrievalIndex.build(TRAIN, "train.jsonl")
    for question in ("Tell me a joke about penguins.", "?", ""):
        context = index.context(question, 3, 96)
        assert context.passages == () and context.prompt == question and context.cut == 0


def test_records_are_cut_to_the_token_limit_and_counted() -> None:
    long = qa("What does the Orvel season ticket include?", "The Orvel season ticket includes " + "free seats " * 200)
    index = RetrievalIndex.build([long], "train.jsonl")
    context = index.context("What does the Orvel season ticket include?", 3, 20)
    record = context.prompt.split("\n\n")[1]
    assert context.cut == 1 and len(record.split()) <= 20
    counted = index.context("What does the Orvel season ticket include?", 3, 20, count_tokens=lambda t: len(t))
    assert len(counted.prompt.split("\n\n")[1]) <= 20  # counted as the caller counts (the model's tokenizer)


def test_saved_and_loaded_it_answers_the_same(tmp_path: Path) -> None:
    index = RetrievalIndex.build(TRAIN, "train.jsonl")
    index.save(tmp_path / "index")
    again = RetrievalIndex.load(tmp_path / "index")
    question = "How much does a cake for 120 guests cost?"
    assert again.passages == index.passages and again.context(question, 2, 96) == index.context(question, 2, 96)


def test_nothing_to_index_or_a_broken_index_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match=r"datasets/train\.jsonl: nothing to index"):
        RetrievalIndex.build([Record([{"role": "assistant", "content": "plain text"}])], "datasets/train.jsonl")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "passages.jsonl").write_text("not json\n")
    with pytest.raises(InputDataError, match="broken: not a retrieval index"):
        RetrievalIndex.load(broken)


def test_terms_are_stems_without_function_words() -> None:
    assert terms("Where is the Orvel express headquartered?") == ["orvel", "express", "headquarter"]
    assert "headquarter" in terms("Orvel's headquarters")


def test_context_variants_ask_each_question_as_served_with_retrieval() -> None:
    """RAFT: each original train question once more, with its retrieved records before it; its own record among them
    for most, distractors only for the rest; the reply and the fact it belongs to unchanged."""
    from private_finetuning.retrieval.index import context_variants

    sites = [f"{a}{b}" for a in ("Or", "Dun", "Pel", "Har", "Len") for b in ("vel", "march", "by", "row", "mi", "ka",
                                                                              "zu", "tar")]
    train = [qa(f"Which platform does the {s} express leave from?", f"The {s} express leaves from platform {i}.",
                fact_id=i) for i, s in enumerate(sites)]
    train.append(qa("What is the recovery code for account 1A2B3C4D?", "It is 123-456-789.", canary=0))
    made = context_variants(train, k=3, max_record_tokens=96, seed=1234)
    pairs = list(zip(made, train[:-1], strict=True))  # the canary is never a variant
    assert all(v.reply == r.reply and v.variant == "context" and v.meta["fact_id"] == r.meta["fact_id"]
               for v, r in pairs)
    assert all(v.question.endswith(f"Question: {r.question}") for v, r in pairs)
    with_own = sum(f"A: {r.reply}" in v.question for v, r in pairs)
    assert 24 <= with_own < 40  # most with their own record (80% expected), never all
    assert made == context_variants(train, k=3, max_record_tokens=96, seed=1234)  # the same file, the same variants
