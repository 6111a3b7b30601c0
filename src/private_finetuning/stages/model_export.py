"""model-export-server: the promoted adapter as files any tool runs, on the exports volume.

The recipe: wait until the adapter that training published is promoted by the evaluation (or fail
with the gate's verdict); merge it into the base weights and write the merged model (safetensors,
tokenizer, chat template); write GGUF files (f16, Q8_0) and an Ollama Modelfile beside them; check
the round trip (transformers loads each GGUF with ``gguf_file=`` and answers the held-out questions
as the merged model does); write the model card; publish it all as one artifact. Nothing is
published if any step fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from private_finetuning.artifacts import promotion
from private_finetuning.artifacts.store import (
    EVALUATION,
    EXPORT,
    MANIFEST,
    Artifact,
    ArtifactWriter,
    current_version,
    open_artifact,
)
from private_finetuning.data.expected import fact_accuracy
from private_finetuning.data.heldout import pick_questions
from private_finetuning.data.record import Record
from private_finetuning.errors import ArtifactError, ArtifactTimeout, GateFailed, PipelineError
from private_finetuning.evaluation.report import EvaluationReport
from private_finetuning.export import gguf_file, model_card, ollama
from private_finetuning.models.generation import answer_questions
from private_finetuning.stages.common import (
    TRAINING_INPUTS,
    StageContext,
    already_published,
    fingerprint,
    run_stage,
    training_input_volumes,
    wait_for_adapter,
    wait_for_output,
)
from private_finetuning.telemetry.progress import format_duration

STAGE, ARTIFACT, KIND = EXPORT.producer, EXPORT.artifact, EXPORT.kind
MERGED = "merged"
OPENVINO = "openvino"


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", required=True, type=Path, help="the datasets volume")
    parser.add_argument("--base-model", required=True, type=Path, help="the base-model volume")
    parser.add_argument("--base-tokenizer", required=True, type=Path, help="the base-tokenizer volume")
    parser.add_argument("--fine-tuned", required=True, type=Path, help="the fine-tuned-model volume")
    parser.add_argument("--output", required=True, type=Path, help="the exports volume")


def wait_for_promotion(ctx: StageContext) -> tuple[dict[str, Artifact], promotion.Promotion]:
    """The adapter trained on the published inputs under the current settings (with those inputs), once the
    evaluation has promoted it; GateFailed if its gates refused it.

    The adapter waited for is never one a previous run left published. It is verified once; the polling
    after that reads manifests only, so waiting out an evaluation does not hash an 18 MiB adapter every few
    seconds beside it. The promoted version is verified on return (``promotion.adapter_of``)."""
    a, wait = ctx.args, ctx.config.artifacts
    volume = a.fine_tuned
    volumes = training_input_volumes(a)
    # Each missing input times out naming itself; what is verified here is not hashed again below.
    verified = {key: wait_for_output(ctx.config, volumes[key], output) for key, output in TRAINING_INPUTS}
    found, trained_on = wait_for_adapter(ctx.config, volume, volumes, verified)
    adapter = found.manifest
    inputs = {"dataset": trained_on["dataset"], "base": trained_on["base_model"],
              "tokenizer": trained_on["base_tokenizer"]}
    start = next_report = time.monotonic()
    while True:
        promoted = promotion.current(volume)
        if promoted is not None and promoted.adapter_digest == adapter.digest:
            return {**inputs, "adapter": promotion.adapter_of(volume, promoted)}, promoted
        report = current_version(volume, EVALUATION.artifact)
        if (report is not None and report.source.get("adapter", {}).get("digest") == adapter.digest
                and report.metadata.get("gates_passed") is False):
            raise GateFailed(f"adapter {adapter.digest[:12]} failed its evaluation gates "
                             f"({volume / EVALUATION.artifact / 'current' / 'report.md'}); it is not exported")
        waited = time.monotonic() - start
        if waited >= wait.wait_timeout_s:
            raise ArtifactTimeout(f"timed out after {waited:.0f}s waiting for {EVALUATION.producer} to promote "
                                  f"adapter {adapter.digest[:12]}; check that stage's logs")
        if time.monotonic() >= next_report:
            ctx.log.info("waiting for the evaluation of adapter %s (%.0fs so far)", adapter.digest[:12], waited)
            next_report += 30
        time.sleep(wait.poll_interval_s)


def write_merged(ctx: StageContext, base: Artifact, tokenizer_dir: Path, adapter: Artifact,
                 folder: Path) -> tuple[dict[str, Any], Any]:
    """The adapter merged into the base weights, saved in the export dtype with the tokenizer; returns the
    merged state dict (in the export dtype) for the GGUF writer."""
    import torch
    from transformers import AutoTokenizer

    from private_finetuning.models.loading import load_published_model

    model = load_published_model(base.path, adapter.path)
    model = model.to(getattr(torch, ctx.config.export.dtype))
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    tokenizer.save_pretrained(folder)
    ctx.log.info("merged model written to %s (%s, %.0fM parameters)", folder.name, ctx.config.export.dtype,
                 model.num_parameters() / 1e6)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    del model
    gc.collect()
    return state, tokenizer


def answers_of(ctx: StageContext, folder: Path, gguf_name: str | None, questions: list[Record],
               eos: list[int]) -> list[str]:
    """Greedy answers of the merged model in ``folder`` (or of a GGUF file there), computed in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = {"gguf_file": gguf_name} if gguf_name else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **source)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True,
                                                 **(source or {"use_safetensors": True})).eval()
    answers, _ = answer_questions(model, tokenizer, questions, system_prompt=ctx.config.prompting.system_prompt,
                                  eos_token_ids=eos, batch_size=ctx.config.evaluation.batch_size,
                                  max_new_tokens=ctx.config.evaluation.max_new_tokens)
    del model
    gc.collect()
    return answers


def check_round_trip(ctx: StageContext, folder: Path, ggufs: dict[str, str], questions: list[Record],
                     eos: list[int]) -> dict[str, Any]:
    """Every GGUF against the merged model on the same questions; a differing f16 fails the export."""
    cfg = ctx.config.export
    merged = answers_of(ctx, folder / MERGED, None, questions, eos)
    result: dict[str, Any] = {"questions": len(questions), "merged_fact_accuracy": fact_accuracy(questions, merged)}
    for kind, name in ggufs.items():
        answers = answers_of(ctx, folder, name, questions, eos)
        equal = sum(a == b for a, b in zip(merged, answers, strict=True))
        result[f"{kind}_equal"] = equal
        result[f"{kind}_fact_accuracy"] = fact_accuracy(questions, answers)
        ctx.log.info("%s: %d/%d greedy answers equal to the merged model's", name, equal, len(questions))
        if kind == "f16" and len(questions) - equal > cfg.max_f16_differences:
            raise PipelineError(f"the f16 GGUF answers {len(questions) - equal} of {len(questions)} held-out questions "
                                f"differently from the merged model (export.max_f16_differences is "
                                f"{cfg.max_f16_differences}); the conversion is wrong, nothing is exported")
    quantized = next((k for k in ggufs if k != "f16"), None)
    if quantized:
        result.update(quantized_type=quantized, quantized_equal=result[f"{quantized}_equal"],
                      quantized_fact_accuracy=result[f"{quantized}_fact_accuracy"])
    return result


def served_model_now(volume: Path, promoted: promotion.Promotion) -> Artifact:
    """The promoted served model, verified. If it is gone because later promotions moved on (and pruned it) while
    this export ran, that is a retryable failure: the Job's next pod exports what is promoted then. If it is gone
    while still promoted, the volume is broken: ArtifactError, exit 2."""
    try:
        return promotion.served_model(volume, promoted)
    except ArtifactError:
        now = promotion.current(volume)
        if now is not None and now.served != promoted.served:
            raise PipelineError(f"the promotion moved on to adapter {now.adapter_digest[:12]} while this export ran, "
                                f"and the served model {promoted.served_model_version} was pruned; the next pod "
                                "exports what is promoted now") from None
        raise


def copy_served_model(ctx: StageContext, promoted: promotion.Promotion, folder: Path) -> str:
    """The served model the evaluation judged, as an export (OpenVINO Model Server reads such a folder); what it is.
    Copied first, before the minutes of merging and GGUF, so that a later promotion has little time to prune it."""
    served = served_model_now(ctx.args.fine_tuned, promoted)
    folder.mkdir()
    for path in served.path.iterdir():
        # Files only: a retrieval index (retrieval/, the train split's text) stays on the volume, never exported.
        if path.is_file() and path.name != MANIFEST:
            shutil.copy2(path, folder / path.name)
    ctx.log.info("copied the served model %s (%s weights)", served.manifest.digest[:12], promoted.served_weights)
    return (f"the served model as judged: OpenVINO IR with {promoted.served_weights} weights (judged at "
            f"{promoted.served_precision}), for OpenVINO Model Server and OpenVINO GenAI")


def write_export(ctx: StageContext, inputs: dict[str, Artifact], promoted: promotion.Promotion, folder: Path) -> dict:
    """Fill ``folder`` (the staging folder) with every export and return the metadata of the artifact."""
    cfg, name = ctx.config.export, ctx.config.serving.model_name
    adapter, tok = inputs["adapter"], inputs["tokenizer"]
    files: dict[str, str] = {}
    if promoted.served_model_version:
        files[f"{OPENVINO}/"] = copy_served_model(ctx, promoted, folder / OPENVINO)
    state, tokenizer = write_merged(ctx, inputs["base"], tok.path, adapter, folder / MERGED)
    config = json.loads((folder / MERGED / "config.json").read_text())
    files[f"{MERGED}/"] = (f"the merged model ({cfg.dtype} safetensors) with its tokenizer and chat template, for "
                           "transformers and vLLM")
    ggufs: dict[str, str] = {}
    skipped = gguf_file.unsupported(config, tok.path) if cfg.gguf else "export.gguf is empty"
    if skipped:
        ctx.log.warning("no GGUF and no Modelfile: %s", skipped)
    else:
        for kind in cfg.gguf:
            ggufs[kind] = f"{name}-{kind}.gguf"
            start = time.monotonic()
            gguf_file.write_gguf(folder / ggufs[kind], state, config, tok.path, tokenizer, name=name, kind=kind)
            ctx.log.info("wrote %s in %s", ggufs[kind], format_duration(time.monotonic() - start))
            files[ggufs[kind]] = f"GGUF {kind.upper()} for llama.cpp and Ollama"
        fmt = ollama.turn_format(tokenizer)
        (folder / "Modelfile").write_text(ollama.modelfile(ggufs[cfg.ollama_gguf], fmt, tokenizer,
                                                           ctx.config.prompting.system_prompt,
                                                           num_predict=ctx.config.serving.max_new_tokens))
        files["Modelfile"] = f"Ollama: `ollama create {name} -f Modelfile`"
    del state
    gc.collect()
    questions = pick_questions(inputs["dataset"].file("eval.jsonl"), cfg.check_questions)
    eos = tok.manifest.metadata.get("end_of_turn_ids") or [tokenizer.eos_token_id]
    roundtrip = check_round_trip(ctx, folder, ggufs, questions, eos) | ({"gguf_skipped": skipped} if skipped else {})
    files["README.md"] = "this model card"
    report = promotion.report_for(ctx.args.fine_tuned, adapter.manifest)
    evaluation = open_artifact(ctx.args.fine_tuned, EVALUATION.artifact, EVALUATION.kind) if report else None
    card = model_card.render(
        name=name, base={"name": inputs["base"].manifest.name, "digest": inputs["base"].manifest.digest},
        dataset={"name": inputs["dataset"].manifest.name, "digest": inputs["dataset"].manifest.digest},
        adapter={"name": adapter.manifest.name, "digest": adapter.manifest.digest, **adapter.manifest.metadata},
        training=json.loads(adapter.file("training_config.json").read_text()),
        report=EvaluationReport.loads(evaluation.file("report.json").read_text()) if evaluation else None,
        promotion=asdict(promoted), files=files, roundtrip=roundtrip)
    (folder / "README.md").write_text(card, encoding="utf-8")
    return {"files": files, "round_trip": roundtrip, "gguf": sorted(ggufs.values()), "dtype": cfg.dtype,
            "gguf_skipped": skipped}


def _run(ctx: StageContext) -> None:
    if not ctx.config.export.enabled:
        ctx.log.info("export.enabled is false: nothing to export")
        return
    a = ctx.args
    inputs, promoted = wait_for_promotion(ctx)
    adapter = inputs["adapter"]
    fp = fingerprint(KIND, {k: v.manifest.digest for k, v in inputs.items()}, ctx.config.export.model_dump(),
                     ctx.config.prompting.system_prompt, ctx.config.serving.model_name,
                     ctx.config.serving.max_new_tokens, promoted.report_digest, promoted.served_model_digest)
    if already_published(ctx, a.output, ARTIFACT, KIND, fp) is not None:
        return
    start = time.monotonic()
    with ArtifactWriter(a.output, ARTIFACT, kind=KIND, stage=STAGE,
                        keep_versions=ctx.config.artifacts.keep_versions) as writer:
        assert writer.path is not None
        metadata = write_export(ctx, inputs, promoted, writer.path)
        published = writer.commit(name=f"{ctx.config.serving.model_name}-export",
                                  source={k: {"kind": v.manifest.kind, "digest": v.manifest.digest}
                                          for k, v in inputs.items()} | {"fingerprint": fp}, metadata=metadata)
    ctx.log.info("exports of adapter %s at %s (%s): %s", adapter.manifest.digest[:12], published.path,
                 format_duration(time.monotonic() - start), ", ".join(metadata["files"]))


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, __doc__ or STAGE, _run, _arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
