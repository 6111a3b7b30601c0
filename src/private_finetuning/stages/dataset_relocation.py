"""dataset-relocation-server: publishes the training data as normalized chat JSONL (train + eval splits).

Records that say which split they belong to keep it (the embedded AcmeHotels data holds out
phrasings, not random rows); the others are split at random with the configured seed. The train
split then gets its question variants (``dataset.augmentation``, data/augment.py); the eval split
never does. Before anything is published, every record is scanned for personal data (data/pii.py):
counted by type and split, redacted or refused as ``privacy.pii`` says; ``privacy.canaries`` random
secrets are then added to the train split for the evaluation's exposure audit (data/canaries.py).
Any bad row stops the stage with file, line and field, and nothing is published.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from private_finetuning.artifacts.store import DATASET, sha256_file
from private_finetuning.config import DatasetConfig, PrivacyConfig
from private_finetuning.data import acmehotels, augment, canaries, pii
from private_finetuning.data.formats import detect_format, read_records
from private_finetuning.data.record import Record
from private_finetuning.errors import InputDataError
from private_finetuning.retrieval.index import context_variants
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


def personal_data(records: list[Record], splits: dict[str, list[Record]], cfg: PrivacyConfig, where: str,
                  log: logging.Logger) -> tuple[dict[str, list[Record]], dict]:
    """The splits after ``privacy.pii`` (reported, redacted or refused), and what the scan found, by split and type
    (counts only: a value never leaves the data)."""
    start = time.perf_counter()
    findings = pii.scan(records)
    if findings and cfg.pii == "refuse":
        pii.refuse(findings, where)
    split_of = {id(r): name for name, rows in splits.items() for r in rows}
    found = {name: pii.counts([f for f in findings if split_of[id(records[f.record])] == name]) for name in splits}
    redacted = 0
    if findings and cfg.pii == "redact":
        by_record: dict[int, list[pii.Finding]] = {}
        for f in findings:
            by_record.setdefault(f.record, []).append(f)
        fixed = {id(records[i]): pii.redact(records[i], fs) for i, fs in by_record.items()}
        splits = {name: [fixed.get(id(r), r) for r in rows] for name, rows in splits.items()}
        redacted = len(findings)
    seconds = time.perf_counter() - start
    log.info("personal data (%s): %s; privacy.pii is %s%s (scanned in %.1fs)", ", ".join(pii.recognisers()),
             "; ".join(f"{name} {', '.join(f'{k} {n}' for k, n in c.items()) or 'none'}" for name, c in found.items()),
             cfg.pii, f", {redacted} redacted" if redacted else "", seconds)
    return splits, {"policy": cfg.pii, "recognisers": pii.recognisers(), "found": found, "redacted": redacted,
                    "scan_seconds": round(seconds, 2)}


def prepare(ctx: StageContext, path: Path, fmt: str) -> tuple[dict[str, list[Record]], dict]:
    """The splits to publish (read, split, scanned, canaries, variants) and the manifest's metadata about them."""
    cfg, src = ctx.config.dataset, ctx.config.dataset.source
    records = read_records(path, fmt, src.encoding, cfg.max_chars, src.csv_template, cfg.max_file_bytes)
    ctx.log.info("read %d records from %s (%s)", len(records), path, fmt)
    splits = split_records(records, cfg, str(path))
    splits, privacy = personal_data(records, splits, ctx.config.privacy, str(path), ctx.log)
    if ctx.config.privacy.canaries:
        splits["train"] += canaries.canaries(ctx.config.privacy.canaries, cfg.seed)
        privacy["canaries"] = ctx.config.privacy.canaries
        ctx.log.info("privacy.canaries: %d random secrets added to the train split, for the exposure audit",
                     ctx.config.privacy.canaries)
    facts = len(splits["train"])
    splits["train"], made = augment.augment(splits["train"], cfg.augmentation.kinds)
    if ctx.config.serving.retrieval and ctx.config.retrieval.train_with_context:
        rag = ctx.config.retrieval
        variants = context_variants(splits["train"], rag.k, rag.max_record_tokens, cfg.seed)
        splits["train"] += variants
        made["context"] = len(variants)
    ctx.log.info("augmentation: %d train records, %d variants made (%s); the eval split is left as it is", facts,
                 sum(made.values()), ", ".join(f"{k} {made[k]}" for k in [*cfg.augmentation.kinds, "context"]
                                               if k in made) or "off")
    return splits, {"format": "chat-jsonl", "splits": {k: len(v) for k, v in splits.items()}, "files": SPLIT_FILES,
                    "augmentation": {"kinds": list(cfg.augmentation.kinds), "train_facts": facts,
                                     "variants": dict(made)}, "privacy": privacy}


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
        splits, metadata = prepare(ctx, path, fmt)
        for split, rows in splits.items():
            with (folder / SPLIT_FILES[split]).open("w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(row.dumps() + "\n")
        ctx.log.info("splits: %s", ", ".join(f"{k}={v}" for k, v in metadata["splits"].items()))
        return name, source, metadata

    relocate(ctx, volume=ctx.args.output, artifact=ARTIFACT, kind=KIND,
             fp=fingerprint(KIND, source, cfg.eval_fraction, cfg.max_chars, cfg.seed,
                            src.csv_template, src.encoding, cfg.augmentation.kinds, ctx.config.privacy.pii,
                            ctx.config.privacy.canaries, ctx.config.serving.retrieval and
                            ctx.config.retrieval.model_dump()), write=write)


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, __doc__ or STAGE, _run, _arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
