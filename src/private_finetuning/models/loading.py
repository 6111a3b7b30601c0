"""Loading and saving models and tokenizers with transformers, offline and without remote code."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from private_finetuning.errors import SourceError
from private_finetuning.models.sources import PICKLE_SUFFIXES, ResolvedSource

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DTYPES = ("float32", "bfloat16", "float16")


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(source: ResolvedSource) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.load_dir, gguf_file=source.gguf_file,
                                             trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # transformers raises many types; the person needs the path and the reason
        raise SourceError(f"{source.path}: cannot load a tokenizer: {exc}") from None


def load_model(source: ResolvedSource, dtype: str) -> Any:
    """Load a causal LM; a GGUF source is de-quantized into ``dtype``."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": False, "local_files_only": True, "dtype": _torch_dtype(dtype)}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    else:
        kwargs["use_safetensors"] = True
    try:
        model = AutoModelForCausalLM.from_pretrained(source.load_dir, **kwargs)
    except Exception as exc:
        raise SourceError(f"{source.path}: cannot load a causal language model: {exc}") from None
    model.eval()
    return model


def load_published_model(model_dir: Path, adapter_dir: Path | None = None) -> Any:
    """A model published on a volume (safetensors, float32), with a LoRA adapter merged in if given."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True,
                                                 use_safetensors=True)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, local_files_only=True).merge_and_unload()
    return model


def save_model(model: PreTrainedModel, out_dir: Path) -> None:
    """Write safetensors + config. A GGUF-loaded model keeps a quantizer marker that makes
    ``save_pretrained`` refuse; the weights are already de-quantized, so the marker is dropped."""
    if getattr(model, "hf_quantizer", None) is not None or hasattr(model.config, "quantization_config"):
        quant = getattr(model.config, "quantization_config", None)
        method = getattr(quant, "quant_method", None)
        if quant is not None and str(getattr(method, "value", method)) != "gguf":
            raise SourceError(f"model is quantized with {method!r}; only de-quantized GGUF weights can be saved")
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    pickles = [p.name for p in out_dir.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    if pickles:  # never expected; a guard so a library change cannot slip pickles into a volume
        raise SourceError(f"refusing to publish pickle files: {', '.join(pickles)}")


def apply_fallback_template(tokenizer: PreTrainedTokenizerBase, fallback: str | None, where: str) -> str:
    """Give a template-less tokenizer the configured template; returns how the template was chosen."""
    from private_finetuning.data.chat_templates import resolve_template

    if tokenizer.chat_template:
        return "from source"
    if not fallback:
        raise SourceError(f"the tokenizer has no chat template and {where} is not set; set it to a built-in "
                          "name (gemma, chatml) or a Jinja template")
    builtin = resolve_template(fallback)
    tokenizer.chat_template = builtin.template
    return f"builtin:{fallback}" if builtin.end_of_turn else "inline from config"


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase, fallback: str | None) -> list[int]:
    """Token ids that end an assistant turn: the eos token plus the template's end-of-turn token."""
    from private_finetuning.data.chat_templates import resolve_template

    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if fallback:
        marker = resolve_template(fallback).end_of_turn
        if marker:
            token_id = tokenizer.convert_tokens_to_ids(marker)
            if token_id is not None and token_id != tokenizer.unk_token_id and token_id not in ids:
                ids.append(token_id)
    return ids
