"""Readers that turn a company's data files into normalized chat records, or say exactly what is wrong.

A normalized record is a :class:`~private_finetuning.data.record.Record`: chat messages, the split the
file declared (or None) and ``meta``; the last message is the assistant's (what the model learns to say).
One reader per format, in :data:`READERS` (the config's ``dataset.source.format`` choices are checked
against it, and ``auto`` reads a file's extension from it):

- CSV, with a row-to-text template from the config (``{column}`` format strings);
- JSON Lines, a ``.json`` array of records, or a Parquet table, each record in one of the shapes
  of ``shapes.py`` (chat messages, prompt/completion, alpaca, ShareGPT, text);
- plain text: paragraphs separated by blank lines, each learned as an assistant turn.

Every error names file and line (or row) and field. Nothing is truncated or skipped silently: a bad
row stops the stage, because a pipeline that quietly drops part of the private data trains on the
wrong thing.
"""

from __future__ import annotations

import csv
import io
import json
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from private_finetuning.config import CsvTemplate
from private_finetuning.data.record import Record
from private_finetuning.data.shapes import check_text, expected_answer, to_record
from private_finetuning.errors import InputDataError


def detect_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    suffix = path.suffix.lower()
    for name, reader in READERS.items():
        if suffix in reader.suffixes:
            return name
    raise InputDataError(str(path), f"cannot tell the format from the extension {suffix!r}; set "
                         f"dataset.source.format to one of {', '.join(READERS)}")


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


TOO_LONG_NUMBER = "malformed JSON: a number with more digits than can be read (over 4300)"


def read_jsonl(path: Path, lines: Iterator[tuple[int, str]], max_chars: int) -> Iterator[Record]:
    for line_no, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputDataError(str(path), f"malformed JSON: {exc.msg} at column {exc.colno}", line_no) from None
        except ValueError:  # a number of more digits than Python converts (4300): bad input, not a crash
            raise InputDataError(str(path), TOO_LONG_NUMBER, line_no) from None
        except RecursionError:
            raise InputDataError(str(path), "nested too deeply", line_no) from None
        yield to_record(obj, path, line_no, max_chars)


def read_json(path: Path, encoding: str, max_chars: int, max_bytes: int) -> Iterator[Record]:
    """A ``.json`` file: a JSON array of records (the usual ``alpaca_data.json``), or JSON Lines."""
    text = decode(path, encoding, max_bytes)
    if not text.lstrip().startswith("["):
        yield from read_jsonl(path, enumerate(text.split("\n"), start=1), max_chars)
        return
    decoder, position = json.JSONDecoder(), text.index("[") + 1
    try:
        while True:
            position = _skip(text, position, ",")
            if text[position] == "]":
                break
            start = position
            obj, position = decoder.raw_decode(text, position)
            yield to_record(obj, path, text.count("\n", 0, start) + 1, max_chars)
            position = _skip(text, position, "")
            if text[position] not in ",]":
                raise json.JSONDecodeError("expected ',' or ']' after a record", text, position)
    except json.JSONDecodeError as exc:
        raise InputDataError(str(path), f"malformed JSON: {exc.msg} at column {exc.colno}", exc.lineno) from None
    except ValueError:
        raise InputDataError(str(path), TOO_LONG_NUMBER, text.count("\n", 0, position) + 1) from None
    except IndexError:
        raise InputDataError(str(path), "malformed JSON: the array is not closed", text.count("\n") + 1) from None
    except RecursionError:
        raise InputDataError(str(path), "nested too deeply", text.count("\n", 0, position) + 1) from None


def _skip(text: str, position: int, also: str) -> int:
    """The position of the next character that is neither whitespace nor one separator in ``also``."""
    while text[position].isspace() or (also and text[position] == also):
        if text[position] == also:
            also = ""  # one separator at most
        position += 1
    return position


def read_parquet(path: Path, max_chars: int, max_bytes: int) -> Iterator[Record]:
    """A Parquet table: one record per row, with columns named as in JSON (``messages``, ``instruction``...)."""
    import pyarrow.parquet as pq
    from pyarrow import ArrowException

    _check_size(path, max_bytes)
    try:
        table = pq.ParquetFile(path)
        row = 0
        for batch in table.iter_batches(batch_size=1024):
            for obj in batch.to_pylist():
                row += 1
                yield to_record({k: v for k, v in obj.items() if v is not None}, path, f"row {row}", max_chars)
    except ArrowException as exc:
        raise InputDataError(str(path), f"not a readable Parquet file ({exc})") from None


def _template_fields(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def read_csv(path: Path, text: str, template: CsvTemplate, max_chars: int) -> Iterator[Record]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise InputDataError(str(path), f"malformed CSV header: {exc}", 1) from None
    header = [h.strip() for h in header]
    parts = {"system": template.system, "user": template.user, "assistant": template.assistant}
    labels = {"answer": template.answer, "fact": template.fact}
    for part, fmt in {**parts, **labels}.items():
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
            messages.append({"role": part, "content": check_text(content, path, line_no, f"<{part} text>",
                                                                   max_chars)})
        extra = {k: fmt.format(**values) for k, fmt in labels.items() if fmt is not None}
        meta = expected_answer(extra, messages, path, line_no, max_chars)
        yield Record(messages=messages, meta={**meta, "source_line": line_no})


def read_text(path: Path, lines: Iterator[tuple[int, str]], max_chars: int) -> Iterator[Record]:
    paragraph: list[str] = []
    start = 0
    for line_no, line in [*lines, (0, "")]:
        if line.strip():
            if not paragraph:
                start = line_no
            paragraph.append(line.strip())
        elif paragraph:
            content = check_text(" ".join(paragraph), path, start, "paragraph", max_chars)
            yield Record(messages=[{"role": "assistant", "content": content}], meta={"source_line": start})
            paragraph = []


@dataclass(frozen=True)
class ReadOptions:
    """What every reader is given besides the path (dataset.source and dataset in the config)."""

    encoding: str
    max_chars: int
    max_bytes: int
    csv_template: CsvTemplate | None


def _csv(path: Path, o: ReadOptions) -> Iterator[Record]:
    if o.csv_template is None:
        raise InputDataError(str(path), "CSV input needs dataset.source.csv_template")
    return read_csv(path, decode(path, o.encoding, o.max_bytes), o.csv_template, o.max_chars)


@dataclass(frozen=True)
class Reader:
    suffixes: tuple[str, ...]  # the extensions `format: auto` reads as this format
    read: Callable[[Path, ReadOptions], Iterator[Record]]


READERS: dict[str, Reader] = {
    # A table; each row becomes a conversation through dataset.source.csv_template.
    "csv": Reader((".csv",), _csv),
    # A JSON array of records (alpaca_data.json), or JSON Lines.
    "json": Reader((".json",), lambda p, o: read_json(p, o.encoding, o.max_chars, o.max_bytes)),
    # One record per line, in any shape of docs/data.md.
    "jsonl": Reader((".jsonl", ".ndjson"),
                    lambda p, o: read_jsonl(p, stream_lines(p, o.encoding, o.max_bytes), o.max_chars)),
    # A Parquet table, columns named as the JSON shapes' fields.
    "parquet": Reader((".parquet", ".pq"), lambda p, o: read_parquet(p, o.max_chars, o.max_bytes)),
    # Paragraphs separated by blank lines, each learned as a reply.
    "text": Reader((".txt", ".md", ".text"),
                   lambda p, o: read_text(p, stream_lines(p, o.encoding, o.max_bytes), o.max_chars)),
}


def read_records(path: Path, fmt: str, encoding: str, max_chars: int, csv_template: CsvTemplate | None = None,
                 max_bytes: int = 1024**3) -> list[Record]:
    """All records of one input file, validated; raises InputDataError on the first problem."""
    reader = READERS[detect_format(path, fmt)]
    records = list(reader.read(path, ReadOptions(encoding, max_chars, max_bytes, csv_template)))
    if not records:
        raise InputDataError(str(path), "contains no records")
    return records
