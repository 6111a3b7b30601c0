"""Train on a batch whose examples share a prefix (the system prompt) without computing it once per example.

Every training example starts with the same system prompt: on AcmeHotels it is 32 of 73 tokens, so
44% of the forward and backward work is the same computation repeated for each row. Here the
shared prefix is run once, as a batch of one, its key/value cache repeated for every row (a
differentiable copy: the gradient flowing into it is the sum over the rows, exactly as if each row
had computed it), and only each row's own suffix is run on top of it. The loss is the same as the
plain forward's, term for term (``tests/unit/training/test_shared_prefix.py`` compares loss and gradients).

It applies when the prefix is long enough to matter and carries no target token (the loss of the
plain forward would include the prediction of the suffix's first token, so that must not be a
target either); otherwise :func:`split` returns None and the caller runs the plain forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from private_finetuning.data.chat import IGNORE_INDEX, Encoded

if TYPE_CHECKING:
    from transformers import PreTrainedModel

MIN_PREFIX = 8  # below this, two forward calls cost more than they save


def common_prefix(examples: list[Encoded]) -> int:
    first = examples[0].input_ids
    n = min(len(e.input_ids) for e in examples)
    for i in range(n):
        token = first[i]
        if any(e.input_ids[i] != token for e in examples[1:]):
            return i
    return n


def split(examples: list[Encoded]) -> int | None:
    """The usable shared-prefix length of a batch, or None when the plain forward must be used."""
    if len(examples) < 2:
        return None
    p = common_prefix(examples)
    if p < MIN_PREFIX:
        return None
    p = min(p, min(len(e.input_ids) for e in examples) - 1)  # every row keeps at least one token of its own
    if any(label != IGNORE_INDEX for e in examples for label in e.labels[:p + 1]):
        return None
    return p


def loss(model: PreTrainedModel, examples: list[Encoded], prefix: int, pad_id: int, device: str, targets: Any,
         row_losses: list[float] | None = None) -> tuple[Any, int]:
    """The summed token loss of the batch over ``targets``, and its token count, via the shared prefix."""
    import torch

    from private_finetuning.models.scoring import collate
    from private_finetuning.training.batching import collate_weights, summed_loss

    head = torch.tensor([examples[0].input_ids[:prefix]], device=device)
    out = model(input_ids=head, use_cache=True)
    cache = out.cache
    cache.batch_repeat_interleave(len(examples))
    tails = [e.cut(prefix) for e in examples]
    batch = {k: v.to(device) for k, v in collate(tails, pad_id).items()}
    tokens = int(batch["attention_mask"].sum()) + prefix * len(examples)
    batch["attention_mask"] = torch.cat([torch.ones((len(examples), prefix), dtype=batch["attention_mask"].dtype,
                                                    device=device), batch["attention_mask"]], dim=1)
    return summed_loss(model, batch, collate_weights(tails), targets, row_losses, cache=cache), tokens
