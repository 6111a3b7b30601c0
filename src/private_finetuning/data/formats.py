"""Readers that turn a company's data files into normalized chat records, or say exactly what is wrong.

A normalized record is ``{"messages": [{"role", "content"}, ...], "split": "train"|"eval"|None,
"meta": {...}}``; the last message is the assistant's (what the model learns to say). Inputs:

- CSV, with a row-to-text template from the config (``{column}`` format strings);
- JSONL in chat form (``messages``), prompt/completion form, or instruction/input/output (alpaca);
- plain text: paragraphs separated by blank lines, each learned as an assistant turn.

Every error names file, line and field. Nothing is truncated or skipped silently: a bad row stops
the stage, because a pipeline that quietly drops part of the private data trains on the wrong thing.
"""

from __future__ import annotations

import csv
import io
import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from private_finetuning.config import CsvTemplate
from private_finetuning.errors import InputDataError

ROLES = ("system", "user", "assistant")
SPLITS = ("train", "eval")


def detect_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".txt", ".md", ".text"):
        return "text"
    raise InputDataError(str(path), f"cannot tell the format from the extension {suffix!r}; set "
                         "dataset.source.format to csv, jsonl or text")


def _check_size(path: Path, max_bytes: int) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputDataError(str(path), "file not found") from None
    if path.is_dir():
        raise InputDataError(str(path), "is a directory, expected a file")
    if size > max_bytes:
        raise InputDataError(str(path), f"is {size} bytes, over dataset.max_file_bytes ({max_bytes}); raise "
                             "that limit (the pod's memory limit too) or split the file")


def _undecodable(path: Path, encoding: str, data: bytes, exc: UnicodeDecodeError, line: int) -> InputDataError:
    return InputDataError(str(path), f"not valid {encoding} text: byte 0x{data[exc.start]:02x} cannot be decoded "
                          f"({exc.reason}); convert the file or set dataset.source.encoding", line=line)


def decode(path: Path, encoding: str, max_bytes: int) -> str:
    """The whole file's text (CSV, whose quoted cells may span lines); a decoding error names the line."""
    _check_size(path, max_bytes)
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _undecodable(path, encoding, data, exc, data[: exc.start].count(b"\n") + 1) from None
    return text.removeprefix("\ufeff")


def stream_lines(path: Path, encoding: str, max_bytes: int) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, read one at a time and split at ``\\n`` only (JSONL, plain text).

    Encodings where a newline is not the byte ``\\n`` (UTF-16, UTF-32) are decoded whole instead.
    """
    if "a\n".encode(encoding) != b"a\n":
        yield from enumerate(decode(path, encoding, max_bytes).split("\n"), start=1)
        return
    _check_size(path, max_bytes)
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                raise _undecodable(path, encoding, raw, exc, number) from None
            yield number, line.removeprefix("\ufeff") if number == 1 else line


def _check_text(value: Any, path: Path, line: int, field: str, max_chars: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InputDataError(str(path), f"expected a string, got {type(value).__name__}", line, field)
    if not allow_empty and not value.strip():
        raise InputDataError(str(path), "is empty", line, field)
    if len(value) > max_chars:
        raise InputDataError(str(path), f"is {len(value)} characters long, over the limit of {max_chars} "
                             "(dataset.max_chars)", line, field)
    return value


def _messages_from_json(obj: dict, path: Path, line: int, max_chars: int) -> list[dict[str, str]]:
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise InputDataError(str(path), "must be a non-empty list of {role, content}", line, "messages")
        out = []
        for i, message in enumerate(messages):
            field = f"messages[{i}]"
            if not isinstance(message, dict):
                raise InputDataError(str(path), "must be an object with role and content", line, field)
            role = message.get("role")
            if role not in ROLES:
                raise InputDataError(str(path), f"role {role!r} is not one of {', '.join(ROLES)}", line,
                                     f"{field}.role")
            if role == "system" and i != 0:
                raise InputDataError(str(path), "a system message may only come first", line, f"{field}.role")
            out.append({"role": role,
                        "content": _check_text(message.get("content"), path, line, f"{field}.content", max_chars)})
        if out[-1]["role"] != "assistant":
            raise InputDataError(str(path), "the last message must be the assistant's (the text to learn)",
                                 line, f"messages[{len(out) - 1}].role")
        return out
    if "prompt" in obj or "completion" in obj:
        prompt = _check_text(obj.get("prompt"), path, line, "prompt", max_chars)
        completion = _check_text(obj.get("completion"), path, line, "completion", max_chars)
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if "instruction" in obj or "output" in obj:
        instruction = _check_text(obj.get("instruction"), path, line, "instruction", max_chars)
        extra = _check_text(obj.get("input", ""), path, line, "input", max_chars, allow_empty=True)
        output = _check_text(obj.get("output"), path, line, "output", max_chars)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    raise InputDataError(str(path), "unrecognised record: expected 'messages', 'prompt'+'completion', or "
                         f"'instruction'+'output' (found keys: {', '.join(sorted(obj)) or 'none'})", line)


def read_jsonl(path: Path, lines: Iterator[tuple[int, str]], max_chars: int) -> Iterator[dict]:
    for line_no, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputDataError(str(path), f"malformed JSON: {exc.msg} at column {exc.colno}", line_no) from None
        except RecursionError:
            raise InputDataError(str(path), "nested too deeply", line_no) from None
        if not isinstance(obj, dict):
            raise InputDataError(str(path), f"expected a JSON object, got {type(obj).__name__}", line_no)
        split = obj.get("split")
        if split is not None and split not in SPLITS:
            raise InputDataError(str(path), f"{split!r} is not one of {', '.join(SPLITS)}", line_no, "split")
        meta = obj.get("meta", {})
        if not isinstance(meta, dict):
            raise InputDataError(str(path), "must be an object", line_no, "meta")
        yield {"messages": _messages_from_json(obj, path, line_no, max_chars), "split": split,
               "meta": {**meta, "source_line": line_no}}


def _template_fields(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def read_csv(path: Path, text: str, template: CsvTemplate, max_chars: int) -> Iterator[dict]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise InputDataError(str(path), f"malformed CSV header: {exc}", 1) from None
    header = [h.strip() for h in header]
    parts = {"system": template.system, "user": template.user, "assistant": template.assistant}
    for part, fmt in parts.items():
        if fmt is None:
            continue
        for field in _template_fields(fmt):
            if field not in header:
                raise InputDataError(str(path), f"column referenced by dataset.source.csv_template.{part} is not "
                                     f"in the header (columns: {', '.join(header)})", 1, field)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputDataError(str(path), f"malformed CSV: {exc}", reader.line_num) from None
        line_no = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InputDataError(str(path), f"has {len(row)} cells, the header has {len(header)}", line_no)
        values = dict(zip(header, row, strict=True))
        messages = []
        for part, fmt in parts.items():
            if fmt is None:
                continue
            for field in _template_fields(fmt):
                if not values[field].strip():
                    raise InputDataError(str(path), f"is empty but used by csv_template.{part}", line_no, field)
            content = fmt.format(**values)
            messages.append({"role": part, "content": _check_text(content, path, line_no, f"<{part} text>",
                                                                   max_chars)})
        yield {"messages": messages, "split": None, "meta": {"source_line": line_no}}


def read_text(path: Path, lines: Iterator[tuple[int, str]], max_chars: int) -> Iterator[dict]:
    paragraph: list[str] = []
    start = 0
    for line_no, line in [*lines, (0, "")]:
        if line.strip():
            if not paragraph:
                start = line_no
            paragraph.append(line.strip())
        elif paragraph:
            content = _check_text(" ".join(paragraph), path, start, "paragraph", max_chars)
            yield {"messages": [{"role": "assistant", "content": content}], "split": None,
                   "meta": {"source_line": start}}
            paragraph = []


def read_records(path: Path, fmt: str, encoding: str, max_chars: int, csv_template: CsvTemplate | None = None,
                 max_bytes: int = 1024**3) -> list[dict]:
    """All records of one input file, validated; raises InputDataError on the first problem."""
    fmt = detect_format(path, fmt)
    if fmt == "jsonl":
        records = list(read_jsonl(path, stream_lines(path, encoding, max_bytes), max_chars))
    elif fmt == "csv":
        if csv_template is None:
            raise InputDataError(str(path), "CSV input needs dataset.source.csv_template")
        records = list(read_csv(path, decode(path, encoding, max_bytes), csv_template, max_chars))
    else:
        records = list(read_text(path, stream_lines(path, encoding, max_bytes), max_chars))
    if not records:
        raise InputDataError(str(path), "contains no records")
    return records
