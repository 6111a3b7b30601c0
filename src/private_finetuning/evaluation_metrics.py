"""The evaluation's metrics, each a small function that can be checked on hand-made cases.

- fact accuracy: does the answer state the exact private fact? Numbers are compared as numbers
  (``84`` matches ``84 EUR`` and ``84.0`` but not ``184``), text ignoring case, accents and spacing;
- ROUGE-L of the answer against the reference answer (``rouge-score``, offline);
- perplexity of reference answers, teacher-forced and masked to the answer's tokens;
- KL divergence between two models' next-token distributions, for forgetting.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from private_finetuning.batching import collate
from private_finetuning.chat import IGNORE_INDEX, Encoded
from private_finetuning.facts import fact_accuracy, fact_match, normalize, token_f1

__all__ = ["answer_log_probs", "answer_nll", "fact_accuracy", "fact_match", "mean_kl", "normalize", "perplexity",
           "rouge_l", "token_f1"]



@functools.cache
def _rouge_scorer() -> Any:
    import logging

    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # it logs "Using default tokenizer" per scorer
    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(prediction: str, reference: str) -> float:
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def _answer_logits(model: Any, examples: list[Encoded], pad_id: int, device: str) -> tuple[Any, Any]:
    """Logits at each position whose next token is an answer token, and those tokens (teacher forcing)."""
    import torch

    batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
    with torch.inference_mode():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    return logits[:, :-1][keep].float(), targets[keep]


def answer_nll(model: Any, examples: list[Encoded], pad_id: int, device: str = "cpu",
               batch_size: int = 16) -> tuple[float, int]:
    """Summed negative log-likelihood of the answer tokens, and how many there were."""
    import torch

    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        logits, targets = _answer_logits(model, examples[start:start + batch_size], pad_id, device)
        total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        count += int(targets.numel())
    return total, count


def perplexity(model: Any, examples: list[Encoded], pad_id: int, device: str = "cpu", batch_size: int = 16) -> float:
    total, count = answer_nll(model, examples, pad_id, device, batch_size)
    return math.exp(total / count) if count else float("nan")


def answer_log_probs(model: Any, examples: list[Encoded], pad_id: int, device: str = "cpu",
                     batch_size: int = 16) -> Any:
    """Log-probabilities over the vocabulary at every answer position, stacked: (positions, vocab)."""
    import torch

    parts = []
    for start in range(0, len(examples), batch_size):
        logits, _ = _answer_logits(model, examples[start:start + batch_size], pad_id, device)
        parts.append(torch.log_softmax(logits, dim=-1).cpu())
    return torch.cat(parts)


def mean_kl(reference_log_probs: Any, other_log_probs: Any) -> float:
    """Mean over positions of KL(reference || other): how far ``other`` moved from ``reference``."""
    import torch

    kl = torch.nn.functional.kl_div(other_log_probs, reference_log_probs, log_target=True, reduction="none")
    return float(kl.sum(dim=-1).mean())
