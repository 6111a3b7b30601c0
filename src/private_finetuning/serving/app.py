"""The inference server's HTTP API, as a Flask application factory.

``POST /prompt`` answers the original prototype's request as plain text (JSON when asked);
``/v1/chat/completions`` and ``/v1/models`` speak the OpenAI API (streaming as server-sent
events); ``/health``, ``/ready``, ``/metrics`` and ``/openapi.json`` are for operators. Every error
is a JSON body with a 4xx/5xx status, and nothing a client sends is logged beyond its length.
"""

from __future__ import annotations

import json
import logging
import queue
import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from private_finetuning.config import PipelineConfig
from private_finetuning.serving.engine import Engine, QueueFull, Request
from private_finetuning.serving.metrics import Metrics
from private_finetuning.serving.openapi import openapi_spec

log = logging.getLogger("model-inference-server")
ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}


def served(engine: Engine) -> dict[str, Any]:
    """Which adapter version is served, on which base, approved by which evaluation report."""
    loaded = engine.loaded
    assert loaded is not None
    return {"adapter": loaded.adapter_name, "adapter_digest": loaded.adapter_digest,
            "adapter_version": loaded.adapter_version, "base_model_digest": loaded.base_digest,
            "evaluation_report_digest": loaded.report_digest}


def _encodable(text: str, field: str) -> str:
    """JSON may carry a lone surrogate (\\ud800) that no tokenizer can encode: a client error, not a crash."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(422, f"{field} holds an unpaired surrogate ({text[exc.start]!r}), which is not text",
                       field) from None
    return text


def _error_body(status: int, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "status": status}
    if field:
        error["field"] = field
    return {"error": error}


def create_app(engine: Engine, config: PipelineConfig) -> Flask:
    serving = config.serving
    app = Flask("model-inference-server")
    app.config["MAX_CONTENT_LENGTH"] = serving.max_body_bytes
    metrics = Metrics(queue_depth=engine.queue.qsize, generated_tokens=lambda: engine.generated_tokens,
                      served=lambda: served(engine) if engine.loaded else None)

    @app.before_request
    def _start_timer() -> None:
        g.start = time.perf_counter()

    @app.after_request
    def _record(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.observe(endpoint, response.status_code, time.perf_counter() - g.get("start", time.perf_counter()))
        log.info("%s %s -> %d (%d bytes in)", request.method, endpoint, response.status_code,
                 request.content_length or 0)
        return response

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        response = jsonify(_error_body(exc.status, exc.message, exc.field))
        response.status_code = exc.status
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        message = {413: f"request body over {serving.max_body_bytes} bytes"}.get(exc.code or 500, exc.description)
        response = jsonify(_error_body(exc.code or 500, message or exc.name))
        response.status_code = exc.code or 500
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error")
        response = jsonify(_error_body(500, "internal error"))
        response.status_code = 500
        return response

    # --- operators ---------------------------------------------------------------------------------

    @app.get("/health")
    def health() -> Response:
        return jsonify(status="ok")

    @app.get("/ready")
    def ready() -> Response:
        if not engine.ready:
            raise ApiError(503, f"model not loaded yet: {engine.status}", headers={"Retry-After": "5"})
        assert engine.loaded is not None
        return jsonify(status="ready", **served(engine))

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), mimetype="text/plain; version=0.0.4")

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(openapi_spec(serving))

    # --- the seed-compatible endpoint ---------------------------------------------------------------

    @app.post("/prompt")
    def prompt() -> Response:
        body = _json_object()
        text = body.get("input_prompt")
        if "input_prompt" not in body:
            raise ApiError(422, "input_prompt is required", "input_prompt")
        if not isinstance(text, str):
            raise ApiError(422, "input_prompt must be a string", "input_prompt")
        params = _generation_params(body, max_tokens_key="max_new_tokens")
        started = time.perf_counter()
        prompt_ids = _prompt_ids([{"role": "user", "content": _check_prompt(text, "input_prompt")}])
        done = _run(Request(prompt_ids, **params, deadline=_deadline()))
        if request.accept_mimetypes.best_match(["text/plain", "application/json"]) == "application/json":
            latency_ms = round(1000 * (time.perf_counter() - started), 1)
            return jsonify(answer=done.text, prompt_tokens=len(prompt_ids), completion_tokens=done.completion_tokens,
                           finish_reason=done.finish_reason, latency_ms=latency_ms, model=serving.model_name)
        return Response(done.text, mimetype="text/plain")

    # --- OpenAI-compatible ---------------------------------------------------------------------------

    @app.get("/v1/models")
    def models() -> Response:
        loaded = engine.loaded
        model = {"id": serving.model_name, "object": "model", "created": int(loaded.loaded_at) if loaded else 0,
                 "owned_by": "private-fine-tuning"}
        return jsonify(object="list", data=[{**model, **served(engine)} if loaded else model])

    @app.post("/v1/chat/completions")
    def chat_completions() -> Response:
        body = _json_object()
        messages = _chat_messages(body.get("messages"))
        if body.get("n", 1) != 1:
            raise ApiError(422, "only n=1 is supported", "n")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(422, "stream must be true or false", "stream")
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        params = _generation_params(body, max_tokens_key=key)
        prompt_ids = _prompt_ids(messages)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if stream:
            job = _submit(Request(prompt_ids, **params, deadline=_deadline(), stream=queue.Queue()))
            return Response(_sse(job, completion_id, created), mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        done = _run(Request(prompt_ids, **params, deadline=_deadline()))
        return jsonify({
            "id": completion_id, "object": "chat.completion", "created": created, "model": serving.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                         "finish_reason": done.finish_reason}],
            "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": done.completion_tokens,
                      "total_tokens": len(prompt_ids) + done.completion_tokens},
        })

    def _sse(job: Request, completion_id: str, created: int) -> Iterator[str]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return "data: " + json.dumps({
                "id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": serving.model_name, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }) + "\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            assert job.stream is not None
            while (piece := job.stream.get()) is not None:
                yield chunk({"content": piece})
            if job.error:
                yield "data: " + json.dumps(_error_body(504 if "deadline" in job.error else 500, job.error)) + "\n\n"
            else:
                yield chunk({}, job.finish_reason)
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or everything was sent): spend no more tokens on it
            job.cancelled = not job.done.is_set()

    # --- helpers ----------------------------------------------------------------------------------------

    def _json_object() -> dict[str, Any]:
        # curl -d sends application/x-www-form-urlencoded unless told otherwise; the README's
        # `curl -XPOST :5000/prompt -d '{"input_prompt": ...}'` must work, so a JSON body is accepted then too.
        if request.mimetype not in ("application/json", "application/x-www-form-urlencoded"):
            got = request.mimetype or "none"
            raise ApiError(415, f"expected a JSON body (Content-Type: application/json), got {got}")
        raw = request.get_data(cache=True)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"invalid JSON body: {exc}") from None
        except RecursionError:
            raise ApiError(400, "invalid JSON body: nested too deeply") from None
        if not isinstance(body, dict):
            raise ApiError(400, f"the JSON body must be an object, got {type(body).__name__}")
        return body

    def _check_prompt(text: str, field: str) -> str:
        _encodable(text, field)
        if not text.strip():
            raise ApiError(422, f"{field} is empty", field)
        if len(text) > serving.max_prompt_chars:
            raise ApiError(422, f"{field} is {len(text)} characters, over the limit of {serving.max_prompt_chars}",
                           field)
        return text

    def _chat_messages(value: Any) -> list[dict[str, str]]:
        if not isinstance(value, list) or not value:
            raise ApiError(422, "messages must be a non-empty list", "messages")
        messages = []
        for i, message in enumerate(value):
            field = f"messages[{i}]"
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise ApiError(422, f"role must be one of {', '.join(ROLES)}", f"{field}.role")
            content = _content(message.get("content"), f"{field}.content")
            if message["role"] != "system":  # the server's own instructions are not overridable
                messages.append({"role": message["role"], "content": content})
        if not messages or messages[-1]["role"] != "user":
            raise ApiError(422, "the last message must be the user's", "messages")
        total = sum(len(m["content"]) for m in messages)
        if total > serving.max_prompt_chars:
            raise ApiError(422, f"messages are {total} characters, over the limit of {serving.max_prompt_chars}",
                           "messages")
        if not any(m["content"].strip() for m in messages):
            raise ApiError(422, "messages are empty", "messages")
        return messages

    def _content(content: Any, field: str) -> str:
        """A message's content: a string, or OpenAI content parts (the text ones are kept, in order)."""
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict):
                    raise ApiError(422, "a content part must be an object", f"{field}[{j}]")
                if part.get("type") != "text":
                    continue
                if not isinstance(part.get("text"), str):
                    raise ApiError(422, "a text part's text must be a string", f"{field}[{j}].text")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise ApiError(422, "content must be a string", field)
        return _encodable(content, field)

    def _generation_params(body: dict[str, Any], max_tokens_key: str) -> dict[str, Any]:
        max_new = body.get(max_tokens_key, serving.max_new_tokens)
        if max_new is None:
            max_new = serving.max_new_tokens
        limit = serving.max_new_tokens_limit
        if isinstance(max_new, bool) or not isinstance(max_new, int) or not 1 <= max_new <= limit:
            raise ApiError(422, f"{max_tokens_key} must be an integer from 1 to {serving.max_new_tokens_limit}",
                           max_tokens_key)
        temperature = body.get("temperature", 0.0)
        temperature = 0.0 if temperature is None else temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise ApiError(422, "temperature must be a number from 0 to 2 (below 0.001: greedy)", "temperature")
        top_p = body.get("top_p", 1.0)
        top_p = 1.0 if top_p is None else top_p
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ApiError(422, "top_p must be a number in (0, 1]", "top_p")
        return {"max_new_tokens": max_new, "temperature": float(temperature), "top_p": float(top_p)}

    def _prompt_ids(messages: list[dict[str, str]]) -> list[int]:
        if not engine.ready:
            raise ApiError(503, f"model not loaded yet: {engine.status}", headers={"Retry-After": "5"})
        ids = engine.encode(messages)
        if len(ids) > serving.max_prompt_tokens:
            raise ApiError(422, f"the prompt is {len(ids)} tokens with the chat template, over the limit of "
                                f"{serving.max_prompt_tokens}")
        return ids

    def _deadline() -> float:
        return time.monotonic() + serving.request_timeout_s

    def _submit(job: Request) -> Request:
        try:
            return engine.submit(job)
        except QueueFull:
            raise ApiError(503, "the server is busy: the request queue is full", headers={"Retry-After": "1"}) from None

    def _run(job: Request) -> Request:
        _submit(job)
        if not job.done.wait(serving.request_timeout_s + 5):
            raise ApiError(504, "generation did not finish within the request deadline")
        if job.error:
            raise ApiError(504 if "deadline" in job.error else 500, job.error)
        return job

    return app
