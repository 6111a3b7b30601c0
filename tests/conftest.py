"""Shared fixtures: no network, offline Hugging Face, and small models built in seconds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from helpers import NETGUARD
from hosts import HOST_KINDS, PrecisionGuard, simulate

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# Subprocesses (stages started by the local runner) load the guard through sitecustomize.py.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETGUARD), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(NETGUARD))
import netguard

netguard.install()


@pytest.fixture(autouse=True)
def precision_guard(monkeypatch: pytest.MonkeyPatch) -> PrecisionGuard:
    """Every test fails if this package opened an OpenVINO pipeline or compile, or a torch autocast, without
    saying its precision (OpenVINO and torch would pick one per host)."""
    guard = PrecisionGuard().install(monkeypatch)
    yield guard
    implicit = guard.implicit()
    assert not implicit, "precision left to the host: " + "; ".join(
        f"{c.what} from {c.caller} asked {c.asked}" for c in implicit)


@pytest.fixture(params=list(HOST_KINDS))
def host_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Each of the three kinds of x86 host in turn (no AVX-512; AVX512-BF16 without AMX; AMX), simulated."""
    return simulate(monkeypatch, tmp_path, request.param)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level tokenizer with a ChatML template, built without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>", "system", "user", "assistant"]
    words += [f"w{i}" for i in range(200)] + list("abcdefghijklmnopqrstuvwxyz0123456789.,?!:")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>", pad_token="<pad>")
    from private_finetuning.data.chat_templates import BUILTIN

    fast.chat_template = BUILTIN["chatml"].template
    out = tmp_path_factory.mktemp("tiny-tokenizer")
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """A randomly initialised 2-layer Llama in a Hugging Face folder (safetensors), with its tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    out = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


# The default evaluation gates guard real training runs; the tiny random models of these tests learn
# nothing, so tests that are not about the gates turn them off.
