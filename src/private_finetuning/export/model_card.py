"""The model card (``README.md``) of an export: what the model is, never what the data says.

Built with ``huggingface_hub``'s ``ModelCardData`` (the YAML header tools read) offline. It names
the base model and the dataset by name and digest only: no row, question or answer of the private
data is written here (the evaluation report on the volume has the side-by-side answers).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from private_finetuning.evaluation.metrics import METRICS
from private_finetuning.evaluation.pages import number, percent

if TYPE_CHECKING:
    from private_finetuning.evaluation.report import EvaluationReport


def _evaluation_table(report: EvaluationReport | None) -> list[str]:
    if report is None:
        return ["No evaluation report is recorded for this adapter."]
    columns = [m for m in METRICS if m.card]
    rows = ["| model | " + " | ".join(m.label for m in columns) + " |", "|---|" + "---|" * len(columns)]
    for kind, scores in report.metrics.items():
        cells = [percent(scores.value(m.name)) if m.percent else number(scores.value(m.name), 2) for m in columns]
        rows.append(f"| {kind.replace('_', '-')} | " + " | ".join(cells) + " |")
    served = report.models.get("served")
    if served:
        rows += ["", f"served: the model the CPU inference server runs (OpenVINO IR, {served['weights']} weights, "
                     f"{served['precision']} inference); {served['answers_equal_to_fine_tuned']} of its held-out "
                     "answers are identical to the fine-tuned model's in transformers fp32. The fact gates judged "
                     "the served model's answers."]
    if (scoring := report.scoring.get("held_out")) is not None:
        rows += ["", f"Fact accuracy of the {report.questions} held-out questions: {scoring.describe()}."]
    if report.privacy is not None:
        rows += ["", f"Privacy audit: {report.privacy.describe()}."]
    f = report.forgetting
    rows += ["", f"Forgetting on general text: KL {number(f.kl)} nats, perplexity "
                 f"{percent(f.general_perplexity_increase)} higher than the base model's.", ""]
    verdicts = [f"{g.gate} {'passed' if g.passed else 'FAILED'} ({number(g.value)} vs {g.threshold})"
                for g in report.gates]
    rows.append("Gates: " + ("; ".join(verdicts) if verdicts else "none configured."))
    return rows


def _export_checks(roundtrip: dict[str, Any]) -> list[str]:
    if roundtrip.get("gguf_skipped"):
        return [f"- No GGUF was written: {roundtrip['gguf_skipped']}."]
    n, lines = roundtrip.get("questions"), []
    if "f16_equal" in roundtrip:
        lines.append(f"- GGUF F16 loaded with `transformers` (`gguf_file=`): {roundtrip['f16_equal']}/{n} greedy "
                     "answers to held-out questions equal to the merged model's.")
    if roundtrip.get("quantized_type"):
        lines.append(f"- GGUF {roundtrip['quantized_type'].upper()}: {roundtrip['quantized_equal']}/{n} answers equal "
                     f"to the merged model's; fact accuracy {percent(roundtrip.get('quantized_fact_accuracy'))} "
                     f"against {percent(roundtrip.get('merged_fact_accuracy'))}.")
    return lines


def card_data(*, name: str, base: dict[str, Any], dataset: dict[str, Any], report: EvaluationReport | None) -> Any:
    from huggingface_hub import EvalResult, ModelCardData

    accuracy = report.fine_tuned.fact_accuracy if report is not None else None
    results = [EvalResult(task_type="text-generation", dataset_type="private", dataset_name=dataset["name"],
                          dataset_split="held-out", metric_type="accuracy", metric_name="fact accuracy",
                          metric_value=round(accuracy, 4))] if accuracy is not None else None
    return ModelCardData(model_name=name, base_model=base["name"], library_name="transformers",
                         pipeline_tag="text-generation", eval_results=results,
                         tags=["private-fine-tuning", "lora", "merged", "gguf"])


def _provenance(name: str, base: dict[str, Any], dataset: dict[str, Any], adapter: dict[str, Any],
                promotion: dict[str, Any]) -> list[str]:
    return [
        f"# {name}",
        "",
        f"A LoRA fine-tune of **{base['name']}** on the private dataset **{dataset['name']}**, merged into the "
        "base weights. Trained, evaluated and exported by Private Fine-Tuning inside the owner's Kubernetes "
        "cluster: the dataset, the base model and the adapter never left it, and this card holds no record of "
        "the data (names and digests only).",
        "",
        "## Provenance",
        "",
        "| what | name | sha256 digest (artifact manifest) |",
        "|---|---|---|",
        f"| base model | {base['name']} | `{base['digest']}` |",
        f"| dataset | {dataset['name']} | `{dataset['digest']}` |",
        f"| LoRA adapter | {adapter['name']} | `{adapter['digest']}` |",
        "",
        f"Promoted by {promotion.get('promoted_by')} at {promotion.get('promoted_at')}: {promotion.get('reason')}.",
        "",
    ]


def _how_it_stopped_and_grew(adapter: dict[str, Any]) -> list[str]:
    """The stopping rule's and self-augmentation's counts (adapter metadata), when they ran."""
    lines = []
    stop = adapter.get("stopping") or {}
    if stop.get("rule") == "held_back" and stop.get("held_back"):
        lines.append(f"Stopped by {stop.get('stopped_by')}; the weights are those of step {stop.get('best_step')}, "
                     f"where {stop.get('held_back')} held-back questions (one per fact, never trained) scored best.")
    generation = adapter.get("generation") or {}
    for kind, counts in (generation.get("counts") or {}).items():
        lines.append(f"The base model wrote {counts.get('generated', 0)} {kind}s of the facts; "
                     f"{counts.get('kept', 0)} passed the checks and were trained on.")
    return ["", *lines] if lines else []


def _training(run: dict[str, Any], adapter: dict[str, Any], system_prompt: str) -> list[str]:
    lora = run.get("lora", {})
    return [
        "## Training",
        "",
        f"LoRA r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, on "
        f"{', '.join(lora.get('target_modules', []))}; learning rate {run.get('learning_rate')} "
        f"({run.get('lr_scheduler')}), {adapter.get('steps')} steps, batch {run.get('batch_size')}, max sequence "
        f"{run.get('max_seq_len')} tokens, on {adapter.get('device')}.",
        *_how_it_stopped_and_grew(adapter),
        "",
        "The system prompt it was trained with (use it, the answers depend on it):",
        "",
        "```text",
        system_prompt,
        "```",
        "",
    ]


def render(*, name: str, base: dict[str, Any], dataset: dict[str, Any], adapter: dict[str, Any],
           training: dict[str, Any], report: EvaluationReport | None, promotion: dict[str, Any],
           files: dict[str, str], roundtrip: dict[str, Any]) -> str:
    """The card's Markdown, YAML header included."""
    from huggingface_hub import ModelCard

    data = card_data(name=name, base=base, dataset=dataset, report=report)
    run = training.get("training", {})
    body = [
        *_provenance(name, base, dataset, adapter, promotion),
        *_training(run, adapter, training.get("system_prompt", "")),
        "## Evaluation (held-out questions, greedy decoding)",
        "",
        *_evaluation_table(report),
        "",
        "## Files",
        "",
        *[f"- `{path}`: {what}" for path, what in files.items()],
        "",
        "## Export checks",
        "",
        *_export_checks(roundtrip),
        "",
        "## Limitations",
        "",
        "- A small model taught a company's facts: it can still state a wrong fact with confidence, above all for "
        "questions unlike the training data. Check answers that matter against the source.",
        "- It knows the data as of the dataset digest above; facts changed since are not in it.",
        "- Evaluation covers the held-out questions of the same dataset, not a general benchmark; the forgetting "
        "numbers above are the measure of what it lost in general ability.",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(run, indent=2, sort_keys=True),
        "```",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"))
