"""A dataset record as the stages exchange it: one line of a published ``train.jsonl`` / ``eval.jsonl``.

The dataset stage turns every input shape (docs/data.md) into chat ``messages`` plus ``meta``; training,
the evaluation and the export read them back as this type, so a field is named once (``answer``: the
fact the reply states; ``fact``: its kind; ``fact_id``/``variant``: question variants, data/augment.py).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from private_finetuning.data import jsonl
from private_finetuning.errors import InputDataError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


@dataclass(frozen=True)
class Record:
    messages: list[Message]
    meta: dict[str, Any] = field(default_factory=dict)
    # The split the input declared for it (train, eval or None: split by the stage); not published.
    split: str | None = None

    @property
    def answer(self) -> str | None:
        """The short fact the reply states, if the record has one (the evaluation scores replies by it)."""
        return self.meta.get("answer")

    @property
    def fact_kind(self) -> str:
        return self.meta.get("fact") or "fact"

    @property
    def question(self) -> str:
        return self.messages[-2]["content"]

    @property
    def reply(self) -> str:
        return self.messages[-1]["content"]

    @property
    def variant(self) -> str | None:
        """The kind of question variant this record is (data/augment.py), None for a record as written."""
        return self.meta.get("variant")

    def asks_question(self) -> bool:
        """Ends on a user question and the assistant's reply: something a model can be asked."""
        return len(self.messages) >= 2 and self.messages[-2]["role"] == "user"

    def is_single_question(self) -> bool:
        """One user question and the assistant's reply, system messages aside: what variants are made of."""
        return [m["role"] for m in self.messages if m["role"] != "system"] == ["user", "assistant"]

    def replace(self, **changes: Any) -> Record:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, "meta": self.meta}

    def dumps(self) -> str:
        """The record's line in a published split: byte-identical for the same record on every run."""
        return json.dumps(self.to_json(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        return cls(messages=data["messages"], meta=data.get("meta") or {})


def read_split(path: Path) -> list[Record]:
    """Every record of a published split (a file the pipeline wrote itself, so its shape is known)."""
    try:
        return [Record.from_json(json.loads(line)) for _, line in jsonl.read_lines(path)]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputDataError(str(path), f"not a published dataset split ({type(exc).__name__})") from None
