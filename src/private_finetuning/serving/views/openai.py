"""The OpenAI API: /v1/models and /v1/chat/completions (streaming as server-sent events)."""

from __future__ import annotations

import json
import queue
import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify

from private_finetuning.serving import requests as req
from private_finetuning.serving.engines.base import Request
from private_finetuning.serving.state import served, state

openai = Blueprint("openai", __name__)


@openai.get("/v1/models")
def models() -> Response:
    engine, name = state().engine, state().serving.model_name
    loaded = engine.loaded
    model = {"id": name, "object": "model", "created": int(loaded.loaded_at) if loaded else 0,
             "owned_by": "private-fine-tuning"}
    return jsonify(object="list", data=[{**model, **served(engine)} if loaded else model])


@openai.post("/v1/chat/completions")
def chat_completions() -> Response:
    body = req.parse(state().bodies.chat)
    messages = req.chat_messages(body)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    params = req.generation(max_tokens, body.temperature, body.top_p)
    ids = req.prompt_ids(messages)
    completion_id, created, name = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), state().serving.model_name
    if body.stream:
        job = req.submit(req.job(ids, params, stream=queue.Queue()))
        return Response(_events(job, completion_id, created, name), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    done = req.run(req.job(ids, params))
    return jsonify({
        "id": completion_id, "object": "chat.completion", "created": created, "model": name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                     "finish_reason": done.finish_reason}],
        "usage": {"prompt_tokens": len(ids), "completion_tokens": done.completion_tokens,
                  "total_tokens": len(ids) + done.completion_tokens},
    })


STREAM_GRACE_S = 5.0  # past its deadline, how long a stream waits for the worker to end the request


def _next_piece(job: Request) -> str | None:
    """The next text delta of a streaming request, or None when it has ended; never waits past its deadline."""
    assert job.stream is not None
    try:
        return job.stream.get(timeout=max(0.0, job.deadline - time.monotonic()) + STREAM_GRACE_S)
    except queue.Empty:  # the worker never ended it: say so rather than hang the connection
        job.error = job.error or "generation did not finish within the request deadline"
        job.cancelled = True
        return None


def _events(job: Request, completion_id: str, created: int, model: str) -> Iterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return "data: " + json.dumps({
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }) + "\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        assert job.stream is not None
        while (piece := _next_piece(job)) is not None:
            yield chunk({"content": piece})
        if job.error:
            yield "data: " + json.dumps(req.error_body(req.error_status(job), job.error)) + "\n\n"
        else:
            yield chunk({}, job.finish_reason)
        yield "data: [DONE]\n\n"
    finally:  # the client went away (or everything was sent): spend no more tokens on it
        job.cancelled = not job.done.is_set()
