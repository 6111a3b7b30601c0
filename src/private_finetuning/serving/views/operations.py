"""For operators and probes: /health, /ready, /metrics, /openapi.json. None of them touches the engine's
queue, so they answer while every generation slot is busy."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from private_finetuning.serving.openapi import openapi_spec
from private_finetuning.serving.requests import ApiError
from private_finetuning.serving.state import served, state

operations = Blueprint("operations", __name__)


@operations.get("/health")
def health() -> Response:
    """Liveness: fails while nothing can answer requests (a dead worker thread; an engine process being restarted)."""
    engine = state().engine
    if not engine.worker_alive:
        raise ApiError(503, engine.down_reason)
    return jsonify(status="ok", worker="alive")


@operations.get("/ready")
def ready() -> Response:
    engine = state().engine
    if not engine.worker_alive:
        raise ApiError(503, engine.down_reason, headers={"Retry-After": "5"})
    if not engine.ready:
        raise ApiError(503, f"model not loaded yet: {engine.status}", headers={"Retry-After": "5"})
    return jsonify(status="ready", worker="alive", **served(engine), **engine.process_info())


@operations.get("/metrics")
def prometheus() -> Response:
    return Response(state().metrics.render(), mimetype="text/plain; version=0.0.4")


@operations.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_spec(state().bodies))
