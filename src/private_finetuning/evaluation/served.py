"""The served model, judged: the fine-tuned model as the CPU inference server will run it.

The server does not run transformers on a CPU: it runs an OpenVINO IR of the base with the adapter
merged in, its weights compressed to int8, at one inference precision. Those change answers (on an
AMX host, bf16 changed 6 of 120 answers' correctness), so the evaluation builds that very IR
(:func:`build`), answers the questions with it through the server's own continuous-batching path
(:func:`answer`), and the gates judge those answers. The stage publishes the IR only if it is
promoted, and the server serves nothing else under that promotion.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from private_finetuning.data.chat import encode_prompt, with_system
from private_finetuning.models import openvino_ir
from private_finetuning.models.loading import load_published_model, save_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from private_finetuning.artifacts.store import Artifact
    from private_finetuning.config import PipelineConfig
    from private_finetuning.data.record import Record

log = logging.getLogger(__name__)
ENGINE = "openvino"


@dataclass(frozen=True)
class ServedModel:
    """An IR built for judging: where it is (scratch until published), its weights and precision."""

    path: Path
    weights: str  # int8 or fp32
    precision: str  # f32 or bf16: the inference precision, explicit on every host
    kv_cache_precision: str  # u8 or f32

    def describe(self) -> str:
        return f"OpenVINO IR, {self.weights} weights, {self.precision}, KV cache {self.kv_cache_precision}"


def judges_served_model(config: PipelineConfig, cuda: bool) -> bool:
    """Whether the server will run the OpenVINO engine (``serving.engine`` openvino, or auto on a CPU)."""
    return config.serving.engine == "openvino" or (config.serving.engine == "auto" and not cuda)


class Builder:
    """Builds the served IR of one adapter in a scratch folder, once per weight format."""

    def __init__(self, config: PipelineConfig, base: Artifact, tokenizer: Artifact, adapter: Artifact, scratch: Path):
        self.config, self.base, self.tokenizer, self.adapter, self.scratch = config, base, tokenizer, adapter, scratch
        # Resolved before anything is built: bf16 on a host without it fails at once, not after minutes.
        self.precision = openvino_ir.host_precision(config.serving.openvino.precision)

    def build(self, weights: str) -> ServedModel:
        """The adapter merged into the base, converted to an IR, and (int8) its weights compressed."""
        merged, fp32 = self.scratch / "merged", self.scratch / "ir-fp32"
        start = time.monotonic()
        if not merged.exists():
            log.info("merging the adapter into the base model for the served model")
            save_model(load_published_model(self.base.path, self.adapter.path), merged)
        if not fp32.exists():
            work = self.scratch / "convert"
            work.mkdir()
            openvino_ir.convert(merged, self.tokenizer.path, fp32, work)
        out = fp32
        if weights == "int8":
            out = self.scratch / "ir-int8"
            openvino_ir.compress_int8(fp32, out)
        log.info("built the served model (%s weights) in %.0fs", weights, time.monotonic() - start)
        return ServedModel(out, weights, self.precision, self.config.serving.openvino.kv_cache_precision)


def open_pipeline(served: ServedModel, config: PipelineConfig) -> Any:
    """The served model in OpenVINO GenAI's continuous-batching pipeline, configured as the server's."""
    return openvino_ir.pipeline(served.path, config.serving.openvino, precision=served.precision,
                                kv_cache_precision=served.kv_cache_precision)


def answer(pipe: Any, config: PipelineConfig, tokenizer: PreTrainedTokenizerBase, eos: list[int],
           questions: list[Record]) -> tuple[list[str], int, float]:
    """Greedy answers of the served model, continuously batched as the server batches them; also the tokens
    generated and the seconds it took. Same prompt ids, stop ids, cut and decoding as the server."""
    prompts = [encode_prompt(tokenizer, with_system(q.messages[:-1], config.prompting.system_prompt))
               for q in questions]
    start = time.perf_counter()
    tokens = openvino_ir.greedy_batch(pipe, prompts, config.evaluation.max_new_tokens, set(eos),
                                      running=config.serving.max_batch_size)
    seconds = time.perf_counter() - start
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens], sum(map(len, tokens)), seconds
