"""The inference server's HTTP API, as a Flask application factory.

``POST /prompt`` answers the original prototype's request as plain text (JSON when asked);
``/v1/chat/completions`` and ``/v1/models`` speak the OpenAI API (streaming as server-sent
events); ``/health``, ``/ready``, ``/metrics`` and ``/openapi.json`` are for operators (one blueprint
each, in ``views/``). Request bodies are validated by the pydantic models that also make the
OpenAPI document (``schemas.py``). Every error is a JSON body with a 4xx/5xx status, and nothing a
client sends is logged beyond its length.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from private_finetuning.config import PipelineConfig
from private_finetuning.serving import schemas
from private_finetuning.serving.engines.base import Engine
from private_finetuning.serving.engines.process import EngineProcess
from private_finetuning.serving.metrics import Metrics
from private_finetuning.serving.requests import ApiError, error_body
from private_finetuning.serving.retrieval import Retrieval
from private_finetuning.serving.state import KEY, ServerState, served, state
from private_finetuning.serving.views.openai import openai
from private_finetuning.serving.views.operations import operations
from private_finetuning.serving.views.prompt import prompt

log = logging.getLogger("model-inference-server")


def create_app(engine: Engine | EngineProcess, config: PipelineConfig) -> Flask:
    serving = config.serving
    app = Flask("model-inference-server")
    app.config["MAX_CONTENT_LENGTH"] = serving.max_body_bytes
    metrics = Metrics(queue_depth=engine.queue_depth, generated_tokens=lambda: engine.generated_tokens,
                      served=lambda: served(engine) if engine.loaded else None)
    retrieval = Retrieval(config.retrieval, metrics.registry) if serving.retrieval else None
    app.extensions[KEY] = ServerState(engine, serving, metrics, schemas.build(serving), retrieval)
    app.before_request(_start_timer)
    app.after_request(_record)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    for blueprint in (operations, prompt, openai):
        app.register_blueprint(blueprint)
    return app


def _start_timer() -> None:
    g.start = time.perf_counter()


def _record(response: Response) -> Response:
    endpoint = request.url_rule.rule if request.url_rule else "unmatched"
    state().metrics.observe(endpoint, response.status_code, time.perf_counter() - g.get("start", time.perf_counter()))
    log.info("%s %s -> %d (%d bytes in)", request.method, endpoint, response.status_code, request.content_length or 0)
    return response


def _json_error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> Response:
    response = jsonify(error_body(status, message, field))
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _api_error(exc: ApiError) -> Response:
    return _json_error(exc.status, exc.message, exc.field, exc.headers)


def _http_error(exc: HTTPException) -> Response:
    code = exc.code or 500
    message = f"request body over {state().serving.max_body_bytes} bytes" if code == 413 else exc.description
    return _json_error(code, message or exc.name)


def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error")
    return _json_error(500, "internal error")
