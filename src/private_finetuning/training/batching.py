"""Length-grouped batches: examples of similar length share a batch, so padding costs little.

Packing several examples into one row would waste even less, but without variable-length
attention kernels (not available on CPU) packed examples attend to each other; grouping by length
keeps every example's attention its own and leaves padding at a few percent on chat data.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from private_finetuning.data.chat import IGNORE_INDEX, Encoded

if TYPE_CHECKING:
    from transformers import PreTrainedModel


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


def collate_weights(examples: list[Encoded]) -> Any:
    """The per-position loss weights of a batch padded as :func:`collate` pads it; None when all are 1."""
    import torch

    if all(e.weights is None for e in examples):
        return None
    width = max(len(e.input_ids) for e in examples)
    weights = torch.ones((len(examples), width))
    for row, example in enumerate(examples):
        if example.weights is not None:
            weights[row, :len(example.weights)] = torch.tensor(example.weights)
    return weights


def summed_loss(model: PreTrainedModel, batch: dict[str, Any], weights: Any, normaliser: Any,
                row_losses: list[float] | None = None, **forward: Any) -> Any:
    """The causal-LM loss of ``batch`` summed over its target tokens and divided by ``normaliser``.

    Without ``weights`` it is the model's own loss; with them, each target token's cross-entropy is
    multiplied by its weight first (and ``normaliser`` is the weighted target count of the step).
    With ``row_losses``, each row's weighted mean token loss is appended to it (what loss-prioritised
    sampling and early stopping read), at no extra forward.
    """
    import torch

    if weights is None and row_losses is None:
        return model(**batch, num_items_in_batch=normaliser, **forward).loss
    # The LM head (a vocabulary-wide matrix product) only at the positions that predict a target token of
    # some row: the model's own forward, so architecture-specific logit handling (soft-capping) still applies.
    columns = (batch["labels"][:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=columns,
                **forward)
    logits = out.logits.float()
    labels = batch["labels"][:, 1:][:, columns]
    token_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                   ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)
    weight = (torch.ones(labels.shape) if weights is None else weights[:, 1:][:, columns.cpu()]).to(token_loss.device)
    weighted = token_loss * weight
    if row_losses is not None:
        counted = (weight * (labels != IGNORE_INDEX)).sum(dim=1).clamp(min=1e-9)
        row_losses.extend((weighted.detach().sum(dim=1) / counted).tolist())
    return weighted.sum() / normaliser


def fact_groups(fact_ids: list[int]) -> list[list[int]]:
    """Indices of the examples of each fact (a record and its variants, data/augment.py), in data order."""
    groups: dict[int, list[int]] = {}
    for index, fact in enumerate(fact_ids):
        groups.setdefault(fact, []).append(index)
    return list(groups.values())


def phrasing(forms: int, turn: int) -> int:
    """Which of a fact's ``forms`` (0: the record as written, then its variants) to show at ``turn``: the
    record as written every other turn, each variant in turn between, so the data as the user wrote it
    stays what is learnt most while the variants teach other ways of asking."""
    if forms == 1 or turn % 2 == 0:
        return 0
    return 1 + (turn // 2) % (forms - 1)


def epoch_batches(lengths: list[int], groups: list[list[int]], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool, priorities: list[float] | None = None) -> list[list[int]]:
    """Example indices of each batch of one epoch, which counts facts, not variants: every fact once, in
    one of its phrasings, turning with the epoch (:func:`phrasing`).

    With ``priorities`` (one per fact: its last loss), the epoch draws as many facts as there are, with
    replacement, each with a chance proportional to its loss (Mindermann et al. 2022, simplified): steps
    go to what is not learnt yet. Deterministic in (seed, epoch, priorities), so a resume replays it."""
    facts = list(range(len(groups)))
    if priorities is not None:
        floor = 0.05 * max(max(priorities), 1e-6)
        facts = sorted(random.Random(seed * 7_919 + epoch).choices(
            facts, weights=[max(p, floor) for p in priorities], k=len(groups)))
    seen: dict[int, int] = {}
    picks = []
    for f in facts:
        seen[f] = seen.get(f, -1) + 1  # a fact drawn twice in an epoch comes in two phrasings
        picks.append(groups[f][phrasing(len(groups[f]), epoch + f + seen[f])])
    order = batch_order([lengths[i] for i in picks], batch_size, seed, epoch, group_by_length)
    return [[picks[k] for k in batch] for batch in order]


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    real = sum(lengths[i] for batch in batches for i in batch)
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1.0 - real / padded if padded else 0.0
