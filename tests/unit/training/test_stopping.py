"""The "trained enough" rule: a held-back question per fact, scored as training goes (training/stopping.py)."""

from __future__ import annotations

from private_finetuning.data.chat import IGNORE_INDEX, Encoded
from private_finetuning.data.record import Record
from private_finetuning.training import stopping


def _rec(fact: int, variant: str | None, question: str) -> Record:
    meta = {"fact_id": fact, **({"variant": variant} if variant else {})}
    return Record([{"role": "user", "content": question}, {"role": "assistant", "content": "r"}], meta)


def test_one_question_per_fact_is_held_back_a_generated_one_first() -> None:
    train = [_rec(0, None, "q0"), _rec(0, "wrapper", "w0"), _rec(0, "keywords", "k0"),
             _rec(0, "generated_question", "g0"), _rec(1, None, "q1"), _rec(1, "keywords", "k1"),
             _rec(2, None, "q2"), _rec(2, "statement", "s2")]
    trained, held = stopping.hold_back(train)
    assert [r.question for r in held] == ["g0", "k1"]  # fact 2 has no question variant to spare: none held back
    assert [r.question for r in trained] == ["q0", "w0", "k0", "q1", "q2", "s2"]


def test_the_held_back_score_counts_the_fact_tokens_only() -> None:
    example = Encoded([1, 2, 3, 4], [IGNORE_INDEX, 2, 3, 4], [1.0, 1.0, 10.0, 1.0])
    assert stopping.fact_tokens_only(example).labels == [IGNORE_INDEX, IGNORE_INDEX, 3, IGNORE_INDEX]
    plain = Encoded([1, 2], [IGNORE_INDEX, 2], None)
    assert stopping.fact_tokens_only(plain) is plain


def test_training_stops_after_patience_scorings_without_improvement_and_remembers_the_best() -> None:
    rule = stopping.StopRule(patience=2)
    assert rule.observe(25, 3.0) and rule.observe(50, 2.0)
    assert not rule.observe(75, 2.5) and not rule.done
    assert not rule.observe(100, 1.999)  # within 0.5% of the best: not an improvement
    assert rule.done and (rule.best, rule.best_step, rule.checks) == (2.0, 50, 4)


def test_the_model_card_says_which_step_was_published_and_what_the_generator_added() -> None:
    from private_finetuning.export.model_card import _how_it_stopped_and_grew

    adapter = {"stopping": {"rule": "held_back", "stopped_by": "held_back", "best_step": 300, "held_back": 96},
               "generation": {"counts": {"question": {"generated": 500, "kept": 120}}}}
    text = "\n".join(_how_it_stopped_and_grew(adapter))
    assert "weights are those of step 300" in text and "96 held-back questions" in text
    assert "wrote 500 questions of the facts; 120 passed the checks" in text
    assert _how_it_stopped_and_grew({"stopping": {"rule": "plan", "held_back": 0}, "generation": None}) == []
