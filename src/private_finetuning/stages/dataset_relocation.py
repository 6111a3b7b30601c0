"""dataset-relocation-server: publishes the training data as normalized chat JSONL (train + eval splits).

Records that say which split they belong to keep it (the embedded AcmeHotels data holds out
phrasings, not random rows); the others are split at random with the configured seed. The train
split then gets its question variants (``dataset.augmentation``, data/augment.py); the eval split
never does. Any bad row stops the stage with file, line and field, and nothing is published.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from private_finetuning.artifacts.store import DATASET, sha256_file
from private_finetuning.config import DatasetConfig
from private_finetuning.data import acmehotels, augment
from private_finetuning.data.formats import detect_format, read_records
from private_finetuning.data.record import Record
from private_finetuning.errors import InputDataError
from private_finetuning.stages.common import StageContext, fingerprint, relocate, run_stage

STAGE, ARTIFACT, KIND = DATASET.producer, DATASET.artifact, DATASET.kind
SPLIT_FILES = {"train": "train.jsonl", "eval": "eval.jsonl"}


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, type=Path, help="the datasets volume")


def split_records(records: list[Record], cfg: DatasetConfig, where: str) -> dict[str, list[Record]]:
    """Keep declared splits; split the rest with a seeded shuffle (Hugging Face datasets)."""
    splits: dict[str, list[Record]] = {"train": [], "eval": []}
    unsplit = []
    for record in records:
        (splits[record.split] if record.split else unsplit).append(record)
    if unsplit:
        if len(unsplit) < 2:
            raise InputDataError(where, "needs at least 2 records to hold out an eval split")
        from datasets import Dataset

        parts = Dataset.from_dict({"index": list(range(len(unsplit)))}).train_test_split(
            test_size=cfg.eval_fraction, seed=cfg.seed)
        splits["train"] += [unsplit[i] for i in parts["train"]["index"]]
        splits["eval"] += [unsplit[i] for i in parts["test"]["index"]]
    for name, rows in splits.items():
        if not rows:
            raise InputDataError(where, f"the {name} split is empty; add records or mark some with "
                                 f'"split": "{name}"')
    return splits


def _run(ctx: StageContext) -> None:
    cfg = ctx.config.dataset
    src = cfg.source
    if src.type == "embedded":
        path, fmt = acmehotels.embedded_path(src.size), "jsonl"
        source = {"type": "embedded", "name": src.name, "size": src.size}
        name = f"{src.name}-{src.size}"
    else:
        path = ctx.config.resolve_path(src.path or "")
        if not path.is_file():
            raise InputDataError(str(path), "dataset file not found (dataset.source.path)")
        fmt = detect_format(path, src.format)
        source = {"type": "file", "path": str(path), "format": fmt}
        name = path.stem
    source["sha256"] = sha256_file(path)

    def write(folder: Path) -> tuple[str, dict, dict]:
        records = read_records(path, fmt, src.encoding, cfg.max_chars, src.csv_template, cfg.max_file_bytes)
        ctx.log.info("read %d records from %s (%s)", len(records), path, fmt)
        splits = split_records(records, cfg, str(path))
        facts = len(splits["train"])
        splits["train"], made = augment.augment(splits["train"], cfg.augmentation.kinds)
        ctx.log.info("augmentation: %d train records, %d variants made (%s); the eval split is left as it is",
                     facts, sum(made.values()), ", ".join(f"{k} {made[k]}" for k in cfg.augmentation.kinds) or "off")
        for split, rows in splits.items():
            with (folder / SPLIT_FILES[split]).open("w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(row.dumps() + "\n")
        counts = {split: len(rows) for split, rows in splits.items()}
        ctx.log.info("splits: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
        return name, source, {"format": "chat-jsonl", "splits": counts, "files": SPLIT_FILES,
                              "augmentation": {"kinds": list(cfg.augmentation.kinds), "train_facts": facts,
                                               "variants": dict(made)}}

    relocate(ctx, volume=ctx.args.output, artifact=ARTIFACT, kind=KIND,
             fp=fingerprint(KIND, source, cfg.eval_fraction, cfg.max_chars, cfg.seed,
                            src.csv_template, src.encoding, cfg.augmentation.kinds), write=write)


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, __doc__ or STAGE, _run, _arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
