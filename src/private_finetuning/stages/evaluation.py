"""model-evaluation-server: base vs fine-tuned vs served vs reference on the held-out questions, with a report.

The stage: wait for the inputs and for the adapter trained on them under these settings; where the
server will run OpenVINO on a CPU, build the served model (evaluation/served.py: the adapter merged,
int8 weights) in scratch space; judge the models (evaluation/judge.py: answers, the metric table,
perplexities, forgetting; the fact gates on the served model's answers); write report.json,
report.md, report.html and the charts, and TensorBoard scalars next to the training curves; publish
the report; if every gate passed, publish the served model and promote the adapter with it, else
fail with the reasons (exit 4) and publish no served model.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from private_finetuning.artifacts import promotion
from private_finetuning.artifacts.store import (
    BASE_MODEL,
    BASE_TOKENIZER,
    DATASET,
    EVALUATION,
    REFERENCE_MODEL,
    RETRIEVAL_FOLDER,
    SERVED_MODEL,
    Artifact,
    ArtifactWriter,
)
from private_finetuning.errors import ConfigError, GateFailed
from private_finetuning.evaluation import charts
from private_finetuning.evaluation.judge import Judge
from private_finetuning.evaluation.metrics import METRICS
from private_finetuning.evaluation.pages import html_page, render_markdown
from private_finetuning.evaluation.report import EvaluationReport
from private_finetuning.evaluation.served import Builder, ServedModel, judges_served_model
from private_finetuning.models import host
from private_finetuning.models.device import select_device
from private_finetuning.retrieval.index import RetrievalIndex
from private_finetuning.stages.common import (
    StageContext,
    already_published,
    fingerprint,
    run_stage,
    scratch_dir,
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


@dataclass
class Judged:
    """What the stage judged: the report, its published artifact, the adapter, and the served model built
    for it (in scratch; None where the server does not run OpenVINO or the report was already published)."""

    report: EvaluationReport
    published: Artifact
    adapter: Artifact
    served: ServedModel | None = None
    index: RetrievalIndex | None = None  # the retrieval index the served model was judged with (serving.retrieval)


def evaluate(ctx: StageContext, scratch: Path) -> Judged:
    """The report (published, or already published for the same inputs) and what it judged."""
    inputs = wait_for_inputs(ctx)
    device = select_device("fp32")  # the judged transformers rows run fp32 weights without autocast, on any host
    serving = judges_served_model(ctx.config, cuda=device.name == "cuda")
    if ctx.config.serving.retrieval and not serving:
        raise ConfigError("serving.retrieval: the served model is judged with retrieval and carries its index, but "
                          "this server builds no served model (serving.engine is not openvino on a CPU)")
    fp = fingerprint(KIND, {k: a.manifest.digest for k, a in inputs.items()}, ctx.config.evaluation.model_dump(),
                     ctx.config.privacy.model_dump(),
                     ctx.config.prompting.system_prompt, serving and ctx.config.serving.openvino.model_dump(),
                     serving and ctx.config.serving.max_batch_size, ctx.config.retrieval.model_dump(),
                     ctx.config.serving.retrieval)
    existing = already_published(ctx, ctx.args.fine_tuned, ARTIFACT, KIND, fp)
    if existing is not None and (not serving or
                                 promotion.served_model_of(ctx.args.fine_tuned, inputs["adapter"].manifest.digest,
                                                           existing.manifest.digest)):
        return Judged(EvaluationReport.loads(existing.file("report.json").read_text()), existing, inputs["adapter"])
    ctx.log.info("device: %s", device.description)
    builder = Builder(ctx.config, inputs["base"], inputs["tokenizer"], inputs["adapter"], scratch) if serving else None
    judge = Judge(ctx.config, inputs, device.name, ctx.log, served=builder)
    report = judge.judge()
    write_tensorboard(ctx, inputs["adapter"], report)
    return Judged(report, publish(ctx, report, inputs, fp), inputs["adapter"], judge.served,
                  judge.index if ctx.config.serving.retrieval else None)


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
    if report.privacy is not None:
        for kind, (given, spans) in report.privacy.extractable.items():
            writer.add_scalar(f"privacy/extractable/{kind}", given, step)
            writer.add_scalar(f"privacy/spans/{kind}", spans, step)
        for i, bits in enumerate(report.privacy.canary_exposure):
            writer.add_scalar(f"privacy/canary_exposure/{i}", bits, step)
    writer.add_text("evaluation/report", render_markdown(report), step)
    writer.close()


def _run(ctx: StageContext) -> None:
    with scratch_dir() as scratch:
        judged = evaluate(ctx, Path(scratch))
        report, adapter = judged.report, judged.adapter
        summary = ", ".join(f"{k} {m.fact_accuracy:.1%}" for k, m in report.metrics.items()
                            if m.fact_accuracy is not None)
        ctx.log.info("fact accuracy: %s; report at %s", summary or "n/a",
                     ctx.args.fine_tuned / ARTIFACT / "current" / "report.md")
        failed = report.failed_gates()
        if failed:
            reasons = "; ".join(g.reason or f"{g.gate} = {g.value} vs threshold {g.threshold}" for g in failed)
            before = promotion.current(ctx.args.fine_tuned)
            kept = f"adapter {before.adapter_digest[:12]} stays promoted" if before else "nothing is promoted yet"
            raise GateFailed(f"evaluation gate failed, adapter {adapter.manifest.digest[:12]} is not promoted "
                             f"({kept}): {reasons}")
        served = publish_served(ctx, judged) if judged.served is not None else None
        gates = ", ".join(g.gate for g in report.gates) or "none configured"
        promotion.promote(ctx.args.fine_tuned, adapter, report_digest=judged.published.manifest.digest, by=STAGE,
                          reason=f"evaluation gates passed ({gates})", served=served)


def publish_served(ctx: StageContext, judged: Judged) -> Artifact:
    """Publish the served model that was judged, with the digests it was built from and how it was judged."""
    import shutil

    import openvino

    assert judged.served is not None
    served, adapter = judged.served, judged.adapter
    source = adapter.manifest.source
    with ArtifactWriter(ctx.args.fine_tuned, SERVED_MODEL.artifact, kind=SERVED_MODEL.kind, stage=STAGE,
                        keep_versions=ctx.config.artifacts.keep_versions) as w:
        assert w.path is not None
        for path in served.path.iterdir():
            shutil.copy2(path, w.path / path.name)
        if judged.index is not None:  # judged with it, so served with it: one digest covers model and index
            judged.index.save(w.path / RETRIEVAL_FOLDER)
        return w.commit(name=f"{adapter.manifest.name}-openvino-{served.weights}",
                        source={"adapter": {"kind": adapter.manifest.kind, "digest": adapter.manifest.digest},
                                "report": {"kind": KIND, "digest": judged.published.manifest.digest}},
                        metadata={"adapter_digest": adapter.manifest.digest,
                                  "base_model_digest": source.get("base_model", {}).get("digest", ""),
                                  "base_tokenizer_digest": source.get("base_tokenizer", {}).get("digest", ""),
                                  "weights": served.weights, "precision": served.precision,
                                  "kv_cache_precision": served.kv_cache_precision, "host_kind": host.kind(),
                                  "openvino": openvino.__version__, "retrieval": judged.index is not None,
                                  "fact_accuracy": judged.report.judged.fact_accuracy})


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, __doc__ or STAGE, _run, _arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
