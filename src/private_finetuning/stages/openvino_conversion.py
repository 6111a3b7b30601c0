"""openvino-model-conversion-server: the base model as an OpenVINO IR, for the CPU inference engine.

The recipe: wait for the base model and base tokenizer; convert them once with optimum-intel (in its
own tool environment, ``openvino_ir.py``); check that the IR decodes greedily as the base model does;
publish it on the base-model-openvino volume with the base model's digest, so the inference server
never fuses an adapter into an IR of another base. The same base converts once: a rerun finds it
published. With ``serving.engine: transformers`` there is nothing to convert and the stage says so.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from private_finetuning.artifacts.store import BASE_MODEL, BASE_MODEL_OPENVINO, BASE_TOKENIZER, ArtifactWriter
from private_finetuning.models import openvino_ir
from private_finetuning.models.loading import load_published_model
from private_finetuning.stages.common import (
    StageContext,
    already_published,
    fingerprint,
    run_stage,
    scratch_dir,
    wait_for_output,
)

STAGE, ARTIFACT, KIND = BASE_MODEL_OPENVINO.producer, BASE_MODEL_OPENVINO.artifact, BASE_MODEL_OPENVINO.kind


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", required=True, type=Path, help="the base-model volume")
    parser.add_argument("--base-tokenizer", required=True, type=Path, help="the base-tokenizer volume")
    parser.add_argument("--output", required=True, type=Path, help="the base-model-openvino volume")


def _run(ctx: StageContext) -> None:
    import openvino
    from transformers import AutoTokenizer

    if ctx.config.serving.engine == "transformers":
        ctx.log.info("serving.engine is transformers: the inference server does not use an OpenVINO IR; "
                     "nothing to convert")
        return
    base = wait_for_output(ctx.config, ctx.args.base_model, BASE_MODEL)
    tokenizer_artifact = wait_for_output(ctx.config, ctx.args.base_tokenizer, BASE_TOKENIZER)
    fp = fingerprint(KIND, base.manifest.digest, tokenizer_artifact.manifest.digest, openvino.__version__, "fp32")
    if already_published(ctx, ctx.args.output, ARTIFACT, KIND, fp):
        return
    with ArtifactWriter(ctx.args.output, ARTIFACT, kind=KIND, stage=STAGE,
                        keep_versions=ctx.config.artifacts.keep_versions) as writer, scratch_dir() as scratch:
        assert writer.path is not None
        openvino_ir.convert(base.path, tokenizer_artifact.path, writer.path, Path(scratch))
        ctx.log.info("checking the IR against the base model (greedy, %d tokens of a fixed public prompt)",
                     openvino_ir.CHECK_TOKENS)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_artifact.path, local_files_only=True)
        check = openvino_ir.check_against(writer.path, load_published_model(base.path).eval(), tokenizer,
                                          ctx.config.serving.openvino)
        ctx.log.info("the IR decodes as the base model does at f32 (%d greedy tokens equal)", check["check_tokens"])
        writer.commit(name=base.manifest.name,
                      source={"base_model": base.manifest.name, "fingerprint": fp},
                      metadata={"base_model_digest": base.manifest.digest,
                                "base_tokenizer_digest": tokenizer_artifact.manifest.digest,
                                "openvino": openvino.__version__, "weight_format": "fp32", **check})


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, __doc__ or STAGE, _run, _arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
