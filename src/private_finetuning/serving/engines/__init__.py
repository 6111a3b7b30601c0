"""The inference engines, one module each, and the choice between them (``serving.engine``)."""

from __future__ import annotations

from pathlib import Path

from private_finetuning.config import PipelineConfig
from private_finetuning.errors import ConfigError
from private_finetuning.serving.engines.base import Engine


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
    paths = {"base_model": base_model, "base_tokenizer": base_tokenizer, "fine_tuned": fine_tuned}
    if name == "vllm":
        from private_finetuning.serving.engines.vllm import VLLMEngine

        return VLLMEngine(config, **paths, url=config.serving.vllm_url)
    if name == "openvino":
        from private_finetuning.serving.engines.openvino import OpenVINOEngine

        assert base_model_openvino is not None
        return OpenVINOEngine(config, **paths, base_model_openvino=base_model_openvino)
    from private_finetuning.serving.engines.transformers import TransformersEngine

    return TransformersEngine(config, **paths)
