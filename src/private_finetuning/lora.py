"""Wrapping the base model with LoRA adapters, refusing target modules the model does not have."""

from __future__ import annotations

from typing import Any

from private_finetuning.config import LoraSettings
from private_finetuning.errors import ConfigError


def linear_module_suffixes(model: Any) -> set[str]:
    import torch

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def apply_lora(model: Any, settings: LoraSettings) -> Any:
    from peft import LoraConfig, get_peft_model

    available = linear_module_suffixes(model)
    missing = sorted(set(settings.target_modules) - available)
    if missing:
        raise ConfigError(f"training.lora.target_modules: {', '.join(missing)} not in the base model "
                          f"({type(model).__name__}); its linear modules are: {', '.join(sorted(available))}")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def trainable_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
