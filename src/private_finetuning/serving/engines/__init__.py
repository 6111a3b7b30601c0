"""The inference engines, one module each, and the choice between them (``serving.engine``).

:data:`ENGINES` is the one list of them: ``serving.engine``'s choices (besides ``auto``), the inference
server's ``--engine`` choices and their help come from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from private_finetuning.config import PipelineConfig
from private_finetuning.errors import ConfigError

if TYPE_CHECKING:
    from private_finetuning.serving.engines.base import Engine


@dataclass(frozen=True)
class EngineVolumes:
    base_model: Path
    base_tokenizer: Path
    fine_tuned: Path
    base_model_openvino: Path | None = None


def _openvino(config: PipelineConfig, v: EngineVolumes) -> Engine:
    from private_finetuning.serving.engines.openvino import OpenVINOEngine

    if v.base_model_openvino is None:
        raise ConfigError("serving.engine: openvino needs the base-model-openvino volume (--base-model-openvino)")
    return OpenVINOEngine(config, base_model=v.base_model, base_tokenizer=v.base_tokenizer, fine_tuned=v.fine_tuned,
                          base_model_openvino=v.base_model_openvino)


def _transformers(config: PipelineConfig, v: EngineVolumes) -> Engine:
    from private_finetuning.serving.engines.transformers import TransformersEngine

    return TransformersEngine(config, base_model=v.base_model, base_tokenizer=v.base_tokenizer, fine_tuned=v.fine_tuned)


def _vllm(config: PipelineConfig, v: EngineVolumes) -> Engine:
    from private_finetuning.serving.engines.vllm import VLLMEngine

    return VLLMEngine(config, base_model=v.base_model, base_tokenizer=v.base_tokenizer, fine_tuned=v.fine_tuned,
                      url=config.serving.vllm_url)


@dataclass(frozen=True)
class EngineChoice:
    help: str
    make: Callable[[PipelineConfig, EngineVolumes], Engine]


ENGINES: dict[str, EngineChoice] = {
    "openvino": EngineChoice("OpenVINO GenAI continuous batching on the CPU, the adapter fused into the base IR "
                             "(needs the base-model-openvino volume)", _openvino),
    "transformers": EngineChoice("transformers generate(), batched; the CUDA default", _transformers),
    "vllm": EngineChoice("a vLLM sidecar on a GPU, adapters loaded at run time (the gpu overlay)", _vllm),
}


def choose(config: PipelineConfig, *, has_ir_volume: bool, cuda: bool) -> str:
    """openvino on a CPU when the server has the IR volume; transformers on CUDA; vllm only where asked."""
    wanted = config.serving.engine
    if wanted == "auto":
        return "openvino" if has_ir_volume and not cuda else "transformers"
    if wanted == "openvino" and not has_ir_volume:
        raise ConfigError("serving.engine: openvino needs the base-model-openvino volume (--base-model-openvino)")
    return wanted


def make_engine(config: PipelineConfig, *, base_model: Path, base_tokenizer: Path, fine_tuned: Path,
                base_model_openvino: Path | None = None) -> Engine:
    import torch

    name = choose(config, has_ir_volume=base_model_openvino is not None, cuda=torch.cuda.is_available())
    return ENGINES[name].make(config, EngineVolumes(base_model, base_tokenizer, fine_tuned, base_model_openvino))
