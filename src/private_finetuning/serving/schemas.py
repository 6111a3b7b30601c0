"""The request and response bodies of the inference server, defined once.

Each pydantic model is both the validation of what a client sends and its part of the OpenAPI
document (``/openapi.json``), so the two cannot drift apart. Limits come from the ``serving:``
section of the pipeline YAML, so the models are built per configuration (:func:`build`). A
field's ``description`` is what an error about it says: "max_new_tokens must be an integer from 1
to 256". Checks that are about meaning rather than shape (blank text, unpaired surrogates, the
conversation ending on the user) are in :mod:`private_finetuning.serving.requests`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, create_model

from private_finetuning.config import ServingConfig

# Strict: "5" is not an integer and true is not 1; an integer is a number.
STRICT = ConfigDict(strict=True, extra="ignore")
_TAGS = {"string", "parts"}  # union tags pydantic puts in an error's location; not part of the client's path


class ContentPart(BaseModel):
    """An OpenAI content part; text parts are used, others (images...) are ignored."""

    model_config = ConfigDict(strict=True, extra="allow")
    type: str = Field(description="a string naming the part's kind, e.g. text")
    text: str | None = Field(None, description="a string (required in a text part)")


def _content_kind(value: Any) -> str:
    return "parts" if isinstance(value, list) else "string"


Content = Annotated[Annotated[str, Tag("string")] | Annotated[list[ContentPart], Tag("parts")],
                    Discriminator(_content_kind)]


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "user", "assistant"] = Field(description="one of system, user, assistant")
    content: Content = Field(description="a string, or a list of content parts")


class ErrorDetail(BaseModel):
    message: str
    status: int
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class PromptAnswer(BaseModel):
    answer: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    latency_ms: float
    model: str


@dataclass(frozen=True)
class Bodies:
    """The request models for one serving configuration."""

    prompt: type[BaseModel]
    chat: type[BaseModel]


def build(serving: ServingConfig) -> Bodies:
    limit, chars = serving.max_new_tokens_limit, serving.max_prompt_chars
    tokens = f"an integer from 1 to {limit}"
    sampling: dict[str, Any] = {
        "temperature": (float | None, Field(None, ge=0, le=2, description="a number from 0 to 2 (below 0.001: "
                                                                            "greedy)")),
        "top_p": (float | None, Field(None, gt=0, le=1, description="a number in (0, 1]")),
    }
    settings = STRICT
    prompt = create_model(
        "PromptRequest", __config__=settings,
        input_prompt=(str, Field(min_length=1, max_length=chars, description=f"a string of 1 to {chars} "
                                       "characters, not only white space")),
        max_new_tokens=(int | None, Field(None, ge=1, le=limit, description=tokens)),
        **sampling)
    chat = create_model(
        "ChatCompletionRequest", __config__=settings,
        model=(str | None, Field(None, description="a string (any name: this server serves one model)")),
        messages=(list[ChatMessage], Field(min_length=1, description="a non-empty list of messages")),
        max_tokens=(int | None, Field(None, ge=1, le=limit, description=tokens)),
        max_completion_tokens=(int | None, Field(None, ge=1, le=limit, description=tokens)),
        n=(int | None, Field(None, ge=1, le=1, description="1 (only n=1 is supported)")),
        stream=(bool | None, Field(None, description="true or false")),
        **sampling)
    return Bodies(prompt=prompt, chat=chat)


def field_path(loc: tuple[Any, ...]) -> str:
    """An error location as the client wrote it: ``messages[0].content[1].text``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _TAGS:
            path += f".{part}" if path else str(part)
    return path


def explain(error: ValidationError, model: type[BaseModel]) -> tuple[str, str]:
    """(message, field) for the first problem of a body, in the words of the field's description."""
    first = error.errors(include_url=False)[0]
    loc = tuple(first["loc"])
    field = field_path(loc)
    if first["type"] == "missing":
        return f"{field} is required", field
    if first["type"] == "string_too_long":
        return (f"{field} is {len(first['input'])} characters, over the limit of {first['ctx']['max_length']}",
                field)
    if first["type"] == "string_too_short":
        return f"{field} is empty", field
    if first["type"] == "string_unicode":  # JSON may carry a lone surrogate (\\ud800), which is not text
        lone = next((c for c in str(first["input"]) if 0xD800 <= ord(c) <= 0xDFFF), "?")
        return f"{field} holds an unpaired surrogate ({lone!r}), which is not text", field
    described = model.model_fields.get(str(loc[0])) if len(loc) == 1 else None
    if described is not None and described.description:
        return f"{field} must be {described.description}", field
    return f"{field}: {first['msg'].lower()}", field


def openapi_components(bodies: Bodies) -> dict[str, Any]:
    """JSON Schemas of every body, for the OpenAPI document's ``components.schemas``."""
    from pydantic.json_schema import models_json_schema

    _, defs = models_json_schema([(m, "validation") for m in (bodies.prompt, bodies.chat)]
                                 + [(PromptAnswer, "serialization"), (ErrorBody, "serialization")],
                                 ref_template="#/components/schemas/{model}")
    return defs["$defs"]
