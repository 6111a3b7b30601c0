"""Computing the shared system prompt once per batch gives the very loss and gradients of the plain forward."""

from __future__ import annotations

from pathlib import Path

import pytest

from private_finetuning.config import LoraSettings
from private_finetuning.data.chat import IGNORE_INDEX, Encoded, encode_for_training, with_system
from private_finetuning.models.scoring import collate
from private_finetuning.training import shared_prefix
from private_finetuning.training.batching import collate_weights, summed_loss

SYSTEM = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12"


@pytest.fixture(scope="module")
def tokenizer_and_model(tiny_model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from private_finetuning.training.lora import apply_lora

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = apply_lora(model, LoraSettings(r=4, alpha=8))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, where no gradient reaches A: make both matter
            torch.nn.init.normal_(param, std=0.05)
    return AutoTokenizer.from_pretrained(tiny_model_dir), model.train()


def examples(tokenizer, pairs: list[tuple[str, str]], system: str = SYSTEM) -> list[Encoded]:
    return [encode_for_training(tokenizer, with_system([{"role": "user", "content": q},
                                                        {"role": "assistant", "content": a}], system))
            for q, a in pairs]


PAIRS = [("w20 w21 ?", "w30 w31 w32 ."), ("w22 ?", "w33 ."), ("w23 w24 w25 w26 ?", "w34 w35 w36 w37 w38 .")]


def test_same_loss_and_gradients_as_the_plain_forward(tokenizer_and_model) -> None:
    import torch

    tokenizer, model = tokenizer_and_model
    batch = examples(tokenizer, PAIRS)
    prefix = shared_prefix.split(batch)
    assert prefix is not None and prefix >= len(tokenizer(SYSTEM)["input_ids"])  # the whole system turn
    targets = torch.tensor(sum(e.target_tokens for e in batch))

    def loss_and_grads(run):
        model.zero_grad()
        loss = run()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, plain_grads = loss_and_grads(lambda: model(**collate(batch, tokenizer.pad_token_id),
                                                      num_items_in_batch=targets).loss)
    shared, shared_grads = loss_and_grads(lambda: shared_prefix.loss(model, batch, prefix, tokenizer.pad_token_id,
                                                                     "cpu", targets)[0])
    assert shared == pytest.approx(plain, rel=1e-5)
    assert plain_grads.keys() == shared_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, shared_grads[name], rtol=1e-4, atol=1e-6), name


def test_weighted_fact_tokens_give_the_same_loss_and_gradients_either_way(tokenizer_and_model) -> None:
    import torch

    tokenizer, model = tokenizer_and_model
    batch = [encode_for_training(tokenizer, with_system([{"role": "user", "content": q},
                                                         {"role": "assistant", "content": a}], SYSTEM),
                                 facts=[a.split()[0]], fact_weight=3.0) for q, a in PAIRS]
    assert all(e.weights is not None for e in batch)
    targets = torch.tensor(sum(e.target_weight for e in batch))
    plain_batch = collate(batch, tokenizer.pad_token_id)

    def loss_and_grads(run):
        model.zero_grad()
        loss = run()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, plain_grads = loss_and_grads(lambda: summed_loss(model, plain_batch, collate_weights(batch), targets))
    shared, shared_grads = loss_and_grads(lambda: shared_prefix.loss(model, batch, shared_prefix.split(batch),
                                                                     tokenizer.pad_token_id, "cpu", targets)[0])
    assert shared == pytest.approx(plain, rel=1e-5)
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, shared_grads[name], rtol=1e-4, atol=1e-6), name
    # Weights of 1 everywhere are the model's own loss.
    ones = torch.ones_like(plain_batch["labels"], dtype=torch.float)
    count = torch.tensor(sum(e.target_tokens for e in batch))
    assert summed_loss(model, plain_batch, ones, count).item() == pytest.approx(
        model(**plain_batch, num_items_in_batch=count).loss.item(), rel=1e-5)


def test_it_steps_aside_when_it_cannot_be_exact(tokenizer_and_model) -> None:
    tokenizer, _ = tokenizer_and_model
    assert shared_prefix.split(examples(tokenizer, PAIRS[:1])) is None  # one row: nothing to share
    assert shared_prefix.split(examples(tokenizer, PAIRS, system="w1")) is None  # too short to pay off
    trained_prefix = [Encoded([1] * 20 + [5, 6], [1] * 22), Encoded([1] * 20 + [7], [IGNORE_INDEX] * 20 + [7])]
    assert shared_prefix.split(trained_prefix) is None  # a target inside the prefix would lose its loss term
    own_system = examples(tokenizer, PAIRS[:1]) + examples(tokenizer, PAIRS[1:2], system="w40 w41")
    assert shared_prefix.split(own_system) is None  # records with their own system message share little
