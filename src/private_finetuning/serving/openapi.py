"""The OpenAPI 3.1 description of the inference server, served at /openapi.json.

Request and response bodies are the JSON Schemas of the pydantic models in ``schemas.py``, the
same models that validate requests; this module only lays out the paths.
"""

from __future__ import annotations

from typing import Any

from private_finetuning import __version__
from private_finetuning.serving.schemas import Bodies, openapi_components


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_spec(bodies: Bodies) -> dict[str, Any]:
    errors = {str(code): _json(_ref("ErrorBody"), "error") for code in (400, 413, 415, 422, 503, 504)}
    anything = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Private Fine-Tuning inference server", "version": __version__,
                 "description": "Answers questions with the fine-tuned model. Every error is a JSON body."},
        "paths": {
            "/prompt": {"post": {
                "summary": "Answer one question (plain text; JSON with Accept: application/json)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PromptRequest")}}},
                "responses": {"200": {"description": "the answer", "content": {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/json": {"schema": _ref("PromptAnswer")}}}, **errors}}},
            "/v1/chat/completions": {"post": {
                "summary": "OpenAI-compatible chat completion (stream: true for server-sent events)",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("ChatCompletionRequest")}}},
                "responses": {"200": {"description": "a chat completion, or a text/event-stream of chunks",
                                      "content": {"application/json": {"schema": anything},
                                                  # each event: a chat.completion.chunk object, last `[DONE]`
                                                  "text/event-stream": {"schema": {
                                                      "oneOf": [anything, {"type": "string"}]}}}},
                              **errors}}},
            "/v1/models": {"get": {"summary": "The served model", "responses": {"200": _json(anything, "models")}}},
            "/health": {"get": {"summary": "Liveness: 503 once the generation worker has stopped", "responses": {
                "200": _json(anything, "alive"), "503": _json(_ref("ErrorBody"), "the worker has stopped")}}},
            "/ready": {"get": {"summary": "Readiness: 200 once the model is loaded", "responses": {
                "200": _json(anything, "ready"), "503": _json(_ref("ErrorBody"), "not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
        "components": {"schemas": openapi_components(bodies)},
    }
