"""model-evaluation-server: base vs fine-tuned vs reference on the held-out questions, with a report.

The stage: wait for the inputs and for the adapter trained on them under these settings; judge the
models (evaluation/judge.py: answers, the metric table, perplexities, forgetting); write report.json,
report.md, report.html and the charts, and TensorBoard scalars next to the training curves; publish
the report; promote the adapter if every gate passed, else fail with the reasons (exit 4).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from private_finetuning.artifacts import promotion
from private_finetuning.artifacts.store import (
    BASE_MODEL,
    BASE_TOKENIZER,
    DATASET,
    EVALUATION,
    REFERENCE_MODEL,
    Artifact,
    ArtifactWriter,
)
from private_finetuning.errors import GateFailed
from private_finetuning.evaluation import charts
from private_finetuning.evaluation.judge import Judge
from private_finetuning.evaluation.metrics import METRICS
from private_finetuning.evaluation.pages import html_page, render_markdown
from private_finetuning.evaluation.report import EvaluationReport
from private_finetuning.models.device import select_device
from private_finetuning.stages.common import (
    StageContext,
    already_published,
    fingerprint,
    run_stage,
    training_input_volumes,
    wait_for_adapter,
    wait_for_output,
)

STAGE, ARTIFACT, KIND = EVALUATION.producer, EVALUATION.artifact, EVALUATION.kind


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
        cfg, a.fine_tuned, training_input_volumes(a),
        verified={"dataset": inputs["dataset"], "base_model": inputs["base"], "base_tokenizer": inputs["tokenizer"]})
    inputs.update(adapter=adapter, dataset=trained_on["dataset"], base=trained_on["base_model"],
                  tokenizer=trained_on["base_tokenizer"])
    return inputs


def evaluate(ctx: StageContext) -> tuple[EvaluationReport, Artifact, Artifact]:
    """The report (published, or already published for the same inputs), its artifact and the adapter judged."""
    inputs = wait_for_inputs(ctx)
    fp = fingerprint(KIND, {k: a.manifest.digest for k, a in inputs.items()}, ctx.config.evaluation.model_dump(),
                     ctx.config.prompting.system_prompt)
    existing = already_published(ctx, ctx.args.fine_tuned, ARTIFACT, KIND, fp)
    if existing is not None:
        return EvaluationReport.loads(existing.file("report.json").read_text()), existing, inputs["adapter"]
    device = select_device("auto", cpu_bf16=False)
    ctx.log.info("device: %s", device.description)
    report = Judge(ctx.config, inputs, device.name, ctx.log).judge()
    write_tensorboard(ctx, inputs["adapter"], report)
    return report, publish(ctx, report, inputs, fp), inputs["adapter"]


def publish(ctx: StageContext, report: EvaluationReport, inputs: dict[str, Artifact], fp: str) -> Artifact:
    adapter = inputs["adapter"]
    with ArtifactWriter(ctx.args.fine_tuned, ARTIFACT, kind=KIND, stage=STAGE,
                        keep_versions=ctx.config.artifacts.keep_versions) as w:
        assert w.path is not None
        (w.path / "report.json").write_text(report.dumps())
        plots = charts.write_charts(w.path, report, training_run(ctx, adapter))
        markdown = "\n".join([render_markdown(report), *charts.markdown_section(plots)]) + "\n"
        (w.path / "report.md").write_text(markdown)
        (w.path / "report.html").write_text(html_page(markdown, w.path, "Evaluation report", plots))
        published = w.commit(name=f"{adapter.manifest.name}-evaluation",
                             source={k: {"kind": a.manifest.kind, "digest": a.manifest.digest}
                                     for k, a in inputs.items()} | {"fingerprint": fp},
                             metadata={"fact_accuracy": {k: v.fact_accuracy for k, v in report.metrics.items()},
                                       "forgetting_kl": report.fine_tuned.forgetting_kl,
                                       "gates_passed": report.gates_passed})
    return published


def training_run(ctx: StageContext, adapter: Artifact) -> Path | None:
    """The training run folder the adapter names, if it is a real one of this volume (never a path taken as is)."""
    from private_finetuning.telemetry.tensorboard import recorded_run_dir

    return recorded_run_dir(ctx.args.fine_tuned, adapter.manifest.metadata.get("tensorboard_run"))


def write_tensorboard(ctx: StageContext, adapter: Artifact, report: EvaluationReport) -> None:
    """Every metric of the table as a scalar, and the report as text, in the training run's folder at the
    adapter's final step."""
    from private_finetuning.telemetry.tensorboard import open_writer

    run = training_run(ctx, adapter)
    if run is None:
        ctx.log.warning("the adapter names no training run folder of this volume; no TensorBoard scalars written")
        return
    writer = open_writer(run)
    step = int(adapter.manifest.metadata.get("steps", 0))
    for kind, scores in report.metrics.items():
        for metric in METRICS:
            if (value := scores.value(metric.name)) is not None:
                writer.add_scalar(f"evaluation/{metric.name}/{kind}", value, step)
    if report.forgetting.kl is not None:
        writer.add_scalar("evaluation/forgetting_kl", report.forgetting.kl, step)
    writer.add_text("evaluation/report", render_markdown(report), step)
    writer.close()


def _run(ctx: StageContext) -> None:
    report, published, adapter = evaluate(ctx)
    summary = ", ".join(f"{k} {m.fact_accuracy:.1%}" for k, m in report.metrics.items() if m.fact_accuracy is not None)
    ctx.log.info("fact accuracy: %s; report at %s", summary or "n/a",
                 ctx.args.fine_tuned / ARTIFACT / "current" / "report.md")
    failed = report.failed_gates()
    if failed:
        reasons = "; ".join(g.reason or f"{g.gate} = {g.value} vs threshold {g.threshold}" for g in failed)
        before = promotion.current(ctx.args.fine_tuned)
        kept = f"adapter {before.adapter_digest[:12]} stays promoted" if before else "nothing is promoted yet"
        raise GateFailed(f"evaluation gate failed, adapter {adapter.manifest.digest[:12]} is not promoted ({kept}): "
                         f"{reasons}")
    gates = ", ".join(g.gate for g in report.gates) or "none configured"
    promotion.promote(ctx.args.fine_tuned, adapter, report_digest=published.manifest.digest, by=STAGE,
                      reason=f"evaluation gates passed ({gates})")


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, __doc__ or STAGE, _run, _arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
