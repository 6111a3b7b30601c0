"""model-inference-vllm-server: vLLM's OpenAI server on the base model, beside the inference server (GPU).

The gpu overlay runs it as a second container of the model-inference pod; the inference server
(``serving.engine: vllm``) stays the pod's front: ``/prompt``, the OpenAI routes, probes, the system
prompt, and loading only the promoted adapter into vLLM at run time. This entrypoint waits for the
base model and tokenizer to be published (vLLM would crash-loop on a missing folder), then becomes
``vllm serve`` on loopback with runtime LoRA on. Its image holds vLLM and this package (no torch of
ours: vLLM pins its own), and imports nothing heavy itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from private_finetuning.artifacts.store import BASE_MODEL, BASE_TOKENIZER
from private_finetuning.errors import ConfigError
from private_finetuning.stages.common import StageContext, run_stage, wait_for_output

STAGE = "model-inference-vllm-server"


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", required=True, type=Path, help="the base-model volume")
    parser.add_argument("--base-tokenizer", required=True, type=Path, help="the base-tokenizer volume")
    parser.add_argument("--port", type=int, default=8000, help="vLLM's port, on loopback (the pod's front calls it)")
    parser.add_argument("--max-lora-rank", type=int, default=64, help="the largest LoRA rank vLLM accepts")
    parser.add_argument("--max-model-len", type=int, default=4096, help="the longest prompt + answer, in tokens")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)


def vllm_command(ctx: StageContext, base: Path, tokenizer: Path) -> list[str]:
    a = ctx.args
    return ["vllm", "serve", str(base), "--tokenizer", str(tokenizer), "--host", "127.0.0.1",
            "--port", str(a.port), "--served-model-name", "base", "--enable-lora",
            "--max-lora-rank", str(a.max_lora_rank), "--max-loras", "2",  # the served adapter and its successor
            "--max-model-len", str(a.max_model_len), "--gpu-memory-utilization", str(a.gpu_memory_utilization),
            "--max-num-seqs", str(ctx.config.serving.max_batch_size + ctx.config.serving.queue_size),
            "--no-enable-log-requests"]  # prompts and answers never go to the pod log


def _run(ctx: StageContext) -> None:
    base = wait_for_output(ctx.config, ctx.args.base_model, BASE_MODEL)
    tokenizer = wait_for_output(ctx.config, ctx.args.base_tokenizer, BASE_TOKENIZER)
    command = vllm_command(ctx, base.path, tokenizer.path)
    if shutil.which(command[0]) is None:
        raise ConfigError("vllm is not installed in this image (components/model-inference-vllm-server)")
    os.environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # /v1/load_lora_adapter, for the hot swap
    ctx.log.info("starting vLLM on %s (base %s) on 127.0.0.1:%d", base.manifest.name, base.manifest.digest[:12],
                 ctx.args.port)
    os.execvp(command[0], command)


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, __doc__ or STAGE, _run, _arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
