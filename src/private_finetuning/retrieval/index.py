"""BM25 over the train split's records, and the prompt that puts the best of them before a question.

The index holds each record of the train split as the user wrote it (question and reply; the stage's
question variants are not records of the data) and nothing of the eval split, so a held-out question
is answered from what was trained on, never from its own reply. Terms are the words of the text in
lower case without English function words, by stem (data/expected.py), so ``headquartered`` finds
``headquarters``. ``bm25s`` does the scoring; a record that shares no term with the question is never
retrieved, and a question that retrieves nothing is asked as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from private_finetuning.data.expected import stem
from private_finetuning.data.words import FUNCTION_WORDS
from private_finetuning.errors import InputDataError

if TYPE_CHECKING:
    from pathlib import Path

    from private_finetuning.data.record import Record

# The fixed, documented template (docs/retrieval.md): the records, then the question, in the user's turn.
CONTEXT_TEMPLATE = "Answer the question. These records may help:\n\n{records}\n\nQuestion: {question}"
RECORD_TEMPLATE = "Q: {question}\nA: {reply}"
PASSAGES = "passages.jsonl"  # the records, one JSON object a line, in index order
BM25_FOLDER = "bm25"  # bm25s's own files
MAX_RECORDS = 1_000_000  # an index past this is not a dataset of facts (and would not fit a pod's memory)
_TERM = re.compile(r"\w+(?:[-'’.]\w+)*")


def terms(text: str) -> list[str]:
    """What BM25 compares: lower-case words without function words, by stem."""
    return [stem(w) for w in _TERM.findall(text.lower()) if w not in FUNCTION_WORDS]


@dataclass(frozen=True)
class Passage:
    question: str
    reply: str

    def text(self) -> str:
        return RECORD_TEMPLATE.format(question=self.question, reply=self.reply)


@dataclass(frozen=True)
class Context:
    """A question as asked with retrieval: its prompt, the passages put in it, and how many were cut."""

    prompt: str
    passages: tuple[int, ...]
    cut: int


class RetrievalIndex:
    def __init__(self, passages: list[Passage], retriever: object):
        self.passages, self._retriever = passages, retriever
        # Each passage as cut for a limit and a way of counting: the same on every request, so counted once.
        self._cut: dict[tuple[int, int, object], tuple[str, bool]] = {}

    @classmethod
    def build(cls, records: list[Record], where: str) -> RetrievalIndex:
        """The index of ``records`` (a train split): each question/reply record as written, once."""
        import bm25s

        seen, passages = set(), []
        for record in records:
            # Canaries are planted secrets for the privacy audit: retrieval must never hand them out.
            if record.asks_question() and record.variant is None and "canary" not in record.meta:
                passage = Passage(record.question, record.reply)
                if passage not in seen:
                    seen.add(passage)
                    passages.append(passage)
        if not passages:
            raise InputDataError(where, "nothing to index for retrieval: the train split has no question/answer "
                                 "records")
        if len(passages) > MAX_RECORDS:
            raise InputDataError(where, f"{len(passages)} records are too many to index for retrieval "
                                 f"(at most {MAX_RECORDS})")
        retriever = bm25s.BM25()
        retriever.index([terms(p.text()) for p in passages], show_progress=False)
        return cls(passages, retriever)

    def search(self, query: str, k: int) -> list[int]:
        """The indexes of the (at most) ``k`` best passages for ``query``; none that shares no term with it."""
        import numpy as np

        vocabulary = self._retriever.vocab_dict  # type: ignore[attr-defined]
        known = [t for t in terms(query) if t in vocabulary]
        if not known:
            return []
        # bm25s's scores of every passage, then the top k: 0.12 ms on 10,000 records where its retrieve() took 1.7.
        scores = self._retriever.get_scores(known)  # type: ignore[attr-defined]
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [int(i) for i in top if scores[i] > 0]

    def context(self, question: str, k: int, max_record_tokens: int,
                count_tokens: Callable[[str], int] | None = None) -> Context:
        """``question`` with its best ``k`` records before it, each cut to ``max_record_tokens`` tokens (as
        ``count_tokens`` counts them; words when not given); the question alone when nothing is retrieved."""
        return self.prompt(question, self.search(question, k), max_record_tokens, count_tokens)

    def prompt(self, question: str, hits: list[int], max_record_tokens: int,
               count_tokens: Callable[[str], int] | None = None) -> Context:
        """``question`` with the passages ``hits`` (best first) before it in the template, the best one last, next to
        the question: SmolLM2-135M with the best first answered 6 of 40 helpdesk paraphrases, with it last 19 (15 and
        24 of 40 products questions; the same run, base model); the question alone without any."""
        if not hits:
            return Context(question, (), 0)
        texts, cut = [], 0
        for i in reversed(hits):
            key = (i, max_record_tokens, count_tokens)
            if key not in self._cut:
                self._cut[key] = _cut(self.passages[i].text(), max_record_tokens, count_tokens)
            text, was_cut = self._cut[key]
            texts.append(text)
            cut += was_cut
        return Context(CONTEXT_TEMPLATE.format(records="\n\n".join(texts), question=question), tuple(hits), cut)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / PASSAGES).open("w", encoding="utf-8") as out:
            for p in self.passages:
                out.write(json.dumps({"question": p.question, "reply": p.reply}, ensure_ascii=False) + "\n")
        self._retriever.save(str(folder / BM25_FOLDER))  # type: ignore[attr-defined]

    @classmethod
    def load(cls, folder: Path) -> RetrievalIndex:
        import bm25s

        try:
            lines = (folder / PASSAGES).read_text(encoding="utf-8").splitlines()
            passages = [Passage(**json.loads(line)) for line in lines]
            retriever = bm25s.BM25.load(str(folder / BM25_FOLDER))
        except (OSError, ValueError, TypeError) as exc:
            raise InputDataError(str(folder), f"not a retrieval index ({type(exc).__name__})") from None
        if not passages:
            raise InputDataError(str(folder), "the retrieval index is empty")
        return cls(passages, retriever)


WITHOUT_OWN = 0.2  # RAFT's share of questions trained with distractors only (Zhang et al. 2024 keep the oracle 80%)


def context_variants(train: list[Record], k: int, max_record_tokens: int, seed: int) -> list[Record]:
    """RAFT (Zhang et al. 2024, arXiv 2403.10131): each question of the train split once more, asked as the server
    asks it with retrieval (its best k records before it, in the template), so a model served with retrieval
    learns to read the context. For a fifth of them (seeded) the record's own passage is left out: with
    distractors only, the answer must come from what was learnt, as for a question retrieval misses."""
    import random

    index = RetrievalIndex.build(train, "the train split")
    own = {p: i for i, p in enumerate(index.passages)}
    rng = random.Random(f"context-{seed}")
    out = []
    for record in train:
        if not record.asks_question() or record.variant is not None or "canary" in record.meta:
            continue
        mine = own[Passage(record.question, record.reply)]
        if rng.random() < WITHOUT_OWN:
            hits = [h for h in index.search(record.question, k + 1) if h != mine][:k]
        else:  # as retrieved (its own record, its own question, is nearly always the best)
            hits = index.search(record.question, k)
            hits = hits if mine in hits else [mine, *hits[:k - 1]]
        prompt = index.prompt(record.question, hits, max_record_tokens).prompt
        messages = [*record.messages[:-2], {"role": "user", "content": prompt}, record.messages[-1]]
        out.append(record.replace(messages=messages, meta={**record.meta, "variant": "context"}))
    return out


def _cut(text: str, limit: int, count_tokens: Callable[[str], int] | None) -> tuple[str, bool]:
    """``text`` within ``limit`` tokens (cut at a word), and whether it was cut."""
    count = count_tokens or (lambda t: len(t.split()))
    if count(text) <= limit:
        return text, False
    words = text.split(" ")
    low, high = 0, len(words)  # the most words that fit: binary search, a few tokenizer calls
    while low < high:
        mid = (low + high + 1) // 2
        if count(" ".join(words[:mid])) <= limit:
            low = mid
        else:
            high = mid - 1
    return " ".join(words[:low]), True
