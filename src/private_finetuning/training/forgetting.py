"""Holding the model to the base model on general text while it learns the private facts.

``training.kl_weight`` adds to each optimizer step ``kl_weight`` x the mean KL(base || fine-tuned) of
the next-token distributions over the replies of a few general conversations (``data/anchor.py``,
disjoint from the evaluation's forgetting text). The base model's distributions come from the same
network with its adapters switched off, so nothing else is loaded; they are computed without a
gradient, and only the fine-tuned side is trained.
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

BATCH = 4  # anchor conversations per optimizer step


def anchor_examples(tokenizer: PreTrainedTokenizerBase, system_prompt: str | None) -> list[Encoded]:
    return [encode_for_training(tokenizer, with_system([{"role": "user", "content": q},
                                                        {"role": "assistant", "content": a}], system_prompt))
            for q, a in ANCHOR_CONVERSATIONS]


def anchor_batch(examples: list[Encoded], step: int) -> list[Encoded]:
    """The conversations of ``step``, in turn, so every one is used as often as the others."""
    start = (step * BATCH) % len(examples)
    return [examples[(start + i) % len(examples)] for i in range(BATCH)]


def kl_to_base(model: PeftModel, examples: list[Encoded], pad_id: int, device: str) -> torch.Tensor:
    """Mean over the replies' positions of KL(base || fine-tuned), differentiable in the fine-tuned side.

    ``model`` is a peft model: ``disable_adapter()`` gives the base model's forward on the same weights."""
    import torch

    batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
    with torch.no_grad(), model.disable_adapter():
        base = torch.log_softmax(reply_logits(model, batch).float(), dim=-1)
    tuned = torch.log_softmax(reply_logits(model, batch).float(), dim=-1)
    return kl_per_position(base, tuned).mean()
