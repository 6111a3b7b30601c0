"""POST /prompt: the original prototype's request, answered as plain text (JSON when asked)."""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify, request

from private_finetuning.serving import requests as req
from private_finetuning.serving.state import state

prompt = Blueprint("prompt", __name__)


@prompt.post("/prompt")
def answer() -> Response:
    body = req.parse(state().bodies.prompt)
    started = time.perf_counter()
    ids = req.prompt_ids([{"role": "user", "content": req.text(body.input_prompt, "input_prompt")}], "input_prompt")
    done = req.run(req.job(ids, req.generation(body.max_new_tokens, body.temperature, body.top_p)))
    if request.accept_mimetypes.best_match(["text/plain", "application/json"]) == "application/json":
        return jsonify(answer=done.text, prompt_tokens=len(ids), completion_tokens=done.completion_tokens,
                       finish_reason=done.finish_reason, latency_ms=round(1000 * (time.perf_counter() - started), 1),
                       model=state().serving.model_name)
    return Response(done.text, mimetype="text/plain")
