"""JSON Lines as the stages exchange them: one record per ``\\n``-terminated line, read as a stream.

``str.splitlines()`` also breaks at U+2028, U+2029, U+0085 and other characters that a JSON string
may hold unescaped (``json.dumps(..., ensure_ascii=False)`` writes them so): a record holding one
would be cut in two. Every reader of a JSONL file splits at ``\\n`` alone, here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of every non-blank line of the JSONL file at ``path``, without reading it whole."""
    with path.open(encoding="utf-8", newline="\n") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                yield number, line


