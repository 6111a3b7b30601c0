"""model-evaluation-server: base vs fine-tuned vs reference on the held-out questions, with a report.

The recipe: wait for the five inputs; pick the held-out questions (evenly across the eval split);
for each model, in turn, answer them all in batches (greedy, bounded new tokens) and score fact
accuracy, ROUGE-L, answer perplexity and latency; measure forgetting of the fine-tuned model against
the base on general text; write report.json, report.md and TensorBoard scalars next to the training
curves; publish the report; apply the gates. One model is in memory at a time.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from private_finetuning import promotion, report_plots
from private_finetuning.artifacts import (
    BASE_MODEL,
    BASE_TOKENIZER,
    DATASET,
    EVALUATION,
    REFERENCE_MODEL,
    Artifact,
    ArtifactWriter,
)
from private_finetuning.chat import encode_for_training, with_system
from private_finetuning.data.general import GENERAL_CONVERSATIONS
from private_finetuning.data.heldout import pick_questions
from private_finetuning.errors import GateFailed, InputDataError, SourceError
from private_finetuning.evaluation_metrics import (
    answer_log_probs,
    fact_accuracy,
    fact_match,
    mean_kl,
    perplexity,
    rouge_l,
    token_f1,
)
from private_finetuning.generation import answer_questions
from private_finetuning.hf_io import load_published_model
from private_finetuning.runtime import select_runtime
from private_finetuning.stages.common import (
    StageContext,
    already_published,
    fingerprint,
    run_stage,
    wait_for_adapter,
    wait_for_output,
)

STAGE, ARTIFACT, KIND = EVALUATION.producer, EVALUATION.artifact, EVALUATION.kind
MODELS = ("base", "fine_tuned", "reference")


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", required=True, type=Path, help="the datasets volume")
    parser.add_argument("--base-model", required=True, type=Path, help="the base-model volume")
    parser.add_argument("--base-tokenizer", required=True, type=Path, help="the base-tokenizer volume")
    parser.add_argument("--reference-model", required=True, type=Path, help="the reference-model volume")
    parser.add_argument("--fine-tuned", required=True, type=Path, help="the fine-tuned-model volume")


def wait_for_inputs(ctx: StageContext) -> dict[str, Artifact]:
    a, cfg = ctx.args, ctx.config
    wanted = [("dataset", a.datasets, DATASET), ("base", a.base_model, BASE_MODEL),
              ("tokenizer", a.base_tokenizer, BASE_TOKENIZER)]
    if cfg.evaluation.include_reference:
        wanted.append(("reference", a.reference_model, REFERENCE_MODEL))
    inputs = {key: wait_for_output(cfg, volume, output) for key, volume, output in wanted}
    # The adapter trained on the inputs published now, under these settings (never one a previous run left
    # published), and the very versions of the inputs it was trained on.
    adapter, trained_on = wait_for_adapter(
        cfg, a.fine_tuned, {"dataset": a.datasets, "base_model": a.base_model, "base_tokenizer": a.base_tokenizer},
        verified={"dataset": inputs["dataset"], "base_model": inputs["base"], "base_tokenizer": inputs["tokenizer"]})
    inputs.update(adapter=adapter, dataset=trained_on["dataset"], base=trained_on["base_model"],
                  tokenizer=trained_on["base_tokenizer"])
    return inputs


def load(kind: str, inputs: dict[str, Artifact], device: str) -> tuple[Any, Any, list[int]]:
    """Model, tokenizer and end-of-turn ids of 'base', 'fine_tuned' or 'reference'."""
    from transformers import AutoTokenizer

    source = inputs["reference"] if kind == "reference" else inputs["base"]
    tok_dir = inputs["reference"].path if kind == "reference" else inputs["tokenizer"].path
    if not (tok_dir / "tokenizer_config.json").is_file():
        raise SourceError(f"{tok_dir}: the {kind.replace('_', '-')} model's tokenizer is missing")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    model = load_published_model(source.path, inputs["adapter"].path if kind == "fine_tuned" else None)
    meta = source.manifest.metadata.get("tokenizer") if kind == "reference" else inputs["tokenizer"].manifest.metadata
    eos = (meta or {}).get("end_of_turn_ids") or [tokenizer.eos_token_id]
    return model.to(device).eval(), tokenizer, eos


def answer_all(ctx: StageContext, kind: str, model: Any, tokenizer: Any, eos: list[int], device: str,
               questions: list[dict]) -> tuple[list[str], int, float]:
    """Greedy answers to ``questions`` in batches; also the tokens generated and the seconds it took."""
    cfg = ctx.config.evaluation
    start = time.perf_counter()
    answers, generated = answer_questions(
        model, tokenizer, questions, system_prompt=ctx.config.prompting.system_prompt, eos_token_ids=eos,
        batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, device=device,
        on_batch=lambda done, total: ctx.log.info("%s: answered %d/%d questions", kind, done, total))
    return answers, generated, time.perf_counter() - start


def question_sets(ctx: StageContext, dataset: Artifact) -> dict[str, list[dict]]:
    """The held-out questions (the eval split: phrasings never trained on) and a sample of trained ones."""
    cfg = ctx.config.evaluation
    trained: list[dict] = []
    if cfg.trained_samples:
        try:
            trained = pick_questions(dataset.file("train.jsonl"), cfg.trained_samples)
        except InputDataError:
            ctx.log.info("the train split has no question/answer records: no trained-question scores")
    return {"held_out": pick_questions(dataset.file("eval.jsonl"), cfg.samples), "trained": trained}


def wrong_answers(sets: dict[str, list[dict]], answers: dict[str, list[str]], limit: int) -> list[dict[str, str]]:
    """The fine-tuned model's replies that miss their record's ``answer``, for the report (never the logs)."""
    wrong = []
    for name, questions in sets.items():
        for q, reply in zip(questions, answers.get(name, []), strict=False):
            fact = q.get("meta", {}).get("answer")
            if fact is not None and not fact_match(reply, fact):
                wrong.append({"set": name.replace("_", "-"), "question": q["messages"][-2]["content"],
                              "answer": fact, "reply": reply})
    return wrong[:limit]


def answer_scores(questions: list[dict], answers: list[str]) -> dict[str, Any]:
    """Fact accuracy (overall and by kind of fact) where records carry an ``answer``; token F1 always."""
    facts = [q.get("meta", {}).get("answer") for q in questions]
    by_fact: dict[str, list[bool]] = {}
    for q, a in zip(questions, answers, strict=True):
        meta = q.get("meta", {})
        if meta.get("answer") is not None:
            by_fact.setdefault(meta.get("fact") or "fact", []).append(fact_match(a, meta["answer"]))
    expected = [q["messages"][-1]["content"] for q in questions]
    return {"fact_accuracy": fact_accuracy(answers, facts),
            "fact_accuracy_by_fact": {k: sum(v) / len(v) for k, v in sorted(by_fact.items())},
            "token_f1": sum(token_f1(a, e) for a, e in zip(answers, expected, strict=True)) / len(answers),
            "rouge_l": sum(rouge_l(a, e) for a, e in zip(answers, expected, strict=True)) / len(answers)}


def score_model(ctx: StageContext, kind: str, inputs: dict[str, Artifact], sets: dict[str, list[dict]], device: str,
                base_general: Any | None) -> tuple[dict[str, Any], dict[str, list[str]], Any]:
    """Metrics of one model on the held-out questions (and, but for the reference, the trained ones)."""
    cfg, system = ctx.config.evaluation, ctx.config.prompting.system_prompt
    model, tokenizer, eos = load(kind, inputs, device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    questions = sets["held_out"]
    answers, generated, seconds = answer_all(ctx, kind, model, tokenizer, eos, device, questions)
    examples = [encode_for_training(tokenizer, with_system(q["messages"], system)) for q in questions]
    general = [encode_for_training(tokenizer, with_system([{"role": "user", "content": u},
                                                           {"role": "assistant", "content": a}], system))
               for u, a in GENERAL_CONVERSATIONS]
    metrics: dict[str, Any] = {
        **answer_scores(questions, answers),
        "answer_perplexity": perplexity(model, examples, pad, device, cfg.batch_size),
        "general_perplexity": perplexity(model, general, pad, device, cfg.batch_size),
        "latency_s_per_answer": seconds / len(answers),
        "tokens_per_s": generated / seconds if seconds else None,
        "questions": len(answers),
    }
    all_answers = {"held_out": answers}
    if kind != "reference" and sets.get("trained"):
        all_answers["trained"] = answer_all(ctx, f"{kind} (trained questions)", model, tokenizer, eos, device,
                                            sets["trained"])[0]
        metrics["trained"] = answer_scores(sets["trained"], all_answers["trained"])
    log_probs = None
    if kind == "base":
        log_probs = answer_log_probs(model, general, pad, device, cfg.batch_size)
    elif kind == "fine_tuned" and base_general is not None:
        metrics["forgetting_kl"] = mean_kl(base_general, answer_log_probs(model, general, pad, device, cfg.batch_size))
    trained = metrics.get("trained", {}).get("fact_accuracy")
    ctx.log.info("%s: fact accuracy %s held-out, %s trained; token F1 %.3f, answer perplexity %.2f, %.2fs per answer",
                 kind, _pct(metrics["fact_accuracy"]), _pct(trained), metrics["token_f1"],
                 metrics["answer_perplexity"], metrics["latency_s_per_answer"])
    if metrics["fact_accuracy_by_fact"]:
        ctx.log.info("%s: held-out fact accuracy by kind of fact: %s (standard error of the whole %s on %d questions)",
                     kind, ", ".join(f"{k} {_pct(v)}" for k, v in metrics["fact_accuracy_by_fact"].items()),
                     _stderr(metrics["fact_accuracy"], len(questions)), len(questions))
    del model
    gc.collect()
    return metrics, all_answers, log_probs


def _stderr(accuracy: float | None, n: int) -> str:
    """The binomial standard error of an accuracy measured on ``n`` questions, in points."""
    return "n/a" if accuracy is None or n < 2 else f"±{100 * (accuracy * (1 - accuracy) / n) ** 0.5:.1f} points"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def check_gates(ctx: StageContext, report: dict[str, Any]) -> list[dict[str, Any]]:
    gates, m = ctx.config.evaluation.gates, report["metrics"]
    base, tuned = m["base"], m["fine_tuned"]
    results = []

    def gate(name: str, threshold: float | None, value: float | None, ok: bool) -> None:
        if threshold is not None:
            results.append({"gate": name, "threshold": threshold, "value": value, "passed": bool(ok)})

    if tuned["fact_accuracy"] is not None:
        gain = tuned["fact_accuracy"] - base["fact_accuracy"]
        gate("min_fact_accuracy_gain", gates.min_fact_accuracy_gain, gain,
             gates.min_fact_accuracy_gain is not None and gain >= gates.min_fact_accuracy_gain)
        gate("min_fact_accuracy", gates.min_fact_accuracy, tuned["fact_accuracy"],
             gates.min_fact_accuracy is not None and tuned["fact_accuracy"] >= gates.min_fact_accuracy)
    elif gates.min_fact_accuracy_gain is not None or gates.min_fact_accuracy is not None:
        # Records without an `answer` cannot be scored on facts; forgetting is still gated.
        results.append({"gate": "fact accuracy gates", "threshold": None, "value": None, "passed": True,
                        "reason": "not applicable: the eval split's records carry no `answer` to score"})
    gate("max_forgetting_kl", gates.max_forgetting_kl, tuned.get("forgetting_kl"),
         gates.max_forgetting_kl is not None and tuned.get("forgetting_kl", 0.0) <= gates.max_forgetting_kl)
    increase = tuned["general_perplexity"] / base["general_perplexity"] - 1
    gate("max_general_perplexity_increase", gates.max_general_perplexity_increase, increase,
         gates.max_general_perplexity_increase is not None and increase <= gates.max_general_perplexity_increase)
    return results


def render_markdown(report: dict[str, Any]) -> str:
    models = [k for k in MODELS if k in report["metrics"]]
    names = {k: _cell(report["models"][k]["name"]) for k in models}

    def fmt(value: Any, pct: bool = False) -> str:
        if value is None:
            return "n/a"
        return f"{value:.1%}" if pct else f"{value:.3f}"

    lines = [f"# Evaluation of {_cell(report['models']['fine_tuned']['name'])}", "",
             f"{report['questions']} held-out questions (phrasings never seen in training), greedy decoding, "
             f"at most {report['config']['max_new_tokens']} new tokens; evaluated in {report['duration_s']:.0f}s.", "",
             "| metric | " + " | ".join(f"{k.replace('_', '-')} ({names[k]})" for k in models) + " |",
             "|---|" + "---|" * len(models)]
    rows = [("fact accuracy, held-out", "fact_accuracy", True), ("token F1, held-out", "token_f1", False),
            ("ROUGE-L", "rouge_l", False),
            ("answer perplexity", "answer_perplexity", False), ("general-text perplexity", "general_perplexity", False),
            ("latency per answer (s)", "latency_s_per_answer", False)]
    for label, key, pct in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(report["metrics"][k].get(key), pct) for k in models) + " |")
    for label, key, pct in (("fact accuracy, trained questions", "fact_accuracy", True),
                            ("token F1, trained questions", "token_f1", False)):
        if any("trained" in report["metrics"][k] for k in models):
            lines.append(f"| {label} | " + " | ".join(fmt(report["metrics"][k].get("trained", {}).get(key), pct)
                                                       for k in models) + " |")
    f = report["forgetting"]
    lines += ["", "## Forgetting", "",
              f"Mean KL(base || fine-tuned) of next-token distributions on general text: {fmt(f['kl'])} nats; "
              f"general-text perplexity {fmt(f['general_perplexity_base'])} -> "
              f"{fmt(f['general_perplexity_fine_tuned'])} ({f['general_perplexity_increase']:+.1%}).", ""]
    by_fact = report["metrics"]["fine_tuned"]["fact_accuracy_by_fact"]
    if by_fact:
        lines += ["## Fact accuracy by fact", "", "| fact | " + " | ".join(models) + " |",
                  "|---|" + "---|" * len(models)]
        for fact in by_fact:
            lines.append(f"| {_cell(fact)} | " + " | ".join(
                fmt(report["metrics"][k]["fact_accuracy_by_fact"].get(fact), True) for k in models) + " |")
        lines.append("")
    if report["gates"]:
        lines += ["## Gates", ""]
        for g in report["gates"]:
            lines.append(f"- {'PASS' if g['passed'] else 'FAIL'} {g['gate']}: value {fmt(g['value'])}, "
                         f"threshold {g['threshold']}{' (' + g['reason'] + ')' if g.get('reason') else ''}")
        lines.append("")
    lines += ["## Side by side", ""]
    for sample in report["side_by_side"]:
        lines += [f"**Q:** {_cell(sample['question'])}", "", f"- expected: {_cell(sample['expected'])}"]
        lines += [f"- {k.replace('_', '-')}: {_cell(sample['answers'][k])}" for k in models]
        lines.append("")
    if report.get("wrong_answers"):
        lines += ["## Wrong answers of the fine-tuned model", "", "| set | question | answer | reply |",
                  "|---|---|---|---|"]
        lines += [f"| {w['set']} | {_cell(w['question'])} | {_cell(w['answer'])} | {_cell(w['reply'])} |"
                  for w in report["wrong_answers"]]
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return report_plots.escape_markdown(text)


def evaluate(ctx: StageContext) -> tuple[dict[str, Any], Artifact, Artifact]:
    """The report (published, or already published for the same inputs), its artifact and the adapter judged."""
    cfg = ctx.config.evaluation
    out = ctx.args.fine_tuned
    inputs = wait_for_inputs(ctx)
    fp = fingerprint(KIND, {k: a.manifest.digest for k, a in inputs.items()}, asdict(cfg),
                     ctx.config.prompting.system_prompt)
    existing = already_published(ctx, out, ARTIFACT, KIND, fp)
    if existing is not None:
        return json.loads(existing.file("report.json").read_text()), existing, inputs["adapter"]

    start = time.perf_counter()
    runtime = select_runtime("auto", cpu_bf16=False)
    ctx.log.info("device: %s", runtime.description)
    sets = question_sets(ctx, inputs["dataset"])
    questions = sets["held_out"]
    ctx.log.info("evaluating %d held-out and %d trained questions on %s", len(questions), len(sets["trained"]),
                 ", ".join(k for k in MODELS if k != "reference" or "reference" in inputs))
    metrics, answers, base_general = {}, {}, None
    for kind in MODELS:
        if kind == "reference" and "reference" not in inputs:
            continue
        metrics[kind], answers[kind], log_probs = score_model(ctx, kind, inputs, sets, runtime.device,
                                                              base_general)
        if kind == "base":
            base_general = log_probs
    base, tuned = metrics["base"], metrics["fine_tuned"]
    report: dict[str, Any] = {
        "questions": len(questions),
        "config": asdict(cfg),
        "models": {"base": {"name": inputs["base"].manifest.name, "digest": inputs["base"].manifest.digest},
                   "fine_tuned": {"name": inputs["adapter"].manifest.name, "digest": inputs["adapter"].manifest.digest,
                                  "base_digest": inputs["base"].manifest.digest}},
        "dataset": {"name": inputs["dataset"].manifest.name, "digest": inputs["dataset"].manifest.digest},
        "metrics": metrics,
        "forgetting": {"kl": tuned.get("forgetting_kl"), "general_perplexity_base": base["general_perplexity"],
                       "general_perplexity_fine_tuned": tuned["general_perplexity"],
                       "general_perplexity_increase": tuned["general_perplexity"] / base["general_perplexity"] - 1},
        "side_by_side": [{"question": q["messages"][-2]["content"], "expected": q["messages"][-1]["content"],
                          "answers": {k: answers[k]["held_out"][i] for k in answers}}
                         for i, q in enumerate(questions[:cfg.side_by_side])],
        "wrong_answers": wrong_answers(sets, answers["fine_tuned"], cfg.wrong_answers),
    }
    if "reference" in inputs:
        report["models"]["reference"] = {"name": inputs["reference"].manifest.name,
                                         "digest": inputs["reference"].manifest.digest}
    report["gates"] = check_gates(ctx, report)
    report["duration_s"] = round(time.perf_counter() - start, 1)
    write_tensorboard(ctx, inputs["adapter"], report)
    with ArtifactWriter(out, ARTIFACT, kind=KIND, stage=STAGE, keep_versions=ctx.config.artifacts.keep_versions) as w:
        assert w.path is not None
        (w.path / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        plots = report_plots.write_plots(w.path, report, training_run(ctx, inputs["adapter"]))
        markdown = "\n".join([render_markdown(report), *report_plots.markdown_section(plots)]) + "\n"
        (w.path / "report.md").write_text(markdown)
        (w.path / "report.html").write_text(report_plots.html_page(markdown, w.path, "Evaluation report", plots))
        w.commit(name=f"{inputs['adapter'].manifest.name}-evaluation",
                 source={k: {"kind": a.manifest.kind, "digest": a.manifest.digest} for k, a in inputs.items()}
                 | {"fingerprint": fp},
                 metadata={"fact_accuracy": {k: v["fact_accuracy"] for k, v in metrics.items()},
                           "forgetting_kl": tuned.get("forgetting_kl"),
                           "gates_passed": all(g["passed"] for g in report["gates"])})
    assert w.published is not None
    return report, w.published, inputs["adapter"]


def training_run(ctx: StageContext, adapter: Artifact) -> Path | None:
    """The training run folder the adapter names, if it is a real one of this volume (never a path taken as is)."""
    from private_finetuning.tensorboard_logging import recorded_run_dir

    return recorded_run_dir(ctx.args.fine_tuned, adapter.manifest.metadata.get("tensorboard_run"))


def write_tensorboard(ctx: StageContext, adapter: Artifact, report: dict[str, Any]) -> None:
    """Scalars and the report as text, in the training run's folder, at the adapter's final step."""
    from private_finetuning.tensorboard_logging import open_writer

    run = training_run(ctx, adapter)
    if run is None:
        ctx.log.warning("the adapter names no training run folder of this volume; no TensorBoard scalars written")
        return
    writer = open_writer(run)
    step = int(adapter.manifest.metadata.get("steps", 0))
    for kind, values in report["metrics"].items():
        for key in ("fact_accuracy", "rouge_l", "answer_perplexity", "general_perplexity", "latency_s_per_answer"):
            if values.get(key) is not None:
                writer.add_scalar(f"evaluation/{key}/{kind}", values[key], step)
    if report["forgetting"]["kl"] is not None:
        writer.add_scalar("evaluation/forgetting_kl", report["forgetting"]["kl"], step)
    writer.add_text("evaluation/report", render_markdown(report), step)
    writer.close()


def _run(ctx: StageContext) -> None:
    report, published, adapter = evaluate(ctx)
    m = report["metrics"]
    summary = ", ".join(f"{k} {m[k]['fact_accuracy']:.1%}" for k in m if m[k]["fact_accuracy"] is not None)
    ctx.log.info("fact accuracy: %s; report at %s", summary or "n/a",
                 ctx.args.fine_tuned / ARTIFACT / "current" / "report.md")
    failed = [g for g in report["gates"] if not g["passed"]]
    if failed:
        reasons = "; ".join(g.get("reason") or f"{g['gate']} = {g['value']} vs threshold {g['threshold']}"
                            for g in failed)
        before = promotion.current(ctx.args.fine_tuned)
        kept = f"adapter {before.adapter_digest[:12]} stays promoted" if before else "nothing is promoted yet"
        raise GateFailed(f"evaluation gate failed, adapter {adapter.manifest.digest[:12]} is not promoted ({kept}): "
                         f"{reasons}")
    gates = ", ".join(g["gate"] for g in report["gates"]) or "none configured"
    promotion.promote(ctx.args.fine_tuned, adapter, report_digest=published.manifest.digest, by=STAGE,
                      reason=f"evaluation gates passed ({gates})")


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, __doc__ or STAGE, _run, _arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
