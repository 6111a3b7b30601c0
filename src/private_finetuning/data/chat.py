"""Turning chat records into token ids: one place, so training, evaluation and serving agree.

Training masks everything but the assistant's words: the labels of system and user tokens (and
of the template's role markers) are -100, so the loss measures only what the model should say.
Each assistant turn's span is found by rendering the conversation up to that turn with and
without it, which works for any chat template that renders a conversation as a growing prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from private_finetuning.data.facts import fact_spans, number_spans
from private_finetuning.errors import SourceError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    # Loss weight of each position (None: 1 everywhere); above 1 on the tokens that state the record's fact.
    weights: list[float] | None = None

    @property
    def target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def target_weight(self) -> float:
        """What this example adds to the step's loss normaliser: its target tokens, weighted."""
        if self.weights is None:
            return float(self.target_tokens)
        return sum(w for w, label in zip(self.weights, self.labels, strict=True) if label != IGNORE_INDEX)

    def cut(self, start: int) -> Encoded:
        return Encoded(self.input_ids[start:], self.labels[start:],
                       None if self.weights is None else self.weights[start:])


def with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """Prepend the configured system message unless the conversation brings its own."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # The template already wrote any BOS/special tokens into the text.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _fact_weights(tokenizer: PreTrainedTokenizerBase, text: str, facts: Sequence[str], weight: float) -> tuple[
                  list[int], list[float]]:
    """Token ids of an assistant turn and the loss weight of each: ``weight`` on the tokens stating one of
    ``facts`` or a number."""
    if weight == 1.0:
        ids = _ids(tokenizer, text)
        return ids, [1.0] * len(ids)
    if not getattr(tokenizer, "is_fast", False):
        raise SourceError("training.fact_loss_weight needs a fast tokenizer (token offsets); set it to 1 for this "
                          "base tokenizer")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    # The answer, and every number the reply states: a reply often carries a second fact (the best
    # hotel *and* its rating) that only its digits tell apart from a wrong one.
    spans = [span for fact in facts for span in fact_spans(text, fact)] + number_spans(text)
    weights = [weight if any(a < e and s < b for s, e in spans) else 1.0 for a, b in encoded["offset_mapping"]]
    return encoded["input_ids"], weights


def encode_for_training(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                        facts: Sequence[str] = (), fact_weight: float = 1.0) -> Encoded:
    """Token ids of the whole conversation, with labels only on the assistant turns.

    With a ``fact_weight`` other than 1, the assistant's tokens that state one of ``facts`` (the record's
    short answer, or the facts derived from its reply: data/expected.py) or any number weigh that much in
    the loss: the answer's wording is learnt in a few steps, its values (a price, a host name) are what
    take the steps."""
    ids: list[int] = []
    labels: list[int] = []
    weights: list[float] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        full = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise SourceError("the chat template does not render conversations as a growing prefix, so the "
                              "assistant's tokens cannot be located for loss masking")
        context = _ids(tokenizer, prompt[len(done):])
        answer, answer_weights = _fact_weights(tokenizer, full[len(prompt):], facts, fact_weight)
        ids += context + answer
        labels += [IGNORE_INDEX] * len(context) + answer
        weights += [1.0] * len(context) + answer_weights
        done = full
    return Encoded(ids, labels, weights if any(w != 1.0 for w in weights) else None)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation followed by the assistant's turn opener, ready for generation."""
    return _ids(tokenizer, render(tokenizer, messages, add_generation_prompt=True))
