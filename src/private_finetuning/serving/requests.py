"""From an HTTP request to an engine job: the body parsed and validated, its meaning checked, the answer
awaited. Every problem is an :class:`ApiError` with a 4xx/5xx status and the field it is about."""

from __future__ import annotations

import json
import time
from typing import Any

from flask import request
from pydantic import BaseModel, ValidationError

from private_finetuning.serving.engines.base import QueueFull, Request
from private_finetuning.serving.schemas import ErrorBody, ErrorDetail, explain
from private_finetuning.serving.state import state


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}


def error_body(status: int, message: str, field: str | None = None) -> dict[str, Any]:
    """The JSON of every error, as ``ErrorBody`` in /openapi.json describes it (no ``field`` when there is none)."""
    return ErrorBody(error=ErrorDetail(message=message, status=status, field=field or None)).model_dump(
        exclude_none=True)


def json_object() -> dict[str, Any]:
    """The body as a JSON object. curl -d sends application/x-www-form-urlencoded unless told otherwise,
    and the README's `curl -XPOST http://localhost:5000/prompt -d '{...}'` must work: JSON is read then too."""
    if request.mimetype not in ("application/json", "application/x-www-form-urlencoded"):
        raise ApiError(415, f"expected a JSON body (Content-Type: application/json), got {request.mimetype or 'none'}")
    try:
        body = json.loads(request.get_data(cache=True))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"invalid JSON body: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid JSON body: nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the JSON body must be an object, got {type(body).__name__}")
    return body


def parse(model: type[BaseModel]) -> Any:
    """The body validated against its schema (the one /openapi.json publishes)."""
    try:
        return model.model_validate(json_object())
    except ValidationError as exc:
        message, field = explain(exc, model)
        raise ApiError(422, message, field) from None


def encodable(value: str, field: str) -> str:
    """JSON may carry a lone surrogate (\\ud800) that no tokenizer can encode: a client error, not a crash."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(422, f"{field} holds an unpaired surrogate ({value[exc.start]!r}), which is not text",
                       field) from None
    return value


def text(value: str, field: str) -> str:
    """Text a tokenizer can encode and that says something."""
    encodable(value, field)
    if not value.strip():
        raise ApiError(422, f"{field} is empty", field)
    return value


def chat_messages(body: Any) -> list[dict[str, str]]:
    """The conversation without system messages (the server's own instructions are not overridable)."""
    messages = []
    for i, message in enumerate(body.messages):
        field = f"messages[{i}].content"
        if isinstance(message.content, list):
            parts = []
            for j, part in enumerate(message.content):
                if part.type == "text":
                    if part.text is None:
                        raise ApiError(422, "a text part needs its text, a string", f"{field}[{j}].text")
                    parts.append(part.text)
            content = "".join(parts)
        else:
            content = message.content
        encodable(content, field)
        if message.role != "system":
            messages.append({"role": message.role, "content": content})
    if not messages or messages[-1]["role"] != "user":
        raise ApiError(422, "the last message must be the user's", "messages")
    limit = state().serving.max_prompt_chars
    total = sum(len(m["content"]) for m in messages)
    if total > limit:
        raise ApiError(422, f"messages are {total} characters, over the limit of {limit}", "messages")
    if not any(m["content"].strip() for m in messages):
        raise ApiError(422, "messages are empty", "messages")
    return messages


def generation(max_new_tokens: int | None, temperature: float | None, top_p: float | None) -> dict[str, Any]:
    """Sampling settings with the configured defaults for what the client left out."""
    return {"max_new_tokens": max_new_tokens or state().serving.max_new_tokens,
            "temperature": 0.0 if temperature is None else float(temperature),
            "top_p": 1.0 if top_p is None else float(top_p)}


def prompt_ids(messages: list[dict[str, str]], field: str = "messages") -> list[int]:
    """The conversation's token ids with the chat template; a conversation the template refuses is a 422."""
    from jinja2 import TemplateError

    engine, serving, retrieval = state().engine, state().serving, state().retrieval
    if not engine.ready:
        raise ApiError(503, f"model not loaded yet: {engine.status}", headers={"Retry-After": "5"})
    try:
        ids = engine.encode(messages)
        if len(ids) <= serving.max_prompt_tokens and retrieval is not None and engine.loaded is not None:
            # The request's own size is checked first; its context may add up to retrieval's allowance.
            ids = engine.encode(retrieval.apply(messages, engine.loaded))
    except TemplateError as exc:  # the template's raise_exception(): its author's words, not the request's text
        raise ApiError(422, f"the model's chat template refuses this conversation: {str(exc)[:200]}",
                       field=field) from None
    limit = serving.max_prompt_tokens + (retrieval.extra_prompt_tokens if retrieval is not None else 0)
    if len(ids) > limit:
        raise ApiError(422, f"the prompt is {len(ids)} tokens with the chat template, over the limit of "
                            f"{serving.max_prompt_tokens}")
    return ids


def error_status(work: Request) -> int:
    """503 for the server's state (retry), 504 for a deadline, 500 for a failed generation."""
    return 503 if work.unavailable else 504 if "deadline" in (work.error or "") else 500


def job(ids: list[int], params: dict[str, Any], **extra: Any) -> Request:
    return Request(ids, **params, deadline=time.monotonic() + state().serving.request_timeout_s, **extra)


def submit(work: Request) -> Request:
    try:
        return state().engine.submit(work)
    except QueueFull:
        raise ApiError(503, "the server is busy: the request queue is full", headers={"Retry-After": "1"}) from None


def run(work: Request) -> Request:
    """Submit and wait for the answer, within the request deadline."""
    submit(work)
    if not work.done.wait(state().serving.request_timeout_s + 5):
        raise ApiError(504, "generation did not finish within the request deadline")
    if work.error:
        raise ApiError(error_status(work), work.error, headers={"Retry-After": "5"} if work.unavailable else None)
    return work
