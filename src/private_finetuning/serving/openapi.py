"""The OpenAPI 3 description of the inference server, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from private_finetuning import __version__
from private_finetuning.config import ServingConfig


def _error() -> dict[str, Any]:
    return {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi_spec(serving: ServingConfig) -> dict[str, Any]:
    limit = serving.max_new_tokens_limit
    errors = {str(code): _error() for code in (400, 413, 415, 422, 503, 504)}
    message = {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant"]},
        "content": {"type": "string"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Private Fine-Tuning inference server", "version": __version__,
                 "description": "Answers questions with the fine-tuned model. Every error is a JSON body."},
        "paths": {
            "/prompt": {"post": {
                "summary": "Answer one question (plain text; JSON with Accept: application/json)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["input_prompt"], "properties": {
                        "input_prompt": {"type": "string", "minLength": 1, "maxLength": serving.max_prompt_chars,
                                         "pattern": "\\S", "description": "not only white space"},
                        "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": limit},
                        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                        "top_p": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1}}}}}},
                "responses": {"200": {"description": "the answer", "content": {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"$ref": "#/components/schemas/PromptAnswer"}}}}, **errors}}},
            "/v1/chat/completions": {"post": {
                "summary": "OpenAI-compatible chat completion (stream: true for server-sent events)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["messages"], "properties": {
                        "model": {"type": "string"},
                        "messages": {"type": "array", "minItems": 1, "items": message},
                        "max_tokens": {"type": "integer", "minimum": 1, "maximum": limit},
                        "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": limit},
                        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                        "top_p": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1},
                        "n": {"type": "integer", "enum": [1]},
                        "stream": {"type": "boolean"}}}}}},
                "responses": {"200": {"description": "a chat completion, or a text/event-stream of chunks",
                                      "content": {"application/json": {"schema": {"type": "object"}},
                                                  # each event: a chat.completion.chunk object, last `[DONE]`
                                                  "text/event-stream": {"schema": {
                                                      "oneOf": [{"type": "object"}, {"type": "string"}]}}}},
                              **errors}}},
            "/v1/models": {"get": {"summary": "The served model", "responses": {"200": {
                "description": "model list", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {
                "description": "alive", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/ready": {"get": {"summary": "Readiness: 200 once the model is loaded", "responses": {
                "200": {"description": "ready", "content": {"application/json": {"schema": {"type": "object"}}}},
                "503": _error()}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["message", "status"], "properties": {
                    "message": {"type": "string"}, "status": {"type": "integer"}, "field": {"type": "string"}}}}},
            "PromptAnswer": {"type": "object", "properties": {
                "answer": {"type": "string"}, "prompt_tokens": {"type": "integer"},
                "completion_tokens": {"type": "integer"}, "finish_reason": {"type": "string"},
                "latency_ms": {"type": "number"}, "model": {"type": "string"}}},
        }},
    }
