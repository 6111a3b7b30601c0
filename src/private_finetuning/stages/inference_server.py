"""model-inference-server: serves the fine-tuned model over HTTP with gunicorn.

One gunicorn worker process holds the model (the adapter merged or fused in) and answers requests
on its threads; the engine (``serving/engines/``: OpenVINO continuous batching on a CPU, transformers
on CUDA) batches concurrent requests. The server is live at once and ready
(``/ready`` 200) once the base model, base tokenizer and a published adapter are loaded; until then
it answers 503 with a JSON body. More workers mean more copies of the model: scale with replicas.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from private_finetuning.serving.engines import ENGINES
from private_finetuning.stages.common import StageContext, run_stage

STAGE = "model-inference-server"
# Threads beyond what generation can hold (the batch and the queue): /health, /ready and /metrics
# are answered by these even when every generation slot is taken.
PROBE_THREADS = 8


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", required=True, type=Path, help="the base-model volume")
    parser.add_argument("--base-tokenizer", required=True, type=Path, help="the base-tokenizer volume")
    parser.add_argument("--fine-tuned", required=True, type=Path, help="the fine-tuned-model volume")
    parser.add_argument("--base-model-openvino", type=Path, default=None,
                        help="the base-model-openvino volume (the OpenVINO engine's IR; serving.engine)")
    parser.add_argument("--engine", choices=["auto", *ENGINES], default=None,
                        help="overrides serving.engine (the gpu overlay: vllm): " + "; ".join(
                            f"{name}: {choice.help}" for name, choice in ENGINES.items()))
    parser.add_argument("--bind", default="0.0.0.0:5000", help="address:port to listen on")
    parser.add_argument("--threads", type=int, default=None,
                        help="request threads of the worker (default: serving.queue_size + serving.max_batch_size + "
                             f"{PROBE_THREADS}, so a full queue is answered 503 while probes always find a thread)")


def build_app(ctx: StageContext) -> Any:
    from private_finetuning.serving.app import create_app
    from private_finetuning.serving.engines import EngineVolumes, make_engine
    from private_finetuning.serving.engines.process import EngineProcess

    a = ctx.args
    if a.engine:
        ctx.config.serving.engine = a.engine
    volumes = EngineVolumes(a.base_model, a.base_tokenizer, a.fine_tuned, a.base_model_openvino)
    if ctx.config.serving.engine_process:
        ctx.log.info("generation runs in a process of its own (serving.engine_process)")
        return create_app(EngineProcess(ctx.config, volumes).start(), ctx.config)
    engine = make_engine(ctx.config, base_model=a.base_model, base_tokenizer=a.base_tokenizer,
                         fine_tuned=a.fine_tuned, base_model_openvino=a.base_model_openvino)
    ctx.log.info("inference engine: %s, on a thread of the HTTP worker", engine.name)
    return create_app(engine.start(), ctx.config)


def _run(ctx: StageContext) -> None:
    from gunicorn.app.base import BaseApplication

    serving = ctx.config.serving
    threads = ctx.args.threads or serving.queue_size + serving.max_batch_size + PROBE_THREADS

    class Server(BaseApplication):
        def load_config(self) -> None:
            settings = {"bind": ctx.args.bind, "workers": 1, "worker_class": "gthread", "threads": threads,
                        "timeout": 120, "graceful_timeout": 30, "keepalive": 5, "accesslog": None,
                        "errorlog": "-", "loglevel": "info",
                        # gunicorn's control socket lives under $HOME, which a read-only pod cannot write.
                        "control_socket_disable": True}
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Any:  # runs in the worker process, so the model is loaded there, once
            return build_app(ctx)

    ctx.log.info("serving on %s with gunicorn (1 worker, %d threads)", ctx.args.bind, threads)
    Server().run()


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, __doc__ or STAGE, _run, _arguments, argv)


if __name__ == "__main__":
    raise SystemExit(main())
