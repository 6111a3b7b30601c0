"""A small HTTP status endpoint for a running stage: ``/health`` and ``/progress`` as JSON.

``kubectl port-forward job/model-peft 8080`` then shows where training is without reading logs.
Served by werkzeug's threaded server in a daemon thread: two read-only routes, no request body.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any

from flask import Flask, jsonify


@dataclass
class StageStatus:
    """What the stage is doing; updated by the training loop, read by the endpoint."""

    stage: str
    phase: str = "starting"  # starting, waiting-for-inputs, loading, training, publishing, done, failed
    detail: str = ""
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    started_at: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def update(self, **values: Any) -> None:
        with self.lock:
            for key, value in values.items():
                setattr(self, key, value)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lock"}
        data["elapsed_s"] = round(time.time() - self.started_at, 1)
        data["percent"] = round(100.0 * self.step / self.total_steps, 1) if self.total_steps else 0.0
        return data


def create_app(status: StageStatus) -> Flask:
    app = Flask(status.stage)

    @app.get("/health")
    def health() -> Any:
        return jsonify(status="ok", stage=status.stage)

    @app.get("/progress")
    def progress() -> Any:
        return jsonify(status.snapshot())

    return app


class StatusServer:
    def __init__(self, status: StageStatus, host: str = "127.0.0.1", port: int = 8080):
        """Loopback unless told otherwise: the pod's manifest asks for every interface (``--status-host``)."""
        from werkzeug.serving import make_server

        self.server = make_server(host, port, create_app(status), threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StatusServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
