"""Pictures for the evaluation report, drawn headless with matplotlib, and an HTML page that needs no server.

The PNGs go into the evaluation artifact (``plots/``, listed in its manifest like every file);
``report.md`` links them and ``report.html`` carries them inline, so the report opens from the
volume in any browser. They show numbers only, never dataset text.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from private_finetuning.evaluation.report import EvaluationReport

MODEL_COLOURS = {"base": "#9aa5b1", "base_retrieval": "#c5ccd4", "fine_tuned": "#1f77b4",
                 "fine_tuned_retrieval": "#8fbbe0", "served": "#2ca02c", "reference": "#ff7f0e"}


def _pyplot() -> Any:
    # matplotlib caches fonts under $HOME, which a read-only pod has not got: use the scratch space.
    os.environ.setdefault("MPLCONFIGDIR", str(Path(tempfile.gettempdir()) / "matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    _pyplot().close(figure)
    return buffer.getvalue()


def loss_chart(run_dir: Path | None) -> bytes | None:
    """Training loss per step, and eval loss where it was measured, from the training run's TensorBoard events."""
    if run_dir is None:
        return None
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags().get("scalars", [])
    if "train/loss" not in tags:
        return None
    figure, axes = _pyplot().subplots(figsize=(6.4, 3.4))
    train = events.Scalars("train/loss")
    axes.plot([e.step for e in train], [e.value for e in train], label="training loss", color="#1f77b4")
    if "eval/loss" in tags:
        evals = events.Scalars("eval/loss")
        axes.plot([e.step for e in evals], [e.value for e in evals], "o-", label="eval loss", color="#d62728")
    axes.set(xlabel="optimizer step", ylabel="loss (answer tokens)", title="Training")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend()
    return _png(figure)


def _bars(groups: list[str], series: dict[str, list[float | None]], title: str, ylabel: str,
          percent: bool) -> bytes:
    figure, axes = _pyplot().subplots(figsize=(6.4, 3.4))
    width = 0.8 / max(1, len(series))
    for i, (model, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        heights = [0.0 if v is None else v * (100 if percent else 1) for v in values]
        bars = axes.bar(xs, heights, width, label=model.replace("_", "-"), color=MODEL_COLOURS.get(model))
        axes.bar_label(bars, labels=["n/a" if v is None else (f"{v:.0%}" if percent else f"{v:.3g}") for v in values],
                       fontsize=8)
    axes.set_xticks(range(len(groups)), groups)
    axes.set(title=title, ylabel=ylabel)
    if percent:
        axes.set_ylim(0, 110)
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def fact_accuracy_chart(report: EvaluationReport) -> bytes | None:
    metrics = report.metrics
    if all(m.fact_accuracy is None for m in metrics.values()):
        return None
    return _bars(["held-out questions"], {k: [m.fact_accuracy] for k, m in metrics.items()},
                 "Fact accuracy", "% answered with the exact fact", percent=True)


def fact_accuracy_by_fact_chart(report: EvaluationReport) -> bytes | None:
    metrics = report.metrics
    facts = list(report.fine_tuned.held_out.by_fact)
    if not facts:
        return None
    return _bars(facts, {k: [m.held_out.by_fact.get(f) for f in facts] for k, m in metrics.items()},
                 "Fact accuracy by kind of fact", "% exact", percent=True)


def forgetting_chart(report: EvaluationReport) -> bytes:
    f = report.forgetting
    kl = "n/a" if f.kl is None else f"{f.kl:.3f} nats"
    return _bars(["general-text perplexity"], {"base": [f.general_perplexity_base],
                                               "fine_tuned": [f.general_perplexity_fine_tuned]},
                 f"Forgetting: {f.general_perplexity_increase:+.0%} perplexity, KL {kl}", "perplexity",
                 percent=False)


CHARTS = {"loss.png": "Training and eval loss",
          "fact_accuracy.png": "Fact accuracy of each model, with and without retrieval",
          "fact_accuracy_by_fact.png": "Fact accuracy by kind of fact", "forgetting.png": "Forgetting on general text"}


def write_charts(folder: Path, report: EvaluationReport, run_dir: Path | None) -> list[str]:
    """Write the charts that have data into ``folder/plots/``; their paths relative to ``folder``."""
    drawn = {"loss.png": loss_chart(run_dir), "fact_accuracy.png": fact_accuracy_chart(report),
             "fact_accuracy_by_fact.png": fact_accuracy_by_fact_chart(report),
             "forgetting.png": forgetting_chart(report)}
    (folder / "plots").mkdir(exist_ok=True)
    written = []
    for name, png in drawn.items():
        if png is not None:
            (folder / "plots" / name).write_bytes(png)
            written.append(f"plots/{name}")
    return written


def markdown_section(plots: list[str]) -> list[str]:
    return ["## Pictures", "", *(f"![{CHARTS[Path(p).name]}]({p})\n" for p in plots)] if plots else []
