"""An Ollama ``Modelfile`` whose TEMPLATE produces the same prompt text as the tokenizer's chat template.

Ollama templates are Go templates, chat templates are Jinja: there is no general translation. A chat
served by Ollama is always "system, then user and assistant turns, ending on the user", so what is
needed is the text around each message in that order, and that is read off the Jinja template by
rendering a conversation of sentinel strings. The pieces are checked by rendering a different
conversation both ways (:func:`render_like_ollama` does what the Go template does); a template whose
text depends on more than the role (position, content) is refused with a message, never written wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from private_finetuning.errors import ExportError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_S, _U1, _A1, _U2, _A2 = (f"\x00{name}\x00" for name in ("SYSTEM", "USER1", "ASSISTANT1", "USER2", "ASSISTANT2"))


@dataclass(frozen=True)
class TurnFormat:
    """The prompt text around each message, for a conversation that opens with a system message.

    ``user_tail`` also opens the assistant's turn and ``assistant_tail`` the next user's: what
    matters is that every prompt concatenates to the chat template's text, token for token.
    """

    head: str
    system_tail: str
    user_tail: str
    assistant_tail: str


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start) + len(start)
    return text[i:text.index(end, i)]


def turn_format(tokenizer: PreTrainedTokenizerBase) -> TurnFormat:
    """Read the pieces off the tokenizer's chat template; ExportError if they do not reproduce it."""
    conversation = [{"role": "system", "content": _S}, {"role": "user", "content": _U1},
                    {"role": "assistant", "content": _A1}, {"role": "user", "content": _U2},
                    {"role": "assistant", "content": _A2}]
    try:
        full = _render(tokenizer, conversation, False)
    except Exception as exc:  # a Jinja template raises what it likes (e.g. "roles must alternate")
        raise ExportError(f"the chat template cannot render a system/user/assistant conversation: {exc}") from None
    if any(s not in full for s in (_S, _U1, _A1, _U2, _A2)):
        raise ExportError("the chat template drops the system or a user message; no Ollama TEMPLATE can match it")
    fmt = TurnFormat(head=full[:full.index(_S)], system_tail=_between(full, _S, _U1),
                     user_tail=_between(full, _U1, _A1), assistant_tail=_between(full, _A1, _U2))
    check = [("user", "Where is it?"), ("assistant", "In Oslo."), ("user", "And the price?"),
             ("assistant", "120 EUR."), ("user", "Thanks.")]
    expected = _render(tokenizer, [{"role": "system", "content": "Be brief."}]
                       + [{"role": r, "content": c} for r, c in check], True)
    if render_like_ollama(fmt, "Be brief.", check) != expected:
        raise ExportError("the chat template's text depends on more than each message's role (its position, a "
                          "generation prompt unlike the turns'); no Ollama TEMPLATE can reproduce it")
    return fmt


def render_like_ollama(fmt: TurnFormat, system: str, messages: list[tuple[str, str]]) -> str:
    """The prompt the Modelfile's Go TEMPLATE renders for a system message and (role, content) turns."""
    tails = {"user": fmt.user_tail, "assistant": fmt.assistant_tail}
    return fmt.head + system + fmt.system_tail + "".join(content + tails[role] for role, content in messages)


def _go_string(text: str) -> str:
    """Literal text inside a Go template: the delimiters themselves are written as string actions."""
    return "".join('{{ "' + part + '" }}' if part in ("{{", "}}") else part for part in re.split(r"(\{\{|\}\})", text))


def go_template(fmt: TurnFormat) -> str:
    """No ``{{-`` trim markers: they would eat the newlines the chat template puts around turns."""
    return (f"{_go_string(fmt.head)}{{{{ .System }}}}{_go_string(fmt.system_tail)}"
            "{{ range .Messages }}"
            f'{{{{ if eq .Role "user" }}}}{{{{ .Content }}}}{_go_string(fmt.user_tail)}'
            f'{{{{ else if eq .Role "assistant" }}}}{{{{ .Content }}}}{_go_string(fmt.assistant_tail)}'
            "{{ end }}{{ end }}")


def stop_strings(fmt: TurnFormat, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The special tokens that end an assistant turn (those in the text after an assistant message)."""
    special = sorted(set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values()
                                                          if t.special}, key=len, reverse=True)
    found = [t for t in special if t and t in fmt.assistant_tail]
    return found or ([tokenizer.eos_token] if tokenizer.eos_token else [])


def modelfile(gguf_name: str, fmt: TurnFormat, tokenizer: PreTrainedTokenizerBase, system_prompt: str, *,
              num_predict: int) -> str:
    """The Modelfile text: FROM the GGUF beside it, its TEMPLATE, the SYSTEM prompt, greedy decoding."""
    if '"""' in system_prompt:
        raise ExportError('the system prompt contains """, which ends a Modelfile string; rephrase it')
    template = go_template(fmt)
    if '"""' in template:
        raise ExportError('the chat template\'s turn markers contain """, which ends a Modelfile string; no Ollama '
                          "TEMPLATE can carry them")
    lines = [
        "# Ollama: ollama create <name> -f Modelfile && ollama run <name>",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
        f'SYSTEM """{system_prompt}"""',
        "PARAMETER temperature 0",
        f"PARAMETER num_predict {num_predict}",
    ]
    lines += [f"PARAMETER stop {modelfile_string(s)}" for s in stop_strings(fmt, tokenizer)]
    return "\n".join(lines) + "\n"


def modelfile_string(text: str) -> str:
    """``text`` as a Modelfile value: Ollama's parser takes what is between the quotes as it is (no escapes),
    so it is written raw, in triple quotes where it holds a quote or a line break."""
    if '"""' in text or text.endswith('"'):
        raise ExportError("a stop string contains a quote where a Modelfile string cannot hold it")
    return f'"""{text}"""' if '"' in text or "\n" in text else f'"{text}"'

