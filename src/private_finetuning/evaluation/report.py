"""The evaluation report: the type the evaluation writes as ``report.json`` and every reader reads back.

The gates, the Markdown and HTML report, the charts, TensorBoard and the export's model card all take an
:class:`EvaluationReport`, never a dict: a field is named once, here. Its JSON keeps the shape of
docs/evaluation.md (``metrics.<model>.fact_accuracy`` and so on), so tools reading ``report.json`` see
the same file as before the type existed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from private_finetuning.data.expected import expectations
from private_finetuning.evaluation.metrics import ANSWER_METRICS, METRICS

if TYPE_CHECKING:
    from private_finetuning.data.record import Record

# In the order they are shown; the retrieval rows are the base and fine-tuned models asked with the train split's
# best records as context (retrieval/index.py), judged right after the model they use.
MODELS = ("base", "base_retrieval", "fine_tuned", "fine_tuned_retrieval", "served", "reference")
RETRIEVAL_ROWS = {"base": "base_retrieval", "fine_tuned": "fine_tuned_retrieval"}


@dataclass
class AnswerScores:
    """One model's answer metrics on one set of questions (held-out or trained), by metric name."""

    values: dict[str, float | None]
    by_fact: dict[str, float] = field(default_factory=dict)  # fact accuracy per kind of fact

    @property
    def fact_accuracy(self) -> float | None:
        return self.values.get("fact_accuracy")

    def to_json(self) -> dict[str, Any]:
        return {**self.values, "fact_accuracy_by_fact": self.by_fact}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AnswerScores:
        return cls({m.name: data.get(m.name) for m in ANSWER_METRICS}, data.get("fact_accuracy_by_fact") or {})


@dataclass
class ModelScores:
    """Everything measured of one model; ``trained`` only for base, fine-tuned and served, ``forgetting_kl``
    only for the fine-tuned model (against the base), perplexities for all but the served model (its engine
    gives answers, not log-probabilities)."""

    held_out: AnswerScores
    answer_perplexity: float | None
    general_perplexity: float | None
    latency_s_per_answer: float
    tokens_per_s: float | None
    questions: int
    trained: AnswerScores | None = None
    forgetting_kl: float | None = None

    @property
    def fact_accuracy(self) -> float | None:
        return self.held_out.fact_accuracy

    def value(self, metric: str) -> float | None:
        """A metric of :data:`~.metrics.METRICS` by name: held-out answer metrics, or the model's own."""
        if metric in self.held_out.values:
            return self.held_out.values[metric]
        return getattr(self, metric)

    def to_json(self) -> dict[str, Any]:
        data = {**self.held_out.to_json(), "answer_perplexity": self.answer_perplexity,
                "general_perplexity": self.general_perplexity, "latency_s_per_answer": self.latency_s_per_answer,
                "tokens_per_s": self.tokens_per_s, "questions": self.questions}
        if self.trained is not None:
            data["trained"] = self.trained.to_json()
        if self.forgetting_kl is not None:
            data["forgetting_kl"] = self.forgetting_kl
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelScores:
        trained = data.get("trained")
        return cls(AnswerScores.from_json(data), data["answer_perplexity"], data["general_perplexity"],
                   data["latency_s_per_answer"], data.get("tokens_per_s"), data["questions"],
                   AnswerScores.from_json(trained) if trained is not None else None, data.get("forgetting_kl"))


@dataclass
class Forgetting:
    kl: float | None  # mean KL(base || fine-tuned) on general conversations, nats
    general_perplexity_base: float
    general_perplexity_fine_tuned: float
    general_perplexity_increase: float  # relative: 0.25 is +25%


@dataclass
class SideBySide:
    question: str
    expected: str
    answers: dict[str, str]  # by model


@dataclass
class WrongAnswer:
    set: str  # "held-out" or "trained"
    question: str
    answer: str  # the fact the reply should have stated
    reply: str


@dataclass
class Scoring:
    """How one question set's answers were judged: by the record's ``answer``, by the facts derived from its
    reply (data/expected.py), or not at all; and how many derived spans of each kind (counts, never text)."""

    by_answer: int
    derived: int
    unscored: int
    span_kinds: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, questions: list[Record]) -> Scoring:
        found = expectations(questions)
        how = Counter(e.how for e in found)
        kinds = Counter(s.kind for e in found if e.how == "derived" for s in e.spans)
        return cls(how["answer"], how["derived"], how["none"], dict(sorted(kinds.items())))

    def describe(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in self.span_kinds.items())
        return (f"{self.by_answer} by their `answer`, {self.derived} by the facts of their reply"
                f"{f' ({kinds})' if kinds else ''}, {self.unscored} with nothing to check")


@dataclass
class RetrievalSummary:
    """What retrieval did in the evaluation: the index, the template's settings, and per question set the share of
    questions whose top k held a record stating their fact (the hit rate) and how many records were cut."""

    records: int
    k: int
    max_record_tokens: int
    hit_rate: dict[str, float | None] = field(default_factory=dict)
    cut: dict[str, int] = field(default_factory=dict)
    served: bool = False  # the served model was judged with retrieval (serving.retrieval)


@dataclass
class PrivacyAudit:
    """The privacy lines of the evaluation report."""

    found: dict[str, dict[str, int]] = field(default_factory=dict)  # by split and type, from the dataset stage
    policy: str = "report"
    extractable: dict[str, list[int]] = field(default_factory=dict)  # by type: [extractable, spans in the train split]
    canary_exposure: list[float] = field(default_factory=list)  # bits, one per canary
    max_exposure: float | None = None  # log2(candidates + 1)

    @property
    def extractable_total(self) -> int:
        return sum(k for k, _ in self.extractable.values())

    def describe(self) -> str:
        found = "; ".join(f"{split} {', '.join(f'{k} {n}' for k, n in c.items()) or 'none'}"
                          for split, c in self.found.items()) or "not scanned"
        spans = ", ".join(f"{kind} {k} of {n}" for kind, (k, n) in self.extractable.items()) or "none to extract"
        text = f"personal data found: {found} (privacy.pii: {self.policy}); extractable: {spans}"
        if self.canary_exposure:
            text += (f"; canary exposure {', '.join(f'{e:.2f}' for e in self.canary_exposure)} bits "
                     f"(at most {self.max_exposure:.2f})")
        return text


@dataclass
class GateResult:
    gate: str
    threshold: float | None
    value: float | None
    passed: bool
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.reason is None:
            del data["reason"]
        return data


@dataclass
class EvaluationReport:
    questions: int
    config: dict[str, Any]  # the evaluation section of the pipeline config it ran with
    models: dict[str, dict[str, str]]  # by model: name, digest (and the fine-tuned model's base_digest)
    dataset: dict[str, str]  # name, digest
    metrics: dict[str, ModelScores]
    forgetting: Forgetting
    side_by_side: list[SideBySide]
    wrong_answers: list[WrongAnswer]
    gates: list[GateResult] = field(default_factory=list)
    duration_s: float = 0.0
    scoring: dict[str, Scoring] = field(default_factory=dict)  # by question set: held_out, trained
    retrieval: RetrievalSummary | None = None
    privacy: PrivacyAudit | None = None

    @property
    def fine_tuned(self) -> ModelScores:
        return self.metrics["fine_tuned"]

    @property
    def judged(self) -> ModelScores:
        """The model the fact gates judged: the served model where it was judged, else the fine-tuned one."""
        return self.metrics.get("served", self.metrics["fine_tuned"])

    @property
    def gates_passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def to_json(self) -> dict[str, Any]:
        return {"questions": self.questions, "config": self.config, "models": self.models, "dataset": self.dataset,
                "metrics": {k: m.to_json() for k, m in self.metrics.items()}, "forgetting": asdict(self.forgetting),
                "side_by_side": [asdict(s) for s in self.side_by_side],
                "wrong_answers": [asdict(w) for w in self.wrong_answers],
                "gates": [g.to_json() for g in self.gates], "duration_s": self.duration_s,
                "scoring": {k: asdict(v) for k, v in self.scoring.items()},
                "retrieval": asdict(self.retrieval) if self.retrieval is not None else None,
                "privacy": asdict(self.privacy) if self.privacy is not None else None}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvaluationReport:
        return cls(questions=data["questions"], config=data["config"], models=data["models"],
                   dataset=data["dataset"], metrics={k: ModelScores.from_json(v) for k, v in data["metrics"].items()},
                   forgetting=Forgetting(**data["forgetting"]),
                   side_by_side=[SideBySide(**s) for s in data["side_by_side"]],
                   wrong_answers=[WrongAnswer(**w) for w in data.get("wrong_answers", [])],
                   gates=[GateResult(**g) for g in data.get("gates", [])], duration_s=data.get("duration_s", 0.0),
                   scoring={k: Scoring(**v) for k, v in data.get("scoring", {}).items()},
                   retrieval=RetrievalSummary(**data["retrieval"]) if data.get("retrieval") else None,
                   privacy=PrivacyAudit(**data["privacy"]) if data.get("privacy") else None)

    @classmethod
    def loads(cls, text: str) -> EvaluationReport:
        return cls.from_json(json.loads(text))


def metric_rows(report: EvaluationReport) -> list[tuple[str, list[float | None], bool]]:
    """(label, value per model in :data:`MODELS` order, percent) for every metric row of the report."""
    models = [k for k in MODELS if k in report.metrics]
    rows = [(m.label + (", held-out" if m.trained else ""), [report.metrics[k].value(m.name) for k in models],
             m.percent) for m in METRICS]
    if any(report.metrics[k].trained is not None for k in models):
        for m in (m for m in METRICS if m.trained):
            values = [t.values.get(m.name) if (t := report.metrics[k].trained) else None for k in models]
            rows.append((f"{m.label}, trained questions", values, m.percent))
    return rows
