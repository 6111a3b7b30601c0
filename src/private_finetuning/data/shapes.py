"""One record, in whichever common shape it comes, as chat messages; or exactly what is wrong with it.

The shapes are those LLaMA-Factory and TRL users have (docs/data.md has the table):

- ``messages``: OpenAI chat, TRL "conversational"; ``content`` a string or a list of text parts;
- ``prompt`` + ``completion``: TRL "prompt-completion", as strings or as lists of messages;
- ``instruction`` + ``output`` (+ ``input``, ``system``, ``history``): alpaca;
- ``conversations`` of ``from``/``value`` (+ ``system``): ShareGPT;
- ``text`` alone: TRL "language modeling", learned as an assistant turn with no question.

Every error names where (file and line, or row) and the field, with its index inside a list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from private_finetuning.data.facts import fact_match
from private_finetuning.data.record import Record
from private_finetuning.errors import InputDataError

ROLES = ("system", "user", "assistant")
SPLITS = ("train", "eval")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                  "chatgpt": "assistant", "system": "system"}
Line = int | str  # a line number, or "row N" for a table


def describe(value: Any) -> str:
    """A value from the data as an error may name it: its type and size, never its text (private, and it
    would reach the pod log)."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return "null" if value is None else f"a {type(value).__name__}"


def check_text(value: Any, path: Path, line: Line, field: str, max_chars: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InputDataError(str(path), f"expected a string, got {type(value).__name__}", line, field)
    if not allow_empty and not value.strip():
        raise InputDataError(str(path), "is empty", line, field)
    if len(value) > max_chars:
        raise InputDataError(str(path), f"is {len(value)} characters long, over the limit of {max_chars} "
                             "(dataset.max_chars)", line, field)
    return value


def _content(value: Any, path: Path, line: Line, field: str, max_chars: int) -> str:
    """A message's content: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InputDataError(str(path), "only text parts are supported", line, f"{field}[{i}]")
            texts.append(check_text(part.get("text"), path, line, f"{field}[{i}].text", max_chars, allow_empty=True))
        value = "".join(texts)
    return check_text(value, path, line, field, max_chars)


def _chat(messages: Any, path: Path, line: Line, field: str, max_chars: int, *, role_key: str = "role",
          content_key: str = "content", roles: dict[str, str] | None = None) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise InputDataError(str(path), f"must be a non-empty list of {{{role_key}, {content_key}}}", line, field)
    out = []
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise InputDataError(str(path), f"must be an object with {role_key} and {content_key}", line, where)
        given = message.get(role_key)
        role = (roles or {r: r for r in ROLES}).get(given) if isinstance(given, str) else None
        if role is None:
            known = ", ".join(roles or ROLES)
            raise InputDataError(str(path), f"the role ({describe(given)}) is not one of {known} (tool turns are not "
                                 "supported)",
                                 line, f"{where}.{role_key}")
        if role == "system" and i != 0:
            raise InputDataError(str(path), "a system message may only come first", line, f"{where}.{role_key}")
        out.append({"role": role, "content": _content(message.get(content_key), path, line, f"{where}.{content_key}",
                                                      max_chars)})
    return out


def _with_system(obj: dict, messages: list[dict[str, str]], path: Path, line: Line,
                 max_chars: int) -> list[dict[str, str]]:
    if obj.get("system") in (None, ""):
        return messages
    if messages[0]["role"] == "system":
        raise InputDataError(str(path), "given twice: as a field and as the first message", line, "system")
    return [{"role": "system", "content": check_text(obj["system"], path, line, "system", max_chars)}, *messages]


def _alpaca(obj: dict, path: Path, line: Line, max_chars: int) -> list[dict[str, str]]:
    instruction = check_text(obj.get("instruction"), path, line, "instruction", max_chars)
    extra = check_text(obj.get("input", ""), path, line, "input", max_chars, allow_empty=True)
    output = check_text(obj.get("output"), path, line, "output", max_chars)
    history = obj.get("history") or []
    if not isinstance(history, list):
        raise InputDataError(str(path), "must be a list of [instruction, response] pairs", line, "history")
    turns = []
    for i, pair in enumerate(history):
        if not isinstance(pair, list) or len(pair) != 2:
            raise InputDataError(str(path), "must be an [instruction, response] pair", line, f"history[{i}]")
        turns += [{"role": "user", "content": check_text(pair[0], path, line, f"history[{i}][0]", max_chars)},
                  {"role": "assistant", "content": check_text(pair[1], path, line, f"history[{i}][1]", max_chars)}]
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [*turns, {"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _prompt_completion(obj: dict, path: Path, line: Line, max_chars: int) -> list[dict[str, str]]:
    prompt, completion = obj.get("prompt"), obj.get("completion")
    if isinstance(prompt, list) or isinstance(completion, list):  # TRL conversational prompt-completion
        return _chat(prompt, path, line, "prompt", max_chars) + _chat(completion, path, line, "completion",
                                                                       max_chars)
    return [{"role": "user", "content": check_text(prompt, path, line, "prompt", max_chars)},
            {"role": "assistant", "content": check_text(completion, path, line, "completion", max_chars)}]


def to_messages(obj: dict, path: Path, line: Line, max_chars: int) -> list[dict[str, str]]:
    """The conversation a record holds; the last message is the assistant's (what is learned)."""
    if "messages" in obj:
        messages = _with_system(obj, _chat(obj["messages"], path, line, "messages", max_chars), path, line,
                                max_chars)
        last = f"messages[{len(obj['messages']) - 1}].role"
    elif "conversations" in obj:
        messages = _with_system(obj, _chat(obj["conversations"], path, line, "conversations", max_chars,
                                           role_key="from", content_key="value", roles=SHAREGPT_ROLES),
                                path, line, max_chars)
        last = f"conversations[{len(obj['conversations']) - 1}].from"
    elif "chosen" in obj or "rejected" in obj or isinstance(obj.get("label"), bool):
        raise InputDataError(str(path), "preference data (chosen/rejected, or a boolean label) is for preference "
                             "tuning; give the chosen answer as 'completion' to fine-tune on it", line)
    elif "prompt" in obj or "completion" in obj:
        messages, last = _prompt_completion(obj, path, line, max_chars), "completion"
    elif "instruction" in obj or "output" in obj:
        messages, last = _with_system(obj, _alpaca(obj, path, line, max_chars), path, line, max_chars), "output"
    elif "text" in obj:
        messages, last = [{"role": "assistant", "content": check_text(obj["text"], path, line, "text",
                                                                      max_chars)}], "text"
    else:
        raise InputDataError(str(path), "unrecognised record: expected 'messages', 'conversations', "
                             "'prompt'+'completion', 'instruction'+'output' or 'text' (found keys: "
                             f"{', '.join(sorted(obj)) or 'none'})", line)
    if messages[-1]["role"] != "assistant":
        raise InputDataError(str(path), "the last message must be the assistant's (the text to learn)", line, last)
    return messages


def to_record(obj: Any, path: Path, line: Line, max_chars: int) -> Record:
    """A normalized record (messages, split, meta) from one parsed JSON object or table row."""
    if not isinstance(obj, dict):
        raise InputDataError(str(path), f"expected a JSON object, got {type(obj).__name__}", line)
    split = obj.get("split")
    if split is not None and split not in SPLITS:
        raise InputDataError(str(path), f"{describe(split)} is not one of {', '.join(SPLITS)}", line, "split")
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise InputDataError(str(path), "must be an object", line, "meta")
    messages = to_messages(obj, path, line, max_chars)
    meta = {**meta, **expected_answer(obj, messages, path, line, max_chars), "source_line": line}
    return Record(messages=messages, meta=meta, split=split)


def expected_answer(obj: dict, messages: list[dict[str, str]], path: Path, line: Line,
                    max_chars: int) -> dict[str, str]:
    """The optional short ``answer`` (the fact the reply must state) and ``fact`` (its kind) of a record.

    The evaluation scores a model's reply by whether it states ``answer`` (a number as a number, else
    the same words); an answer the record's own reply does not state could never be learned, so it is
    refused. Neither value is written to a log: they are the private data.
    """
    found: dict[str, str] = {}
    answer, fact = obj.get("answer"), obj.get("fact")
    if answer is not None:
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise InputDataError(str(path), f"expected a string or a number, got {type(answer).__name__}", line,
                                 "answer")
        found["answer"] = check_text(str(answer), path, line, "answer", min(max_chars, 500))
        if not fact_match(messages[-1]["content"], found["answer"]):
            raise InputDataError(str(path), "is not stated in the assistant's reply (a number must appear as that "
                                 "number, words as the same words), so it could never be learned", line, "answer")
    if fact is not None:
        found["fact"] = check_text(fact, path, line, "fact", 100)
    return found
