"""Turning chat records into token ids: one place, so training, evaluation and serving agree.

Training masks everything but the assistant's words: the labels of system and user tokens (and
of the template's role markers) are -100, so the loss measures only what the model should say.
Each assistant turn's span is found by rendering the conversation up to that turn with and
without it, which works for any chat template that renders a conversation as a growing prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from private_finetuning.errors import SourceError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """Prepend the configured system message unless the conversation brings its own."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _ids(tokenizer: Any, text: str) -> list[int]:
    # The template already wrote any BOS/special tokens into the text.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_for_training(tokenizer: Any, messages: list[dict[str, str]]) -> Encoded:
    """Token ids of the whole conversation, with labels only on the assistant turns."""
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        full = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise SourceError("the chat template does not render conversations as a growing prefix, so the "
                              "assistant's tokens cannot be located for loss masking")
        context, answer = _ids(tokenizer, prompt[len(done):]), _ids(tokenizer, full[len(prompt):])
        ids += context + answer
        labels += [IGNORE_INDEX] * len(context) + answer
        done = full
    return Encoded(ids, labels)


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation followed by the assistant's turn opener, ready for generation."""
    return _ids(tokenizer, render(tokenizer, messages, add_generation_prompt=True))
