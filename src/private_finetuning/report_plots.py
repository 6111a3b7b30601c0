"""Pictures for the evaluation report, drawn headless with matplotlib, and an HTML page that needs no server.

The PNGs go into the evaluation artifact (``plots/``, listed in its manifest like every file);
``report.md`` links them and ``report.html`` carries them inline, so the report opens from the
volume in any browser. They show numbers only, never dataset text.
"""

from __future__ import annotations

import base64
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

MODEL_COLOURS = {"base": "#9aa5b1", "fine_tuned": "#1f77b4", "reference": "#ff7f0e"}


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


def loss_curves(run_dir: Path | None) -> bytes | None:
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


def fact_accuracy(report: dict[str, Any]) -> bytes | None:
    metrics = report["metrics"]
    if all(m["fact_accuracy"] is None for m in metrics.values()):
        return None
    return _bars(["held-out questions"], {k: [m["fact_accuracy"]] for k, m in metrics.items()},
                 "Fact accuracy", "% answered with the exact fact", percent=True)


def fact_accuracy_by_fact(report: dict[str, Any]) -> bytes | None:
    metrics = report["metrics"]
    facts = list(metrics["fine_tuned"]["fact_accuracy_by_fact"])
    if not facts:
        return None
    return _bars(facts, {k: [m["fact_accuracy_by_fact"].get(f) for f in facts] for k, m in metrics.items()},
                 "Fact accuracy by kind of fact", "% exact", percent=True)


def forgetting(report: dict[str, Any]) -> bytes:
    f = report["forgetting"]
    kl = "n/a" if f["kl"] is None else f"{f['kl']:.3f} nats"
    return _bars(["general-text perplexity"], {"base": [f["general_perplexity_base"]],
                                               "fine_tuned": [f["general_perplexity_fine_tuned"]]},
                 f"Forgetting: {f['general_perplexity_increase']:+.0%} perplexity, KL {kl}", "perplexity",
                 percent=False)


PLOTS = {"loss.png": "Training and eval loss", "fact_accuracy.png": "Fact accuracy, base vs fine-tuned vs reference",
         "fact_accuracy_by_fact.png": "Fact accuracy by kind of fact", "forgetting.png": "Forgetting on general text"}


def write_plots(folder: Path, report: dict[str, Any], run_dir: Path | None) -> list[str]:
    """Write the pictures that have data into ``folder/plots/``; their paths relative to ``folder``."""
    drawn = {"loss.png": loss_curves(run_dir), "fact_accuracy.png": fact_accuracy(report),
             "fact_accuracy_by_fact.png": fact_accuracy_by_fact(report), "forgetting.png": forgetting(report)}
    (folder / "plots").mkdir(exist_ok=True)
    written = []
    for name, png in drawn.items():
        if png is not None:
            (folder / "plots" / name).write_bytes(png)
            written.append(f"plots/{name}")
    return written


def markdown_section(plots: list[str]) -> list[str]:
    return ["## Pictures", "", *(f"![{PLOTS[Path(p).name]}]({p})\n" for p in plots)] if plots else []


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]!|~<>])")  # what starts a link, image, emphasis, code, cell or tag


def escape_markdown(text: str) -> str:
    """Data text (questions, answers, names) as inert Markdown: no link, image, emphasis or table cell break
    can come out of it, and a newline does not end its table row."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def html_page(markdown_text: str, folder: Path, title: str, plots: list[str]) -> str:
    """``report.md`` as one self-contained HTML page: tables rendered, the stage's own ``plots`` inlined as data
    URIs. Nothing else becomes an image or a link: a page opened from the volume fetches and runs nothing."""
    import html

    import markdown

    # The report quotes questions and answers (escaped as Markdown already): as text, never as HTML.
    body = markdown.markdown(html.escape(markdown_text, quote=False), extensions=["tables"], output_format="html")
    own = set(plots)

    def inline(match: re.Match[str]) -> str:
        src, alt = (re.search(rf'\b{a}="([^"]*)"', match.group(0)) for a in ("src", "alt"))
        source = html.unescape(src.group(1)) if src else ""
        if source not in own or not (folder / source).is_file():
            return ""  # not one of the pictures this stage drew: dropped, never fetched
        data = base64.b64encode((folder / source).read_bytes()).decode()
        return f'<img alt="{alt.group(1) if alt else ""}" src="data:image/png;base64,{data}" />'

    body = re.sub(r"<img\b[^>]*>", inline, body)
    body = re.sub(r"<a\b[^>]*>(.*?)</a>", r"\1", body, flags=re.S)
    style = ("body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3rem .6rem}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n{body}\n</body></html>\n")
