"""The base model as an OpenVINO IR: converted once, checked, then served with adapters fused in.

optimum-intel writes the IR OpenVINO GenAI expects (a stateful KV cache, which its continuous
batching turns into paged attention) and the tokenizer IRs its pipeline opens. It pins transformers
below what this package needs, so it runs in a small tool environment of its own, layered over this
one (torch and the rest are shared; only optimum-intel, optimum and their transformers and
tokenizers are its own): ``<prefix>/tools/openvino-export`` beside this interpreter, or the python
named by ``$PFT_OPENVINO_EXPORT_PYTHON``. ``scripts/make-openvino-export-env.sh`` builds it, for
``make`` and for the stage's image alike.

A converted IR is published only if greedy decoding with it gives the same tokens as the
transformers model for a fixed, non-private prompt (:func:`check_against`), both at f32: the check
is of the conversion, not of bf16 rounding. Every pipeline is opened with an explicit inference and
KV-cache precision (:func:`pipeline`): left to itself OpenVINO runs bf16 on AVX512-BF16 and AMX hosts
and keeps the KV cache in u8.

The served model is another IR: the promoted adapter merged into the base, its weights compressed to
int8 by nncf (:func:`compress_int8`). nncf lives in a folder of the tool environment that only the
compression sees (``<tool env>/nncf``): on optimum-intel's own path it would make optimum import its
quantization code and, through it, the package's ``datasets``, which needs a newer huggingface_hub.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from private_finetuning.errors import EXIT_BAD_INPUT, ConfigError, PipelineError
from private_finetuning.models import host

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

    fp32, because OpenVINO GenAI fuses an adapter only into uncompressed weights (and :func:`compress_int8`
    compresses from it).
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


# Run by the tool environment's interpreter with nncf on its path: weights to int8, asymmetric, per channel.
_COMPRESS = ("import sys, nncf, openvino as ov; "
             "m = nncf.compress_weights(ov.Core().read_model(sys.argv[1]), mode=nncf.CompressWeightsMode.INT8_ASYM); "
             "ov.save_model(m, sys.argv[2], compress_to_fp16=False)")


def nncf_path() -> Path:
    """The folder holding nncf, beside the tool environment's interpreter (scripts/make-openvino-export-env.sh)."""
    return tool_python().parent.parent / "nncf"


def compress_int8(ir_dir: Path, out_dir: Path, timeout_s: float = 1800) -> None:
    """Write ``ir_dir`` (an fp32 IR with its tokenizer IRs) into ``out_dir`` with int8 weights (nncf INT8_ASYM).

    Matrix multiplications still run at the inference precision; only the weights are stored in 8 bits.
    """
    if not (nncf_path() / "nncf").is_dir():
        raise ConfigError(f"nncf is missing from the OpenVINO export environment (no {nncf_path() / 'nncf'}); "
                          f"rebuild it with scripts/make-openvino-export-env.sh {sys.executable} "
                          f"{tool_python().parent.parent}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in ir_dir.iterdir():
        if path.is_file() and not path.name.startswith(MODEL_XML.removesuffix(".xml") + "."):
            shutil.copy2(path, out_dir / path.name)
    env = {**os.environ, "PYTHONPATH": str(nncf_path()), "PYTHONWARNINGS": "ignore", "NO_COLOR": "1"}
    start = time.monotonic()
    try:
        done = subprocess.run([str(tool_python()), "-c", _COMPRESS, str(ir_dir / MODEL_XML), str(out_dir / MODEL_XML)],
                              env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"compressing the IR's weights took longer than {timeout_s:.0f}s and was stopped") \
            from None
    if done.returncode != 0 or not (out_dir / MODEL_XML).is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ConversionError(f"nncf could not compress the IR's weights (exit {done.returncode}):\n{tail}")
    log.info("weights compressed to int8 in %.0fs", time.monotonic() - start)


def host_precision(wanted: str) -> str:
    """The inference precision ``serving.openvino.precision`` means on this host: ``f32`` or ``bf16``.

    auto is f32 on every host: with int8 weights it was faster than bf16 even on an AMX host (issue 21: 89
    against 57 tokens/s alone, 489 against 412 at 16), and a host without native bf16 has nothing else. bf16
    is refused where the CPU lacks it, because OpenVINO would quietly run f32 and record the wrong precision.
    """
    if wanted == "auto":
        return "f32"
    if wanted == "bf16" and not host.openvino_has_bf16():
        raise ConfigError(f"serving.openvino.precision: bf16, but this host's CPU ({host.kind()}) has no native "
                          "bf16 (OpenVINO lists no BF16 capability); use auto or f32")
    return wanted


def pipeline(ir_dir: Path, settings: Any, *, precision: str, kv_cache_precision: str, adapters: Any = None,
             kv_blocks: int | None = None) -> Any:
    """An OpenVINO GenAI continuous-batching pipeline on ``ir_dir``, configured by ``serving.openvino``.

    ``precision`` (f32, bf16) is the inference precision and ``kv_cache_precision`` (u8, f32) the KV cache's,
    both required: OpenVINO's own choice depends on the host. ``kv_blocks`` sizes the KV cache in blocks
    instead of ``kv_cache_gb`` (a check needs a few only).
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
    properties["INFERENCE_PRECISION_HINT"] = precision
    properties["KV_CACHE_PRECISION"] = kv_cache_precision
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


def answer_tokens(generated: list[int], stop_ids: set[int], max_new_tokens: int) -> list[int]:
    """A request's answer: its generated tokens without the stop tokens, at most ``max_new_tokens``.

    The server and the evaluation both cut answers here, so a judged answer is the served answer."""
    return [t for t in generated if t not in stop_ids][:max_new_tokens]


def greedy(pipe: ContinuousBatchingPipeline, prompt_ids: list[int], max_new_tokens: int,
           stop_ids: set[int]) -> list[int]:
    """Greedy tokens from a pipeline for one prompt, through the same add_request/step path serving uses."""
    return greedy_batch(pipe, [prompt_ids], max_new_tokens, stop_ids, running=1)[0]


def greedy_batch(pipe: ContinuousBatchingPipeline, prompts: list[list[int]], max_new_tokens: int,
                 stop_ids: set[int], running: int) -> list[list[int]]:
    """Greedy answers to many prompts, ``running`` at once, continuously batched as the server batches them."""
    import openvino_genai

    queued = list(enumerate(prompts))[::-1]
    live: dict[int, Any] = {}
    tokens: list[list[int]] = [[] for _ in prompts]
    while queued or live:
        while queued and len(live) < running:
            index, prompt = queued.pop()
            live[index] = add_request(pipe, index, prompt, max_new_tokens, stop_ids)
        pipe.step()
        for index, handle in list(live.items()):
            if handle.can_read():
                for output in handle.read().values():
                    tokens[index].extend(int(t) for t in output.generated_ids)
            if handle.get_status() != openvino_genai.GenerationStatus.RUNNING:
                del live[index]
    return [answer_tokens(t, stop_ids, max_new_tokens) for t in tokens]


def check_against(ir_dir: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  settings: Any) -> dict[str, Any]:
    """Greedy tokens of the IR and of the transformers fp32 ``model`` for :data:`CHECK_PROMPT`: equal at f32
    (inference and KV cache), or :class:`ConversionError`. On a host with native bf16 the IR's bf16 tokens are
    compared too and their agreement recorded, never required: bf16 rounding is not a conversion fault."""
    import torch

    prompt = tokenizer(CHECK_PROMPT, add_special_tokens=False)["input_ids"]
    stop = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=CHECK_TOKENS,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             eos_token_id=list(stop) or None, pad_token_id=tokenizer.eos_token_id)
    expected = [t for t in out[0, len(prompt):].tolist() if t not in stop]

    def tokens(precision: str) -> list[int]:
        pipe = pipeline(ir_dir, settings, precision=precision, kv_cache_precision=precision, kv_blocks=CHECK_KV_BLOCKS)
        return greedy(pipe, prompt, CHECK_TOKENS, stop)

    got = tokens("f32")
    if got != expected:
        raise ConversionError(f"the OpenVINO IR does not decode as the model it was converted from: greedy tokens "
                              f"differ from position {_first_difference(got, expected)} of {len(expected)} on the "
                              "check prompt at f32; nothing published")
    result: dict[str, Any] = {"check_prompt": CHECK_PROMPT, "check_tokens": len(expected), "check_precision": "f32",
                              "check": "greedy tokens equal at f32", "host_kind": host.kind()}
    if host.openvino_has_bf16():
        bf16 = tokens("bf16")
        agree = _first_difference(bf16, expected)
        result["bf16_agreement"] = f"{agree} of {len(expected)} greedy tokens equal to fp32 before the first difference"
        log.info("the IR at bf16 (native on this %s host) agrees with fp32 for %d of %d greedy tokens (measured, "
                 "not required)", host.kind(), agree, len(expected))
    return result


def _first_difference(got: list[int], expected: list[int]) -> int:
    """Where two token lists first differ (the shorter one's length if one is a prefix of the other)."""
    differing = (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b)
    return next(differing, min(len(got), len(expected)))
