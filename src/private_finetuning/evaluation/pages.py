"""The evaluation report as people read it: ``report.md`` (also TensorBoard's text) and ``report.html``.

Rows of metrics come from the metric table (evaluation/metrics.py); data text (questions, answers,
names) is escaped so nothing in the private data can become a link, an image or a broken table.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from private_finetuning.evaluation.report import MODELS, EvaluationReport, metric_rows


def percent(value: float | None) -> str:
    """A share as the report, the log and the model card show it: 35.4%, or n/a when not measured."""
    return "n/a" if value is None else f"{value:.1%}"


def number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt(value: float | None, pct: bool = False) -> str:
    return percent(value) if pct else number(value)


def render_markdown(report: EvaluationReport) -> str:
    models = [k for k in MODELS if k in report.metrics]
    names = {k: escape_markdown(report.models[k]["name"]) for k in models}
    lines = [f"# Evaluation of {escape_markdown(report.models['fine_tuned']['name'])}", "",
             f"{report.questions} held-out questions (phrasings never seen in training), greedy decoding, "
             f"at most {report.config['max_new_tokens']} new tokens; evaluated in {report.duration_s:.0f}s.", "",
             "| metric | " + " | ".join(f"{k.replace('_', '-')} ({names[k]})" for k in models) + " |",
             "|---|" + "---|" * len(models)]
    lines += [f"| {label} | " + " | ".join(_fmt(v, pct) for v in values) + " |"
              for label, values, pct in metric_rows(report)]
    lines += [""] + [f"Fact accuracy, {name.replace('_', '-')} questions: {s.describe()}."
                     for name, s in report.scoring.items()]
    if (served := report.models.get("served")) is not None:
        lines += ["", f"served: the fine-tuned model as the CPU inference server runs it (OpenVINO IR, "
                      f"{served['weights']} weights, {served['precision']} inference, continuously batched); "
                      f"{served['answers_equal_to_fine_tuned']} held-out answers identical to the fine-tuned model's. "
                      "The fact gates judge the served model; it has answers, not perplexities."]
    lines += _retrieval(report)
    if report.privacy is not None:
        lines += ["", f"Privacy: {report.privacy.describe()} (docs/privacy.md)."]
    f = report.forgetting
    lines += ["", "## Forgetting", "",
              f"Mean KL(base || fine-tuned) of next-token distributions on general text: {_fmt(f.kl)} nats; "
              f"general-text perplexity {_fmt(f.general_perplexity_base)} -> "
              f"{_fmt(f.general_perplexity_fine_tuned)} ({f.general_perplexity_increase:+.1%}).", ""]
    return "\n".join(lines + _by_fact(report, models) + _gates(report) + _samples(report, models))


def _retrieval(report: EvaluationReport) -> list[str]:
    r = report.retrieval
    if r is None:
        return []
    rates = ", ".join(f"{name.replace('_', '-')} {percent(rate)}" for name, rate in r.hit_rate.items())
    cut = sum(r.cut.values())
    return ["", f"Retrieval: BM25 over the {r.records} records of the train split (never the eval split), the top "
                f"{r.k} put before each question, each cut to {r.max_record_tokens} tokens ({cut} cut). Hit rate "
                f"(a retrieved record states the question's fact): {rates}."
                + (" The served model was judged with retrieval, as it serves." if r.served else "")]


def _by_fact(report: EvaluationReport, models: list[str]) -> list[str]:
    by_fact = report.fine_tuned.held_out.by_fact
    if not by_fact:
        return []
    lines = ["## Fact accuracy by fact", "", "| fact | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for fact in by_fact:
        lines.append(f"| {escape_markdown(fact)} | " + " | ".join(
            _fmt(report.metrics[k].held_out.by_fact.get(fact), True) for k in models) + " |")
    return [*lines, ""]


def _gates(report: EvaluationReport) -> list[str]:
    if not report.gates:
        return []
    lines = ["## Gates", ""]
    for g in report.gates:
        lines.append(f"- {'PASS' if g.passed else 'FAIL'} {g.gate}: value {_fmt(g.value)}, "
                     f"threshold {g.threshold}{' (' + g.reason + ')' if g.reason else ''}")
    return [*lines, ""]


def _samples(report: EvaluationReport, models: list[str]) -> list[str]:
    lines = ["## Side by side", ""]
    for sample in report.side_by_side:
        lines += [f"**Q:** {escape_markdown(sample.question)}", "", f"- expected: {escape_markdown(sample.expected)}"]
        lines += [f"- {k.replace('_', '-')}: {escape_markdown(sample.answers[k])}" for k in models]
        lines.append("")
    if report.wrong_answers:
        lines += ["## Wrong answers of the fine-tuned model", "", "| set | question | answer | reply |",
                  "|---|---|---|---|"]
        lines += [f"| {w.set} | {escape_markdown(w.question)} | {escape_markdown(w.answer)} | "
                  f"{escape_markdown(w.reply)} |" for w in report.wrong_answers]
        lines.append("")
    return lines


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
