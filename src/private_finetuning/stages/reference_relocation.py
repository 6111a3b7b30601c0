"""model-reference-relocation-server: publishes the reference model and its tokenizer into one artifact.

The reference model is the yardstick the evaluation compares the fine-tuned model against; the
embedded default is Gemma 3 270M, a base model whose GGUF carries no chat template, so the
configured fallback template is applied and recorded in the manifest.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from private_finetuning.artifacts.store import REFERENCE_MODEL
from private_finetuning.models.sources import resolve
from private_finetuning.stages.common import StageContext, fingerprint, relocate, run_stage, scratch_dir
from private_finetuning.stages.relocation import display_name, write_model, write_tokenizer

STAGE, ARTIFACT, KIND = REFERENCE_MODEL.producer, REFERENCE_MODEL.artifact, REFERENCE_MODEL.kind


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, type=Path, help="the reference-model volume")


def _run(ctx: StageContext) -> None:
    cfg = ctx.config.reference_model
    with scratch_dir() as scratch:
        source = resolve(cfg.source, Path(scratch), base_dir=ctx.config.base_dir, need_weights=True)

        def write(folder: Path) -> tuple[str, dict, dict]:
            _, tok_meta = write_tokenizer(ctx.log, source, cfg.chat_template, "reference_model.chat_template",
                                          folder)
            metadata = write_model(ctx.log, source, cfg.dtype, folder)
            # Stop generation at the end of a turn, not only at eos, so answers do not run on.
            gen_path = folder / "generation_config.json"
            gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
            gen["eos_token_id"] = tok_meta["end_of_turn_ids"]
            gen_path.write_text(json.dumps(gen, indent=2) + "\n")
            return display_name(source), source.description, {**metadata, "tokenizer": tok_meta}

        relocate(ctx, volume=ctx.args.output, artifact=ARTIFACT, kind=KIND,
                 fp=fingerprint(KIND, source.fingerprint, cfg.dtype, cfg.chat_template), write=write)


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, __doc__ or STAGE, _run, _arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
