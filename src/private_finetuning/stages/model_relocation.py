"""model-relocation-server: publishes the base model into the base-model volume as safetensors."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from private_finetuning.artifacts.store import BASE_MODEL
from private_finetuning.models.sources import resolve
from private_finetuning.stages.common import StageContext, fingerprint, relocate, run_stage, scratch_dir
from private_finetuning.stages.relocation import display_name, write_model

STAGE, ARTIFACT, KIND = BASE_MODEL.producer, BASE_MODEL.artifact, BASE_MODEL.kind


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, type=Path, help="the base-model volume")


def _run(ctx: StageContext) -> None:
    cfg = ctx.config.model
    with scratch_dir() as scratch:
        source = resolve(cfg.source, Path(scratch), base_dir=ctx.config.base_dir, need_weights=True)

        def write(folder: Path) -> tuple[str, dict, dict]:
            return display_name(source), source.description, write_model(ctx.log, source, cfg.dtype, folder)

        relocate(ctx, volume=ctx.args.output, artifact=ARTIFACT, kind=KIND,
                 fp=fingerprint(KIND, source.fingerprint, cfg.dtype), write=write)


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, __doc__ or STAGE, _run, _arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
