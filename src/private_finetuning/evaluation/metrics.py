"""The evaluation's metrics: one table, :data:`METRICS`, from which the report's rows, the TensorBoard
scalars and the model card's columns are all derived. Adding a metric is one row (and, for a metric of
the answers, one function of ``(questions, answers)``).

- fact accuracy: does the answer state the exact private fact? The record's ``answer`` where it has
  one, else the fact-bearing spans derived from its reply (data/expected.py: numbers, codes, names,
  dates...). Numbers are compared as numbers (``84`` matches ``84 EUR`` and ``84.0`` but not ``184``),
  text ignoring case, accents and spacing;
- token F1 and ROUGE-L of the answer against the reference reply (``rouge-score``, offline);
- answer and general-text perplexity (teacher-forced, models/scoring.py) and latency, measured by the
  judge on the model rather than on its answers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from private_finetuning.data.expected import expectations, fact_accuracy
from private_finetuning.data.facts import normalize, token_f1

if TYPE_CHECKING:
    from private_finetuning.data.record import Record


@functools.cache
def _rouge_scorer() -> Any:
    import logging

    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # it logs "Using default tokenizer" per scorer
    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(prediction: str, reference: str) -> float:
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def fact_accuracy_of(questions: list[Record], answers: list[str]) -> float | None:
    """Share of answers that state their record's fact; None when no record has one to check."""
    return fact_accuracy(questions, answers)


def token_f1_of(questions: list[Record], answers: list[str]) -> float | None:
    return _mean([token_f1(a, q.reply) for q, a in zip(questions, answers, strict=True)])


def rouge_l_of(questions: list[Record], answers: list[str]) -> float | None:
    return _mean([rouge_l(a, q.reply) for q, a in zip(questions, answers, strict=True)])


def exact_match_of(questions: list[Record], answers: list[str]) -> float | None:
    """Share of answers that are the reference reply itself, ignoring case, accents and spacing."""
    return _mean([float(normalize(a) == normalize(q.reply)) for q, a in zip(questions, answers, strict=True)])


def fact_accuracy_by_kind(questions: list[Record], answers: list[str]) -> dict[str, float]:
    """Fact accuracy per kind of fact: the records' ``fact``, else the kinds of the spans derived from the reply."""
    by_kind: dict[str, list[bool]] = {}
    for e, a in zip(expectations(questions), answers, strict=True):
        if (met := e.met_by(a)) is not None:
            by_kind.setdefault(e.label, []).append(met)
    return {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}


AnswerScore = Callable[[list["Record"], list[str]], "float | None"]


@dataclass(frozen=True)
class Metric:
    name: str  # the key in report.json and the TensorBoard tag (evaluation/<name>/<model>)
    label: str  # its row in report.md and its column in the model card
    help: str
    percent: bool = False
    # A function of the questions and a model's answers; None: measured on the model by the judge.
    score: AnswerScore | None = None
    trained: bool = False  # also reported on the trained questions
    card: bool = True  # a column of the model card's evaluation table


METRICS: tuple[Metric, ...] = (
    Metric("fact_accuracy", "fact accuracy", "answers that state the record's exact fact", percent=True,
           score=fact_accuracy_of, trained=True),
    Metric("token_f1", "token F1", "word overlap of the answer with the reference reply", score=token_f1_of,
           trained=True, card=False),
    Metric("exact_match", "exact match", "answers equal to the reference reply, ignoring case, accents and spacing",
           percent=True, score=exact_match_of, card=False),
    Metric("rouge_l", "ROUGE-L", "longest common word sequence with the reference reply", score=rouge_l_of),
    Metric("answer_perplexity", "answer perplexity", "perplexity of the reference replies (teacher-forced)"),
    Metric("general_perplexity", "general-text perplexity", "perplexity of general conversations: forgetting"),
    Metric("latency_s_per_answer", "latency per answer (s)", "generation time per answer, batched", card=False),
)
ANSWER_METRICS = tuple(m for m in METRICS if m.score is not None)


def score_answers(questions: list[Record], answers: list[str]) -> dict[str, float | None]:
    """Every answer metric of one model on one set of questions, by name."""
    return {m.name: m.score(questions, answers) for m in ANSWER_METRICS if m.score is not None}
