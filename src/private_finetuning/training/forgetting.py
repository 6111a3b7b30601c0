"""Holding the model to the base model on general text while it learns the private facts.

``training.kl_weight`` adds to each optimizer step ``kl_weight`` x the mean KL(base || fine-tuned) of
the next-token distributions over the replies of a few general conversations (``data/anchor.py``,
disjoint from the evaluation's forgetting text). The base model's distributions come from the same
network with its adapters switched off, so nothing else is loaded; they are computed once, before the
first step (:func:`base_log_probs`: the base does not change, so a base forward per step would be
spent on the same numbers), and only the fine-tuned side is trained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from private_finetuning.data.anchor import ANCHOR_CONVERSATIONS
from private_finetuning.data.chat import Encoded, encode_for_training, with_system
from private_finetuning.models.scoring import collate, kl_per_position, reply_logits

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

    from private_finetuning.models.device import Device

BATCH = 4  # anchor conversations per optimizer step


def anchor_examples(tokenizer: PreTrainedTokenizerBase, system_prompt: str | None) -> list[Encoded]:
    return [encode_for_training(tokenizer, with_system([{"role": "user", "content": q},
                                                        {"role": "assistant", "content": a}], system_prompt))
            for q, a in ANCHOR_CONVERSATIONS]


def anchor_rows(count: int, step: int) -> list[int]:
    """Which of ``count`` conversations ``step`` uses, in turn, so every one is used as often as the others."""
    start = (step * BATCH) % count
    return [(start + i) % count for i in range(BATCH)]


def base_log_probs(model: PeftModel, examples: list[Encoded], pad_id: int, device: Device) -> list[torch.Tensor]:
    """Each conversation's base-model log-probabilities at its reply's positions (adapters off, no gradient), on
    the CPU: computed once per run. About 190 MB for the 32 conversations and a 49k vocabulary."""
    import torch

    out = []
    with torch.no_grad(), model.disable_adapter(), device.autocast():
        for example in examples:
            batch = {k: v.to(device.name) for k, v in collate([example], pad_id).items()}
            out.append(torch.log_softmax(reply_logits(model, batch).float(), dim=-1).cpu())
    return out


def kl_to_base(model: PeftModel, examples: list[Encoded], pad_id: int, device: str,
               base: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the replies' positions of KL(base || fine-tuned), differentiable in the fine-tuned side;
    ``base``: each example's :func:`base_log_probs`."""
    import torch

    batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
    tuned = torch.log_softmax(reply_logits(model, batch).float(), dim=-1)
    return kl_per_position(torch.cat(base).to(device), tuned).mean()
