"""Helpers shared by the model, tokenizer and reference-model relocation stages."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from private_finetuning.models.loading import (
    apply_fallback_template,
    end_of_turn_ids,
    load_model,
    load_tokenizer,
    save_model,
)
from private_finetuning.models.sources import ResolvedSource


def display_name(source: ResolvedSource) -> str:
    return source.description.get("name") or source.path.name.removesuffix(".gguf")


def write_model(log: logging.Logger, source: ResolvedSource, dtype: str, folder: Path) -> dict[str, Any]:
    """Load (de-quantizing a GGUF) and write safetensors + config into ``folder``; return metadata."""
    log.info("loading model from %s (%s) as %s; a GGUF is de-quantized, which takes a while", source.path,
             source.format, dtype)
    start = time.monotonic()
    model = load_model(source, dtype)
    log.info("loaded %s with %.1fM parameters in %.0fs; writing safetensors", type(model).__name__,
             model.num_parameters() / 1e6, time.monotonic() - start)
    save_model(model, folder)
    return {
        "architecture": type(model).__name__,
        "model_type": model.config.model_type,
        "num_parameters": model.num_parameters(),
        "vocab_size": model.config.vocab_size,
        "dtype": dtype,
    }


def write_tokenizer(log: logging.Logger, source: ResolvedSource, fallback_template: str | None,
                    template_key: str, folder: Path) -> tuple[Any, dict[str, Any]]:
    """Load the tokenizer, give it a chat template if it lacks one, write it; return it and metadata."""
    log.info("loading tokenizer from %s (%s)", source.path, source.format)
    tokenizer = load_tokenizer(source)
    template_origin = apply_fallback_template(tokenizer, fallback_template, template_key)
    tokenizer.save_pretrained(folder)
    if source.gguf_file:
        _record_gguf_tokenizer_keys(source.path, folder)
    eot = end_of_turn_ids(tokenizer, None if template_origin == "from source" else fallback_template)
    return tokenizer, {
        "tokenizer_class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "chat_template": template_origin,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "end_of_turn_ids": eot,
    }


def _record_gguf_tokenizer_keys(gguf_path: Path, folder: Path) -> None:
    """Keep the source GGUF's scalar ``tokenizer.ggml.*`` keys (llama.cpp's pre-tokenizer name above all),
    which transformers drops on load, so that a GGUF export can write them back (``gguf_tokenizer.json``)."""
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    keys = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and len(field.types) == 1:  # scalars and strings, not the arrays
            value = field.contents()
            keys[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
    (folder / "gguf_tokenizer.json").write_text(json.dumps(keys, indent=2, sort_keys=True) + "\n", encoding="utf-8")
