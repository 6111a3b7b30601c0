"""Shared fixtures: no network, offline Hugging Face, and small models built in seconds."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NETGUARD = Path(__file__).parent / "netguard"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# Subprocesses (stages started by the local runner) load the guard through sitecustomize.py.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETGUARD), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(NETGUARD))
import netguard  # noqa: E402

netguard.install()


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
    from private_finetuning.chat_templates import BUILTIN

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
NO_GATES = {"min_fact_accuracy_gain": None, "min_fact_accuracy": None, "max_forgetting_kl": None,
            "max_general_perplexity_increase": None}


def write_config(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def publish_inputs(root: Path, model_dir: Path, dataset: dict | None = None) -> dict[str, Path]:
    """Publish dataset, base model and tokenizer volumes with the real relocation stages."""
    from private_finetuning.stages import dataset_relocation, model_relocation, tokenizer_relocation

    cfg = write_config(root / "inputs.yaml", {
        "model": {"source": {"type": "hf-folder", "path": str(model_dir)}},
        "dataset": dataset or {"source": {"size": "tiny"}}})
    volumes = {name: root / name for name in ("datasets", "base-model", "base-tokenizer", "fine-tuned-model")}
    for stage, volume in ((dataset_relocation, "datasets"), (model_relocation, "base-model"),
                          (tokenizer_relocation, "base-tokenizer")):
        assert stage.main(["--config", str(cfg), "--output", str(volumes[volume])]) == 0
    return volumes


def train_argv(config: Path, volumes: dict[str, Path]) -> list[str]:
    return ["--config", str(config), "--datasets", str(volumes["datasets"]), "--base-model",
            str(volumes["base-model"]), "--base-tokenizer", str(volumes["base-tokenizer"]),
            "--output", str(volumes["fine-tuned-model"]), "--status-port", "0"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
