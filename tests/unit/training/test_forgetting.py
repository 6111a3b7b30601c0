"""The forgetting term: KL to the base model on general text the evaluation never measures."""

from __future__ import annotations

from pathlib import Path

import pytest

from private_finetuning.data.anchor import ANCHOR_CONVERSATIONS
from private_finetuning.data.facts import normalize
from private_finetuning.data.general import GENERAL_CONVERSATIONS
from private_finetuning.training import forgetting


def test_the_anchor_text_is_not_the_text_forgetting_is_measured_on() -> None:
    measured = {normalize(t) for pair in GENERAL_CONVERSATIONS for t in pair}
    assert not measured & {normalize(t) for pair in ANCHOR_CONVERSATIONS for t in pair}


def test_anchor_batches_take_every_conversation_in_turn() -> None:
    count = len(ANCHOR_CONVERSATIONS)
    used = [x for step in range(count) for x in forgetting.anchor_rows(count, step)]
    assert {used.count(x) for x in range(count)} == {forgetting.BATCH}


def test_kl_to_base_equals_the_reference_computation_and_trains_the_adapter(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from private_finetuning.config import LoraSettings
    from private_finetuning.data.chat import IGNORE_INDEX
    from private_finetuning.models.device import select_device
    from private_finetuning.models.scoring import collate
    from private_finetuning.training.lora import apply_lora

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    tuned = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                       LoraSettings(r=4, alpha=8))
    device = select_device("fp32")
    first = forgetting.anchor_examples(tokenizer, "sys")[:2]
    cached = forgetting.base_log_probs(tuned, first, 0, device)
    # Zero before any step (up to float noise: the cache's rows were computed one by one, the step's as a batch).
    assert float(forgetting.kl_to_base(tuned, first, 0, "cpu", cached)) == pytest.approx(0.0, abs=1e-6)
    for name, param in tuned.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    examples = forgetting.anchor_examples(tokenizer, "sys")[:3]
    # The base's side is computed once, before training, and reused at every step: the same KL as a fresh one.
    cached = forgetting.base_log_probs(tuned, examples, tokenizer.pad_token_id or 0, device)
    kl = forgetting.kl_to_base(tuned, examples, tokenizer.pad_token_id or 0, "cpu", cached)

    batch = collate(examples, tokenizer.pad_token_id or 0)
    with torch.no_grad():
        p_logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        q_logits = tuned(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    terms = []
    for row in range(len(examples)):
        for t in range(1, batch["input_ids"].shape[1]):
            if batch["labels"][row, t] != IGNORE_INDEX:
                p = torch.softmax(p_logits[row, t - 1], -1)
                q = torch.softmax(q_logits[row, t - 1], -1)
                terms.append(float((p * (p.log() - q.log())).sum()))
    assert float(kl) == pytest.approx(sum(terms) / len(terms), rel=1e-4)
    kl.backward()
    grads = [p.grad for n, p in tuned.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
