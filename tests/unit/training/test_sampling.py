"""How training spends its steps: epochs per fact, phrasings in turn, loss-prioritised draws that a
resumed pod replays, LoRA+ learning rates, per-example losses and the early stop."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest

from private_finetuning.config import LoraSettings, TrainingConfig
from private_finetuning.data.chat import IGNORE_INDEX, Encoded
from private_finetuning.models.scoring import collate
from private_finetuning.training.batching import (
    batch_order,
    collate_weights,
    epoch_batches,
    fact_groups,
    summed_loss,
)
from private_finetuning.training.checkpoints import TrainingState
from private_finetuning.training.recipe import epoch_priorities, learnt, parameter_groups

LENGTHS = [10 + (i * 7) % 23 for i in range(40)]


def test_without_variants_an_epoch_is_the_same_as_before() -> None:
    groups = fact_groups(list(range(40)))
    for epoch in range(3):
        assert epoch_batches(LENGTHS, groups, 8, 1234, epoch, True) == batch_order(LENGTHS, 8, 1234, epoch, True)


def test_an_epoch_shows_every_fact_once_as_written_every_other_epoch_and_each_variant_in_turn() -> None:
    fact_ids = [i // 4 for i in range(40)]  # 10 facts, each as written then 3 variants
    groups = fact_groups(fact_ids)
    shown_per_fact: dict[int, list[int]] = {f: [] for f in range(10)}
    for epoch in range(6):
        shown = [i for batch in epoch_batches(LENGTHS, groups, 3, 7, epoch, True) for i in batch]
        assert sorted(fact_ids[i] for i in shown) == list(range(10))
        for i in shown:
            shown_per_fact[fact_ids[i]].append(i % 4)
    for forms in shown_per_fact.values():
        assert forms.count(0) == 3  # the record as written in every other epoch
        assert sorted(f for f in forms if f) == [1, 2, 3]  # and each variant once in between


def test_loss_prioritised_epochs_favour_unlearnt_facts_and_replay_exactly() -> None:
    groups = fact_groups(list(range(40)))
    priorities = [1.0 if i < 4 else 0.02 for i in range(40)]  # four facts not learnt yet
    batches = epoch_batches(LENGTHS, groups, 8, 1234, 3, True, priorities)
    drawn = Counter(i for batch in batches for i in batch)
    assert sum(drawn.values()) == 40  # an epoch is as long as ever
    assert sum(drawn[i] for i in range(4)) > 10  # ~ 40 * 4 / 5.4 of the draws, against 4 when uniform
    assert batches == epoch_batches(LENGTHS, groups, 8, 1234, 3, True, list(priorities))


def test_a_resumed_pod_draws_the_epoch_from_the_priorities_of_its_start() -> None:
    cfg = TrainingConfig(sampling="loss")
    state = TrainingState(epoch=2, step_in_epoch=3, fact_losses=[0.5, None, 0.01])
    state.epoch_priorities = epoch_priorities(cfg, state)
    assert state.epoch_priorities == [0.5, 0.5, 0.01]  # an unseen fact ranks with the hardest
    state.fact_losses = [0.0, 0.0, 0.0]  # the epoch goes on learning...
    resumed = TrainingState(**json.loads(json.dumps(asdict(state))))  # ...the checkpoint keeps the start
    assert resumed.epoch_priorities == [0.5, 0.5, 0.01]
    assert epoch_priorities(TrainingConfig(), state) is None  # uniform: every fact once


def test_early_stop_waits_for_two_epochs_and_nine_facts_in_ten() -> None:
    cfg = TrainingConfig(early_stop_loss=0.1)
    low = [0.01] * 9 + [0.5]
    assert learnt(cfg, TrainingState(epoch=2, fact_losses=low))
    assert not learnt(cfg, TrainingState(epoch=1, fact_losses=low))
    assert not learnt(cfg, TrainingState(epoch=3, fact_losses=[0.01] * 8 + [0.5, 0.5]))
    assert not learnt(cfg, TrainingState(epoch=3, fact_losses=[0.01] * 9 + [None]))
    assert not learnt(TrainingConfig(), TrainingState(epoch=5, fact_losses=[0.0] * 10))


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    from private_finetuning.training.lora import apply_lora

    torch.manual_seed(0)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                       LoraSettings(r=4, alpha=8))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model


def test_loraplus_gives_the_b_matrices_their_own_learning_rate(lora_model) -> None:
    import torch

    cfg = TrainingConfig(learning_rate=1e-3, loraplus_lr_ratio=16)
    optimizer = torch.optim.AdamW(parameter_groups(lora_model, cfg), lr=cfg.learning_rate)
    names = {id(p): n for n, p in lora_model.named_parameters()}
    rest, b = optimizer.param_groups
    assert b["lr"] == pytest.approx(0.016) and rest["lr"] == pytest.approx(1e-3)
    assert b["params"] and all("lora_B" in names[id(p)] for p in b["params"])
    assert rest["params"] and all("lora_A" in names[id(p)] for p in rest["params"])
    assert len(parameter_groups(lora_model, TrainingConfig())) == 1  # ratio 1: plain LoRA, one group


def test_per_example_losses_equal_the_reference_computation(lora_model) -> None:
    import torch

    examples = [Encoded([5, 6, 7, 8, 9], [IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9], [1, 1, 1, 10, 1]),
                Encoded([5, 6, 11], [IGNORE_INDEX, IGNORE_INDEX, 11])]
    batch = collate(examples, 0)
    weights = collate_weights(examples)
    rows: list[float] = []
    with torch.no_grad():
        loss = summed_loss(lora_model, batch, weights, torch.tensor(13.0), rows)
        logits = lora_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = []
    for row, example in enumerate(examples):
        ce = [float(torch.nn.functional.cross_entropy(logits[row, t - 1], torch.tensor(label)))
              for t, label in enumerate(example.labels) if label != IGNORE_INDEX]
        w = [(example.weights or [1] * len(example.labels))[t] for t, label in enumerate(example.labels)
             if label != IGNORE_INDEX]
        reference.append(sum(c * x for c, x in zip(ce, w, strict=True)) / sum(w))
    assert rows == pytest.approx(reference, rel=1e-5)
    assert float(loss) == pytest.approx((reference[0] * 12 + reference[1]) / 13, rel=1e-5)
