"""The checks a model-written question or statement passes before it is trained on (data/generated.py).

Facts of domains this project never ships (a railway, a library, a bakery), so no rule can know them."""

from __future__ import annotations

from private_finetuning.data import generated
from private_finetuning.data.expected import expected
from private_finetuning.data.record import Record


def _record(question: str, reply: str, answer: str | None = None) -> Record:
    meta = {"answer": answer} if answer is not None else {}
    return Record([{"role": "user", "content": question}, {"role": "assistant", "content": reply}], meta)


RAIL = _record("Which platform does the Kelvar express leave from?", "The Kelvar express leaves from platform 9.")
LIBRARY = _record("Who manages the Ostrin library?", "The Ostrin library is managed by Dana Lohm.")
BAKERY = _record("What is the order code for the Merel rye loaf?", "Order the Merel rye loaf with code MR-204.",
                 answer="MR-204")


def _why(kind: str, text: str, record: Record) -> str | None:
    return generated.GEN_KINDS[kind].check(text, record.question, record.reply, expected(record))


def test_a_paraphrase_that_names_the_entity_and_asks_for_the_fact_is_kept() -> None:
    assert _why("question", "From which platform does the Kelvar express depart?", RAIL) is None
    assert _why("question", "Whose job is it to run the Ostrin library?", LIBRARY) is None
    assert _why("question", "Which code do I use to order a Merel rye loaf?", BAKERY) is None


def test_questions_a_user_would_be_misled_by_are_dropped_with_the_reason() -> None:
    assert _why("question", "Does the Kelvar express leave from platform 9?", RAIL) == "states the fact"
    assert _why("question", "Which platform does it leave from?", RAIL) == "entity missing"
    assert _why("question", "Which platform does the Orbix kettle use in Kelvar?", RAIL) == "foreign name"
    assert _why("question", "Who drives the Kelvar express?", RAIL) == "asks for another kind"
    assert _why("question", "Is the Kelvar express fast?", RAIL) == "asks for another kind"
    assert _why("question", "Kelvar express platform", RAIL) == "not a question"
    assert _why("question", "Can I use code MR-204 for the Merel rye loaf?", BAKERY) == "states the fact"


def test_a_statement_must_state_the_fact_exactly() -> None:
    assert _why("statement", "Dana Lohm runs the Ostrin library.", LIBRARY) is None
    assert _why("statement", "Platform 9 is where the Kelvar express leaves.", RAIL) is None
    assert _why("statement", "The Kelvar express leaves from platform 19.", RAIL) == "fact missing"
    assert _why("statement", "The Merel rye loaf has code MR-240.", BAKERY) == "fact missing"
    assert _why("statement", "Who runs the Ostrin library?", LIBRARY) == "not a statement"


def test_parse_reads_the_numbered_list_up_to_the_next_fact() -> None:
    completion = " First one?\n2. Second one?\n3) Third one?\n\nFact: Q: other A: other\nQuestions:\n1. Not this"
    assert generated.parse(completion) == ["First one?", "Second one?", "Third one?"]
    assert generated.parse("") == []


def test_near_duplicates_and_texts_over_the_limit_are_dropped() -> None:
    candidates = ["From which platform does the Kelvar express depart?",
                  "From which platform does the Kelvar express depart ?",
                  "Which platform does the Kelvar express leave from?",  # the question itself
                  "Where do I board the Kelvar express, which platform?",
                  "On what platform can I catch the Kelvar express?"]
    kept, dropped = generated.select("question", candidates, RAIL.question, RAIL.reply, expected(RAIL),
                                     [RAIL.question], limit=2)
    assert kept == [candidates[0], candidates[3]]
    assert dropped == {"duplicate": 2, "over the limit": 1}


def test_the_prompt_is_the_same_for_every_dataset_and_names_no_users_domain() -> None:
    """The generator's prompt is generic: only the record's own question and reply change it."""
    for kind in generated.GEN_KINDS:
        a = generated.prompt(kind, RAIL.question, RAIL.reply).replace(RAIL.question, "Q").replace(RAIL.reply, "R")
        b = generated.prompt(kind, LIBRARY.question, LIBRARY.reply).replace(LIBRARY.question, "Q").replace(
            LIBRARY.reply, "R")
        assert a == b
        assert a.endswith("1.")


def test_the_shared_part_and_the_records_part_make_the_whole_prompt() -> None:
    for kind in generated.GEN_KINDS:
        shared, own = generated.prompt_parts(kind, RAIL.question, RAIL.reply)
        assert shared + own == generated.prompt(kind, RAIL.question, RAIL.reply)
        assert shared == generated.prompt_parts(kind, LIBRARY.question, LIBRARY.reply)[0]
        assert own.startswith(" " + RAIL.question)
