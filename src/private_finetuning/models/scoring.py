"""Teacher-forced scoring of replies: how likely a model finds the reply tokens of chat examples.

Training (held-out loss, the KL term), the evaluation (answer and general-text perplexity, forgetting)
and the benchmarks all read a model the same way: the examples right-padded into one batch, logits
kept only where the next token is a reply token.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from private_finetuning.data.chat import IGNORE_INDEX, Encoded

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
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


# At most this many bytes of fp32 logits per forward pass: a 262,144-token vocabulary (Gemma 3) at every position
# of 64 rows made 6 GiB, past the evaluation pod's limit. Batches are cut to fit it (see :func:`batches`).
LOGIT_BUDGET_BYTES = 512 * 2**20


def reply_logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits at each position whose next token is a reply token (with the gradient, if one is being taken).

    The LM head (a vocabulary-wide product) runs only at the positions some row needs (``logits_to_keep``), through
    the model's own forward, so architecture-specific logit handling (soft-capping) still applies."""
    keep = batch["labels"][:, 1:] != IGNORE_INDEX
    columns = keep.any(dim=0).nonzero().squeeze(1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=columns).logits
    return logits[keep[:, columns]]


def _reply_positions(example: Encoded) -> set[int]:
    return {t for t in range(len(example.labels) - 1) if example.labels[t + 1] != IGNORE_INDEX}


def batches(examples: list[Encoded], batch_size: int, vocab: int) -> list[list[Encoded]]:
    """``examples`` in order, in batches of at most ``batch_size`` whose reply logits fit
    :data:`LOGIT_BUDGET_BYTES` (a batch holds one example however long it is)."""
    out: list[list[Encoded]] = []
    current: list[Encoded] = []
    columns: set[int] = set()
    for example in examples:
        positions = _reply_positions(example)
        wider = columns | positions
        if current and (len(current) == batch_size or (len(current) + 1) * len(wider) * vocab * 4 > LOGIT_BUDGET_BYTES):
            out.append(current)
            current, wider = [], positions
        current.append(example)
        columns = wider
    return [*out, current] if current else out


def _vocab(model: PreTrainedModel) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def _answer_logits(model: PreTrainedModel, examples: list[Encoded], pad_id: int,
                   device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at each reply position and the reply tokens they predict (teacher forcing, no gradient)."""
    import torch

    batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
    with torch.inference_mode():
        logits = reply_logits(model, batch)
    targets = batch["labels"][:, 1:]
    return logits.float(), targets[targets != IGNORE_INDEX]


def answer_nll(model: PreTrainedModel, examples: list[Encoded], pad_id: int, device: str = "cpu",
               batch_size: int = 16) -> tuple[float, int]:
    """Summed negative log-likelihood of the answer tokens, and how many there were."""
    import torch

    total, count = 0.0, 0
    for chunk in batches(examples, batch_size, _vocab(model)):
        logits, targets = _answer_logits(model, chunk, pad_id, device)
        total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        count += int(targets.numel())
    return total, count


def example_nll(model: PreTrainedModel, examples: list[Encoded], pad_id: int, device: str = "cpu",
                batch_size: int = 16) -> list[float]:
    """Each example's summed negative log-likelihood of its answer tokens (teacher-forced), in order."""
    import torch

    out: list[float] = []
    for chunk in batches(examples, batch_size, _vocab(model)):
        logits, targets = _answer_logits(model, chunk, pad_id, device)
        losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        sizes = [sum(1 for label in e.labels[1:] if label != IGNORE_INDEX) for e in chunk]
        out += [float(part.sum()) for part in torch.split(losses, sizes)]  # the rows' positions, row after row
    return out


def perplexity(model: PreTrainedModel, examples: list[Encoded], pad_id: int, device: str = "cpu",
               batch_size: int = 16) -> float:
    total, count = answer_nll(model, examples, pad_id, device, batch_size)
    return math.exp(total / count) if count else float("nan")


def answer_log_probs(model: PreTrainedModel, examples: list[Encoded], pad_id: int, device: str = "cpu",
                     batch_size: int = 16) -> torch.Tensor:
    """Log-probabilities over the vocabulary at every answer position, stacked: (positions, vocab)."""
    import torch

    parts = []
    for chunk in batches(examples, batch_size, _vocab(model)):
        logits, _ = _answer_logits(model, chunk, pad_id, device)
        parts.append(torch.log_softmax(logits, dim=-1).cpu())
    return torch.cat(parts)


def kl_per_position(reference_log_probs: torch.Tensor, other_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(reference || other) at each position: how far ``other`` moved from ``reference``."""
    import torch

    kl = torch.nn.functional.kl_div(other_log_probs, reference_log_probs, log_target=True, reduction="none")
    return kl.sum(dim=-1)


def mean_kl(reference_log_probs: torch.Tensor, other_log_probs: torch.Tensor) -> float:
    """Mean over positions of KL(reference || other)."""
    return float(kl_per_position(reference_log_probs, other_log_probs).mean())

