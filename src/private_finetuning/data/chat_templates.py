"""Chat templates for models whose files carry none (base models such as Gemma 3 270M).

A template is used only when a source has no template of its own and the config names one. Each
built-in declares the token that ends a turn, so generation can stop there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinTemplate:
    template: str
    end_of_turn: str


# Gemma's turn format: no system role, so a system message is prefixed to the first user turn.
_GEMMA = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set prefix = messages[0]['content'] + '\n\n' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

_CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

BUILTIN = {
    "gemma": BuiltinTemplate(_GEMMA, "<end_of_turn>"),
    "chatml": BuiltinTemplate(_CHATML, "<|im_end|>"),
}


def resolve_template(value: str) -> BuiltinTemplate:
    """A built-in by name, or a Jinja template given inline (whose turn end is then unknown)."""
    if value in BUILTIN:
        return BUILTIN[value]
    return BuiltinTemplate(value, "")
