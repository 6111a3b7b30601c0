"""The held-out questions a stage asks a model: the evaluation's, and the export's round-trip check."""

from __future__ import annotations

from pathlib import Path

from private_finetuning.data.record import Record, read_split
from private_finetuning.errors import InputDataError


def pick_questions(path: Path, samples: int) -> list[Record]:
    """``samples`` records of an eval split (0: all) that end on a user question and its answer,
    taken evenly across the split so every fact type is represented."""
    # A variant (data/augment.py) is not a question of the data: only records as the user wrote them are asked.
    # Canaries (data/canaries.py) are secrets planted for the exposure audit, not questions of the data.
    usable = [r for r in read_split(path) if r.asks_question() and r.variant is None and "canary" not in r.meta]
    if not usable:
        raise InputDataError(str(path), "no usable rows: the eval split needs records with a user question "
                             "followed by the assistant's answer")
    if samples and samples < len(usable):
        step = len(usable) / samples
        usable = [usable[int(i * step)] for i in range(samples)]
    return usable
