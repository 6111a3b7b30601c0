"""Serving with retrieval (serving.retrieval): each request's question asked with the train split's best
records before it, exactly as the evaluation judged the served model (retrieval/index.py's template).

The index is the one the evaluation built and published inside the served model it judged (digest-checked
with it); the engine says where (``LoadedModel.retrieval_path``) and this loads it once per path, in the
HTTP process, beside the tokenizer that counts the records' tokens. Retrieved records are private text:
they go into the prompt, never into a log or a metric label.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from private_finetuning.retrieval.index import RetrievalIndex

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from transformers import PreTrainedTokenizerBase

    from private_finetuning.config import RetrievalConfig
    from private_finetuning.serving.engines.base import LoadedModel

RETRIEVAL_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
TEMPLATE_TOKENS = 32  # the context template's own words, on top of the records


class Retrieval:
    def __init__(self, settings: RetrievalConfig, registry: CollectorRegistry):
        self.k, self.max_record_tokens = settings.k, settings.max_record_tokens
        self._index: tuple[str, RetrievalIndex] | None = None
        self._counter: tuple[Any, Callable[[str], int]] | None = None
        self._lock = threading.Lock()
        Gauge("pft_retrieval_enabled", "1: questions are answered with retrieved train records as context",
              registry=registry).set(1)
        self.requests = Counter("pft_retrieval_requests_total", "Requests answered with retrieval",
                                registry=registry)
        self.no_hits = Counter("pft_retrieval_no_hits_total", "Requests that retrieved no record (asked as they are)",
                               registry=registry)
        self.cut = Counter("pft_retrieval_records_cut_total", "Retrieved records cut to retrieval.max_record_tokens",
                           registry=registry)
        self.seconds = Histogram("pft_retrieval_seconds", "Time to retrieve and build the context of a request",
                                 buckets=RETRIEVAL_BUCKETS, registry=registry)

    @property
    def extra_prompt_tokens(self) -> int:
        """What the context may add to a prompt: the request's own limit stays serving.max_prompt_tokens."""
        return self.k * (self.max_record_tokens + 8) + TEMPLATE_TOKENS

    def index(self, path: str) -> RetrievalIndex:
        with self._lock:
            if self._index is None or self._index[0] != path:
                self._index = (path, RetrievalIndex.load(Path(path)))
            return self._index[1]

    def counter(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[str], int]:
        """One token counter per served tokenizer: the index keeps each record's cut by it, counted once."""
        with self._lock:
            if self._counter is None or self._counter[0] is not tokenizer:
                def count(text: str) -> int:
                    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
                self._counter = (tokenizer, count)
            return self._counter[1]

    def apply(self, messages: list[dict[str, str]], loaded: LoadedModel) -> list[dict[str, str]]:
        """``messages`` with the last user question asked with its context (the question alone without a hit)."""
        started = time.perf_counter()
        context = self.index(loaded.retrieval_path).context(messages[-1]["content"], self.k, self.max_record_tokens,
                                                            self.counter(loaded.tokenizer))
        self.requests.inc()
        if not context.passages:
            self.no_hits.inc()
        self.cut.inc(context.cut)
        self.seconds.observe(time.perf_counter() - started)
        return [*messages[:-1], {"role": "user", "content": context.prompt}]
