"""The base model as an OpenVINO IR: converted once, checked, then served with adapters fused in.

optimum-intel writes the IR OpenVINO GenAI expects (a stateful KV cache, which its continuous
batching turns into paged attention) and the tokenizer IRs its pipeline opens. It pins transformers
below what this package needs, so it runs in a small tool environment of its own, layered over this
one (torch and the rest are shared; only optimum-intel, optimum and their transformers and
tokenizers are its own): ``<prefix>/tools/openvino-export`` beside this interpreter, or the python
named by ``$PFT_OPENVINO_EXPORT_PYTHON``. ``scripts/make-openvino-export-env.sh`` builds it, for
``make`` and for the stage's image alike.

A converted IR is published only if greedy decoding with it gives the same tokens as the
transformers model for a fixed, non-private prompt (:func:`check_against`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from private_finetuning.errors import EXIT_BAD_INPUT, ConfigError, PipelineError

if TYPE_CHECKING:
    from openvino_genai import ContinuousBatchingPipeline
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

TOOL_PYTHON_VARIABLE = "PFT_OPENVINO_EXPORT_PYTHON"
MODEL_XML = "openvino_model.xml"
# What the conversion check asks, fixed and public: never a dataset row.
CHECK_PROMPT = "The three primary colours are"
CHECK_TOKENS = 16
CHECK_KV_BLOCKS = 16  # the check's KV cache: a short prompt and 16 tokens, not the server's gigabyte
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


class ConversionError(PipelineError):
    """The IR could not be written, or it does not answer as the model it was converted from.

    Retrying cannot change either (the same model converts the same way): the Job fails at once.
    """

    exit_code = EXIT_BAD_INPUT


def tool_python() -> Path:
    """The interpreter of the optimum-intel tool environment."""
    named = os.environ.get(TOOL_PYTHON_VARIABLE)
    path = Path(named) if named else Path(sys.prefix) / "tools" / "openvino-export" / "bin" / "python"
    if not path.is_file():
        how = f"${TOOL_PYTHON_VARIABLE} names {path}" if named else f"no {path}"
        raise ConfigError(f"the OpenVINO export environment is missing ({how}); build it with "
                          f"scripts/make-openvino-export-env.sh {sys.executable} {path.parent.parent}")
    return path


def convert(model_dir: Path, tokenizer_dir: Path, out_dir: Path, scratch: Path, timeout_s: float = 1800) -> None:
    """Write the fp32 IR of ``model_dir`` (safetensors) with ``tokenizer_dir``'s tokenizer into ``out_dir``.

    fp32, because OpenVINO GenAI fuses an adapter only into uncompressed weights.
    """
    source = scratch / "source"
    source.mkdir()
    for folder, names in ((model_dir, MODEL_FILES), (tokenizer_dir, TOKENIZER_FILES)):
        for name in names:
            if (folder / name).is_file():
                (source / name).symlink_to((folder / name).resolve())
    command = [str(tool_python()), "-m", "optimum.commands.optimum_cli", "export", "openvino", "--model",
               str(source), "--task", "text-generation-with-past", "--weight-format", "fp32", str(out_dir)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    start = time.monotonic()
    log.info("converting to OpenVINO IR with optimum-intel (about 30 s for 135M parameters on 2 cores)")
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"the OpenVINO conversion took longer than {timeout_s:.0f}s and was stopped") from None
    if done.returncode != 0 or not (out_dir / MODEL_XML).is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ConversionError(f"optimum-intel could not convert the model (exit {done.returncode}):\n{tail}")
    log.info("converted in %.0fs", time.monotonic() - start)


def pipeline(ir_dir: Path, settings: Any, adapters: Any = None, kv_blocks: int | None = None) -> Any:
    """An OpenVINO GenAI continuous-batching pipeline on ``ir_dir``, configured by ``serving.openvino``.

    ``kv_blocks`` sizes the KV cache in blocks instead of ``kv_cache_gb`` (a check needs a few only).
    """
    import openvino_genai

    scheduler = openvino_genai.SchedulerConfig()
    if kv_blocks:
        scheduler.cache_size, scheduler.num_kv_blocks = 0, kv_blocks
    else:
        scheduler.cache_size = settings.kv_cache_gb
    scheduler.max_num_batched_tokens = settings.max_num_batched_tokens
    scheduler.enable_prefix_caching = settings.prefix_caching
    scheduler.dynamic_split_fuse = True
    properties: dict[str, Any] = {}
    if settings.threads:
        properties["INFERENCE_NUM_THREADS"] = settings.threads
    if adapters is not None:
        properties["adapters"] = adapters
    return openvino_genai.ContinuousBatchingPipeline(str(ir_dir), scheduler, "CPU", properties)


def add_request(pipe: ContinuousBatchingPipeline, request_id: int, prompt_ids: list[int], max_new_tokens: int,
                stop_ids: set[int], temperature: float = 0.0, top_p: float = 1.0) -> Any:
    """Queue one prompt (token ids) on a pipeline; its handle. Temperature 0 is greedy decoding."""
    import numpy as np
    import openvino
    import openvino_genai

    config = openvino_genai.GenerationConfig()
    config.max_new_tokens, config.stop_token_ids, config.do_sample = max_new_tokens, stop_ids, temperature > 0
    if config.do_sample:
        config.temperature, config.top_p = temperature, top_p
    return pipe.add_request(request_id, openvino.Tensor(np.array([prompt_ids], dtype=np.int64)), config)


def greedy(pipe: ContinuousBatchingPipeline, prompt_ids: list[int], max_new_tokens: int,
           stop_ids: set[int]) -> list[int]:
    """Greedy tokens from a pipeline for one prompt, through the same add_request/step path serving uses."""
    handle = add_request(pipe, 0, prompt_ids, max_new_tokens, stop_ids)
    tokens: list[int] = []
    while pipe.has_non_finished_requests():
        pipe.step()
        if handle.can_read():
            for output in handle.read().values():
                tokens.extend(int(t) for t in output.generated_ids)
    return [t for t in tokens if t not in stop_ids]


def check_against(ir_dir: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  settings: Any) -> dict[str, Any]:
    """Greedy tokens of the IR and of the transformers ``model`` for :data:`CHECK_PROMPT`; must be equal."""
    import torch

    prompt = tokenizer(CHECK_PROMPT, add_special_tokens=False)["input_ids"]
    stop = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=CHECK_TOKENS,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             eos_token_id=list(stop) or None, pad_token_id=tokenizer.eos_token_id)
    expected = [t for t in out[0, len(prompt):].tolist() if t not in stop]
    got = greedy(pipeline(ir_dir, settings, kv_blocks=CHECK_KV_BLOCKS), prompt, CHECK_TOKENS, stop)
    if got != expected:
        first = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                     min(len(got), len(expected)))
        raise ConversionError(f"the OpenVINO IR does not decode as the model it was converted from: greedy tokens "
                              f"differ from position {first} of {len(expected)} on the check prompt; nothing published")
    return {"check_prompt": CHECK_PROMPT, "check_tokens": len(expected), "check": "greedy tokens equal"}
