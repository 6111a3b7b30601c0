"""Wrapping the base model with LoRA adapters, refusing target modules the model does not have."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from private_finetuning.config import LoraSettings
from private_finetuning.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def linear_module_suffixes(model: PreTrainedModel) -> set[str]:
    import torch

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def apply_lora(model: PreTrainedModel, settings: LoraSettings) -> Any:
    """``model`` with LoRA on ``settings.target_modules`` of the top ``settings.layer_share`` of its layers."""
    from peft import LoraConfig, get_peft_model

    available = linear_module_suffixes(model)
    missing = sorted(set(settings.target_modules) - available)
    if missing:
        raise ConfigError(f"training.lora.target_modules: {', '.join(missing)} not in the base model "
                          f"({type(model).__name__}); its linear modules are: {', '.join(sorted(available))}")
    layers = None
    if settings.layer_share < 1:
        count = model.config.num_hidden_layers
        layers = list(range(count - max(1, math.ceil(count * settings.layer_share)), count))
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none", task_type="CAUSAL_LM",
                        layers_to_transform=layers)
    return get_peft_model(model, config)


def trainable_parameters(model: PreTrainedModel) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
