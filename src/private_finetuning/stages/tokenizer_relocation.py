"""tokenizer-relocation-server: publishes the base tokenizer, with its chat template, into its volume."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from private_finetuning.artifacts.store import BASE_TOKENIZER
from private_finetuning.models.sources import resolve
from private_finetuning.stages.common import StageContext, fingerprint, relocate, run_stage, scratch_dir
from private_finetuning.stages.relocation import display_name, write_tokenizer

STAGE, ARTIFACT, KIND = BASE_TOKENIZER.producer, BASE_TOKENIZER.artifact, BASE_TOKENIZER.kind


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, type=Path, help="the base-tokenizer volume")


def _run(ctx: StageContext) -> None:
    cfg = ctx.config.tokenizer
    with scratch_dir() as scratch:
        source = resolve(ctx.config.tokenizer_source, Path(scratch), base_dir=ctx.config.base_dir,
                         need_weights=False)

        def write(folder: Path) -> tuple[str, dict, dict]:
            _, metadata = write_tokenizer(ctx.log, source, cfg.chat_template, "tokenizer.chat_template", folder)
            return display_name(source), source.description, metadata

        relocate(ctx, volume=ctx.args.output, artifact=ARTIFACT, kind=KIND,
                 fp=fingerprint(KIND, source.fingerprint, cfg.chat_template, "gguf-tokenizer-keys"), write=write)


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, __doc__ or STAGE, _run, _arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
