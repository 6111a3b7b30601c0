"""Length-grouped batches: examples of similar length share a batch, so padding costs little.

Packing several examples into one row would waste even less, but without variable-length
attention kernels (not available on CPU) packed examples attend to each other; grouping by length
keeps every example's attention its own and leaves padding at a few percent on chat data.
"""

from __future__ import annotations

import random
from typing import Any

from private_finetuning.chat import IGNORE_INDEX, Encoded


def batch_order(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool,
                megabatch: int = 32) -> list[list[int]]:
    """Indices of each batch for one epoch; deterministic in (seed, epoch) so a resume replays it."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        # Sort within shuffled mega-batches: lengths match inside a batch, yet batches stay random.
        span = batch_size * megabatch
        order = [i for start in range(0, len(order), span)
                 for i in sorted(order[start:start + span], key=lambda j: -lengths[j])]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-pad to the longest example in the batch; padded positions carry no loss."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    real = sum(lengths[i] for batch in batches for i in batch)
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1.0 - real / padded if padded else 0.0
