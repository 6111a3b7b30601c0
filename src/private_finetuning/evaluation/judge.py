"""Judging the models: base, fine-tuned, served and reference, one in memory at a time, on the same questions.

For each model: greedy answers to the held-out questions (the eval split: phrasings never trained on)
and, but for the reference, to a sample of trained ones, in batches sorted by length; the answer metrics
of the metric table; answer and general-text perplexity; and, for the fine-tuned model, the KL to the
base on general conversations. The served model is the fine-tuned one as the CPU server runs it
(``served.py``): answers only, and the fact gates judge them. :func:`build_report` puts it together as
an :class:`EvaluationReport`.
"""

from __future__ import annotations

import gc
import math
import time
from typing import TYPE_CHECKING

from private_finetuning.data.chat import encode_for_training, with_system
from private_finetuning.data.expected import expectations
from private_finetuning.data.general import GENERAL_CONVERSATIONS
from private_finetuning.data.heldout import pick_questions
from private_finetuning.errors import InputDataError, SourceError
from private_finetuning.evaluation.gates import check_gates
from private_finetuning.evaluation.metrics import fact_accuracy_by_kind, score_answers
from private_finetuning.evaluation.pages import percent
from private_finetuning.evaluation.report import (
    MODELS,
    RETRIEVAL_ROWS,
    AnswerScores,
    EvaluationReport,
    Forgetting,
    ModelScores,
    PrivacyAudit,
    RetrievalSummary,
    Scoring,
    SideBySide,
    WrongAnswer,
)
from private_finetuning.models import host
from private_finetuning.models.generation import answer_questions
from private_finetuning.models.loading import load_published_model
from private_finetuning.models.scoring import answer_log_probs, mean_kl, perplexity

if TYPE_CHECKING:
    import logging

    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from private_finetuning.artifacts.store import Artifact
    from private_finetuning.config import PipelineConfig
    from private_finetuning.data.record import Record
    from private_finetuning.evaluation.served import Builder, ServedModel
    from private_finetuning.retrieval.index import Context, RetrievalIndex

QuestionSets = dict[str, list["Record"]]  # "held_out" and "trained"
Answers = dict[str, list[str]]  # by question set


def question_sets(config: PipelineConfig, dataset: Artifact, log: logging.Logger) -> QuestionSets:
    """The held-out questions (the eval split: phrasings never trained on) and a sample of trained ones."""
    cfg = config.evaluation
    trained: list[Record] = []
    if cfg.trained_samples:
        try:
            trained = pick_questions(dataset.file("train.jsonl"), cfg.trained_samples)
        except InputDataError:
            log.info("the train split has no question/answer records: no trained-question scores")
    return {"held_out": pick_questions(dataset.file("eval.jsonl"), cfg.samples), "trained": trained}


def wrong_answers(sets: QuestionSets, answers: Answers, limit: int) -> list[WrongAnswer]:
    """The fine-tuned model's replies that miss their record's fact, for the report (never the logs)."""
    wrong = []
    for name, questions in sets.items():
        for q, e, reply in zip(questions, expectations(questions), answers.get(name, []), strict=False):
            if e.met_by(reply) is False:
                fact = " · ".join(s.text for s in e.spans)
                wrong.append(WrongAnswer(name.replace("_", "-"), q.question, fact, reply))
    return wrong[:limit]


def asked_as(record: Record, prompt: str) -> Record:
    """``record`` with its question replaced by ``prompt`` (the question with context): what a model is asked."""
    return record.replace(messages=[*record.messages[:-2], {"role": "user", "content": prompt}, record.messages[-1]])


def answer_scores(questions: list[Record], answers: list[str]) -> AnswerScores:
    return AnswerScores(score_answers(questions, answers), fact_accuracy_by_kind(questions, answers))


class Judge:
    """Scores each model in turn on the same question sets and puts the report together."""

    def __init__(self, config: PipelineConfig, inputs: dict[str, Artifact], device: str, log: logging.Logger,
                 served: Builder | None = None):
        self.config, self.inputs, self.device, self.log, self.builder = config, inputs, device, log, served
        self.sets = question_sets(config, inputs["dataset"], log)
        self.models = [k for k in MODELS if (k != "reference" or "reference" in inputs) and
                       (k != "served" or served is not None) and k not in RETRIEVAL_ROWS.values()]
        self.index = self._build_index()
        self.contexts: dict[str, list[Context]] = {}  # per question set, once asked with retrieval
        self.extra: dict[str, tuple[ModelScores, Answers]] = {}  # the retrieval rows, judged beside their models
        self.privacy: PrivacyAudit | None = None
        self.served: ServedModel | None = None  # the served model judged, once judged
        self.precisions: dict[str, str] = {}  # each transformers row's dtype, recorded in its row of the report

    def _build_index(self) -> RetrievalIndex | None:
        """BM25 over the train split (never the eval split), where retrieval is judged or served."""
        if not (self.config.retrieval.evaluate or self.config.serving.retrieval):
            return None
        from private_finetuning.data.record import read_split
        from private_finetuning.retrieval.index import RetrievalIndex

        path = self.inputs["dataset"].file("train.jsonl")
        start = time.perf_counter()
        index = RetrievalIndex.build(read_split(path), str(path))
        self.log.info("retrieval: indexed %d train records in %.2fs (BM25, k=%d)", len(index.passages),
                      time.perf_counter() - start, self.config.retrieval.k)
        return index

    def asked_with_retrieval(self) -> QuestionSets:
        """Each question set as asked with retrieval: the k best train records, cut to size, before each question."""
        assert self.index is not None
        if not self.contexts:
            tokenizer, _ = self.tokenizer("base")
            cfg = self.config.retrieval

            def count(text: str) -> int:
                return len(tokenizer(text, add_special_tokens=False)["input_ids"])

            for name, questions in self.sets.items():
                self.contexts[name] = [self.index.context(q.question, cfg.k, cfg.max_record_tokens, count)
                                       for q in questions]
        return {name: [asked_as(q, c.prompt) for q, c in zip(questions, self.contexts[name], strict=True)]
                for name, questions in self.sets.items()}

    def retrieval_summary(self) -> RetrievalSummary | None:
        """The index's size, the settings, and per question set the hit rate (a retrieved record states the
        question's fact) and the records cut."""
        if self.index is None or not self.contexts:
            return None
        cfg = self.config.retrieval
        summary = RetrievalSummary(len(self.index.passages), cfg.k, cfg.max_record_tokens,
                                   served=self.config.serving.retrieval)
        for name, questions in self.sets.items():
            hits = [e.met_by(" ".join(self.index.passages[i].reply for i in c.passages)) if c.passages else
                    (False if e.how != "none" else None)
                    for e, c in zip(expectations(questions), self.contexts[name], strict=True)]
            checked = [h for h in hits if h is not None]
            summary.hit_rate[name] = sum(checked) / len(checked) if checked else None
            summary.cut[name] = sum(c.cut for c in self.contexts[name])
        return summary

    def score_with_retrieval(self, kind: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                             eos: list[int]) -> tuple[ModelScores, Answers]:
        """The answer metrics of ``kind`` asked with retrieval (the same model in memory, the same questions and
        scoring: only the prompt differs); no perplexities (teacher-forced scores are of the plain model)."""
        asked, label = self.asked_with_retrieval(), f"{kind} + retrieval"
        answers, generated, seconds = self.answer_all(label, model, tokenizer, eos, asked["held_out"])
        scores = ModelScores(answer_scores(self.sets["held_out"], answers), None, None,
                             seconds / max(len(answers), 1), generated / seconds if seconds else None, len(answers))
        all_answers = {"held_out": answers}
        if self.sets.get("trained"):
            all_answers["trained"] = self.answer_all(f"{label} (trained questions)", model, tokenizer, eos,
                                                     asked["trained"])[0]
            scores.trained = answer_scores(self.sets["trained"], all_answers["trained"])
        self._log_scores(label, scores)
        return scores, all_answers

    def audit_privacy(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, eos: list[int],
                      pad: int) -> PrivacyAudit:
        """What the fine-tuned model gives away of the train split's personal data, and its canaries' exposure."""
        from private_finetuning.data.record import read_split
        from private_finetuning.evaluation import privacy

        dataset = self.inputs["dataset"]
        scanned = dataset.manifest.metadata.get("privacy") or {}
        train = read_split(dataset.file("train.jsonl"))
        audit = PrivacyAudit(found=scanned.get("found", {}), policy=scanned.get("policy", "report"))
        audit.extractable = privacy.extraction(model, tokenizer, eos, train, self.config, self.device)
        audit.canary_exposure = privacy.exposures(model, tokenizer, pad, train, self.config, self.device)
        if audit.canary_exposure:
            audit.max_exposure = math.log2(self.config.privacy.canary_candidates + 1)
        self.log.info("privacy: %s", audit.describe())  # counts and bits, never a value
        return audit

    def tokenizer(self, kind: str) -> tuple[PreTrainedTokenizerBase, list[int]]:
        """Tokenizer and end-of-turn ids of 'base', 'fine_tuned', 'served' or 'reference'."""
        from transformers import AutoTokenizer

        inputs = self.inputs
        tok_dir = inputs["reference"].path if kind == "reference" else inputs["tokenizer"].path
        if not (tok_dir / "tokenizer_config.json").is_file():
            raise SourceError(f"{tok_dir}: the {kind.replace('_', '-')} model's tokenizer is missing")
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        meta = (inputs["reference"].manifest.metadata.get("tokenizer") if kind == "reference"
                else inputs["tokenizer"].manifest.metadata)
        return tokenizer, (meta or {}).get("end_of_turn_ids") or [tokenizer.eos_token_id]

    def load(self, kind: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, list[int]]:
        """Model, tokenizer and end-of-turn ids of 'base', 'fine_tuned' or 'reference'."""
        source = self.inputs["reference"] if kind == "reference" else self.inputs["base"]
        tokenizer, eos = self.tokenizer(kind)
        model = load_published_model(source.path, self.inputs["adapter"].path if kind == "fine_tuned" else None)
        self.precisions[kind] = str(model.dtype).removeprefix("torch.")  # no autocast: the weights' dtype is it
        return model.to(self.device).eval(), tokenizer, eos

    def answer_all(self, kind: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, eos: list[int],
                   questions: list[Record]) -> tuple[list[str], int, float]:
        """Greedy answers to ``questions`` in batches; also the tokens generated and the seconds it took."""
        cfg = self.config.evaluation
        start = time.perf_counter()
        answers, generated = answer_questions(
            model, tokenizer, questions, system_prompt=self.config.prompting.system_prompt, eos_token_ids=eos,
            batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, device=self.device,
            on_batch=lambda done, total: self.log.info("%s: answered %d/%d questions", kind, done, total))
        return answers, generated, time.perf_counter() - start

    def score(self, kind: str, base_general: torch.Tensor | None) -> tuple[ModelScores, Answers, torch.Tensor | None]:
        """Metrics of one model on the held-out questions (and, but for the reference, the trained ones);
        also its answers, and for the base model its log-probabilities on general text (for the KL)."""
        cfg, system = self.config.evaluation, self.config.prompting.system_prompt
        model, tokenizer, eos = self.load(kind)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        questions = self.sets["held_out"]
        answers, generated, seconds = self.answer_all(kind, model, tokenizer, eos, questions)
        examples = [encode_for_training(tokenizer, with_system(q.messages, system)) for q in questions]
        general = [encode_for_training(tokenizer, with_system([{"role": "user", "content": u},
                                                               {"role": "assistant", "content": a}], system))
                   for u, a in GENERAL_CONVERSATIONS]
        scores = ModelScores(answer_scores(questions, answers),
                             answer_perplexity=perplexity(model, examples, pad, self.device, cfg.batch_size),
                             general_perplexity=perplexity(model, general, pad, self.device, cfg.batch_size),
                             latency_s_per_answer=seconds / len(answers),
                             tokens_per_s=generated / seconds if seconds else None, questions=len(answers))
        all_answers = {"held_out": answers}
        if kind != "reference" and self.sets.get("trained"):
            all_answers["trained"] = self.answer_all(f"{kind} (trained questions)", model, tokenizer, eos,
                                                     self.sets["trained"])[0]
            scores.trained = answer_scores(self.sets["trained"], all_answers["trained"])
        log_probs = None
        if kind == "base":
            log_probs = answer_log_probs(model, general, pad, self.device, cfg.batch_size)
        elif kind == "fine_tuned" and base_general is not None:
            scores.forgetting_kl = mean_kl(base_general, answer_log_probs(model, general, pad, self.device,
                                                                          cfg.batch_size))
        if kind == "fine_tuned":
            self.privacy = self.audit_privacy(model, tokenizer, eos, pad)
        self._log_scores(kind, scores)
        if kind in RETRIEVAL_ROWS and self.config.retrieval.evaluate:
            self.extra[RETRIEVAL_ROWS[kind]] = self.score_with_retrieval(kind, model, tokenizer, eos)
        del model
        gc.collect()
        return scores, all_answers, log_probs

    def score_served(self, fine_tuned: ModelScores) -> tuple[ModelScores, Answers]:
        """The served model's answer metrics; int8 weights give way to fp32 where they lose too much accuracy."""
        assert self.builder is not None
        settings = self.config.serving.openvino
        served = self.builder.build(settings.weights)
        scores, answers = self._served_scores(served)
        limit, tuned = settings.max_int8_accuracy_loss, fine_tuned.fact_accuracy
        if served.weights == "int8" and limit is not None and tuned is not None and scores.fact_accuracy is not None \
                and tuned - scores.fact_accuracy > limit:
            self.log.warning("int8 weights answer %s of the held-out questions against %s in fp32, more than "
                             "serving.openvino.max_int8_accuracy_loss (%s) below: judging fp32 weights instead",
                             percent(scores.fact_accuracy), percent(tuned), percent(limit))
            served = self.builder.build("fp32")
            scores, answers = self._served_scores(served)
        self.served = served
        self._log_scores("served", scores)
        return scores, answers

    def _served_scores(self, served: ServedModel) -> tuple[ModelScores, Answers]:
        from private_finetuning.evaluation.served import answer, open_pipeline

        tokenizer, eos = self.tokenizer("served")
        with_retrieval = self.config.serving.retrieval  # judged as it will be served
        self.log.info("served (%s%s): answering %d held-out and %d trained questions", served.describe(),
                      ", with retrieval" if with_retrieval else "", len(self.sets["held_out"]),
                      len(self.sets["trained"]))
        asked = self.asked_with_retrieval() if with_retrieval else self.sets
        questions, pipe = self.sets["held_out"], open_pipeline(served, self.config)
        answers, generated, seconds = answer(pipe, self.config, tokenizer, eos, asked["held_out"])
        scores = ModelScores(answer_scores(questions, answers), None, None, seconds / max(len(answers), 1),
                             generated / seconds if seconds else None, len(answers))
        all_answers = {"held_out": answers}
        if self.sets.get("trained"):
            all_answers["trained"] = answer(pipe, self.config, tokenizer, eos, asked["trained"])[0]
            scores.trained = answer_scores(self.sets["trained"], all_answers["trained"])
        return scores, all_answers

    def _log_scores(self, kind: str, m: ModelScores) -> None:
        trained = m.trained.fact_accuracy if m.trained else None
        perplexity_text = f", answer perplexity {m.answer_perplexity:.2f}" if m.answer_perplexity is not None else ""
        self.log.info("%s: fact accuracy %s held-out, %s trained; token F1 %.3f%s, %.2fs per answer", kind,
                      percent(m.fact_accuracy), percent(trained), m.value("token_f1") or 0.0, perplexity_text,
                      m.latency_s_per_answer)
        if m.held_out.by_fact:
            self.log.info("%s: held-out fact accuracy by kind of fact: %s (standard error of the whole %s on %d "
                          "questions)", kind, ", ".join(f"{k} {percent(v)}" for k, v in m.held_out.by_fact.items()),
                          _stderr(m.fact_accuracy, m.questions), m.questions)

    def judge(self) -> EvaluationReport:
        """Every model scored in turn; the report with its gates checked."""
        start = time.perf_counter()
        self.log.info("evaluating %d held-out and %d trained questions on %s", len(self.sets["held_out"]),
                      len(self.sets["trained"]), ", ".join(self.models))
        for name, questions in self.sets.items():
            if questions:  # how each answer will be judged: counts and kinds of fact, never the data's text
                self.log.info("%s questions' facts: %s", name.replace("_", "-"), Scoring.of(questions).describe())
        metrics: dict[str, ModelScores] = {}
        answers: dict[str, Answers] = {}
        base_general = None
        for kind in self.models:
            if kind == "served":
                metrics[kind], answers[kind] = self.score_served(metrics["fine_tuned"])
                continue
            metrics[kind], answers[kind], log_probs = self.score(kind, base_general)
            if kind == "base":
                base_general = log_probs
            if RETRIEVAL_ROWS.get(kind) in self.extra:
                metrics[RETRIEVAL_ROWS[kind]], answers[RETRIEVAL_ROWS[kind]] = self.extra.pop(RETRIEVAL_ROWS[kind])
        report = build_report(self.config, self.inputs, self.sets, metrics, answers, self.served, self.precisions,
                              self.privacy)
        report.retrieval = self.retrieval_summary()
        report.duration_s = round(time.perf_counter() - start, 1)
        return report


def build_report(config: PipelineConfig, inputs: dict[str, Artifact], sets: QuestionSets,
                 metrics: dict[str, ModelScores], answers: dict[str, Answers],
                 served: ServedModel | None = None, precisions: dict[str, str] | None = None,
                 privacy: PrivacyAudit | None = None) -> EvaluationReport:
    cfg = config.evaluation
    base, tuned = metrics["base"], metrics["fine_tuned"]
    models = {"base": {"name": inputs["base"].manifest.name, "digest": inputs["base"].manifest.digest},
              "fine_tuned": {"name": inputs["adapter"].manifest.name, "digest": inputs["adapter"].manifest.digest,
                             "base_digest": inputs["base"].manifest.digest}}
    if served is not None and "served" in answers:
        equal = sum(a == b for a, b in zip(answers["served"]["held_out"], answers["fine_tuned"]["held_out"],
                                           strict=True))
        models["served"] = {**models["fine_tuned"], "engine": "openvino", "weights": served.weights,
                            "precision": served.precision, "kv_cache_precision": served.kv_cache_precision,
                            "host_kind": host.kind(),
                            "answers_equal_to_fine_tuned": f"{equal}/{len(answers['served']['held_out'])}"}
    if "reference" in inputs:
        models["reference"] = {"name": inputs["reference"].manifest.name,
                               "digest": inputs["reference"].manifest.digest}
    for kind, dtype in (precisions or {}).items():
        if kind in models:
            models[kind]["precision"] = dtype
    for plain, with_retrieval in RETRIEVAL_ROWS.items():
        if with_retrieval in metrics:
            models[with_retrieval] = {**models[plain], "retrieval": f"BM25, train split, top {config.retrieval.k}"}
    questions = sets["held_out"]
    report = EvaluationReport(
        questions=len(questions), config=cfg.model_dump(), models=models,
        dataset={"name": inputs["dataset"].manifest.name, "digest": inputs["dataset"].manifest.digest},
        metrics=metrics,
        forgetting=Forgetting(tuned.forgetting_kl, base.general_perplexity, tuned.general_perplexity,
                              tuned.general_perplexity / base.general_perplexity - 1),
        side_by_side=[SideBySide(q.question, q.reply, {k: answers[k]["held_out"][i] for k in answers})
                      for i, q in enumerate(questions[:cfg.side_by_side])],
        wrong_answers=wrong_answers(sets, answers.get("served", answers["fine_tuned"]), cfg.wrong_answers))
    report.scoring = {name: Scoring.of(questions) for name, questions in sets.items() if questions}
    report.privacy = privacy
    report.gates = check_gates(cfg.gates, metrics, config.privacy.max_extractable, privacy)
    return report


def _stderr(accuracy: float | None, n: int) -> str:
    """The binomial standard error of an accuracy measured on ``n`` questions, in points."""
    return "n/a" if accuracy is None or n < 2 else f"±{100 * (accuracy * (1 - accuracy) / n) ** 0.5:.1f} points"
