"""Self-augmentation: the base model writes more questions and statements of each train fact, once per input.

Runs in the training pod, where the base model is already loaded (before the adapters are added) and the
data never leaves the cluster: for each record as written (not its rule variants, canaries or retrieval
variants), one few-shot prompt per kind (data/generated.py), one greedy completion and
``training.generation.samples`` sampled ones, seeded by the run's seed, in fp32 whatever the host (no autocast:
bf16 on one host kind would write other texts than fp32 on another), on the training device, batched, the
prompts' shared few-shot part computed once per batch. Each text is checked (data/generated.py);
what passes is trained as a variant of its record (same ``fact_id``, ``meta.variant`` ``generated_question``
or ``generated_statement``); a fact with nothing usable keeps its rule variants only.

Completions are cached on the fine-tuned-model volume, keyed by the prompt's version, the generator's
digest, the seed and settings and the record's text: a re-run with the same inputs generates nothing.
The cache holds private text, like the dataset: it stays on the volume, never in a log.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from private_finetuning.data import generated
from private_finetuning.data.canaries import is_canary
from private_finetuning.data.expected import expectations
from private_finetuning.models.generation import generate_after_prefix
from private_finetuning.telemetry.progress import Progress

if TYPE_CHECKING:
    import logging

    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from private_finetuning.config import GenerationSettings
    from private_finetuning.data.record import Record

CACHE_FILE = "generated.jsonl"
LIMITS = {"question": "questions", "statement": "statements"}  # GEN_KINDS' rows -> the settings' counts


@dataclass
class Generated:
    """What self-augmentation adds to the train split, and its counts (never its text)."""

    records: list[Record] = field(default_factory=list)
    counts: dict[str, Counter[str]] = field(default_factory=dict)  # per kind: generated, kept, dropped reasons
    facts_without: int = 0  # facts for which nothing generated was usable (rule variants only)
    generated_now: int = 0  # completions generated in this run (0 when every one was cached)
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"counts": {k: dict(c) for k, c in self.counts.items()}, "facts_without": self.facts_without,
                "generated_now": self.generated_now, "seconds": round(self.seconds, 1), "precision": "fp32"}


def sources(train: list[Record]) -> list[Record]:
    """The records a generator writes for: single questions as written (no variant, no canary)."""
    return [r for r in train if r.variant is None and not is_canary(r) and r.is_single_question()]


def cache_key(kind: str, record: Record, generator_digest: str, seed: int, cfg: GenerationSettings) -> str:
    blob = json.dumps([generated.PROMPT_VERSION, kind, generator_digest, seed, cfg.samples, cfg.temperature,
                       cfg.max_new_tokens, record.question, record.reply])
    return hashlib.sha256(blob.encode()).hexdigest()


def read_cache(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            out[row["key"]] = list(row["completions"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn line of a killed pod: generated again
    return out


def write_cache(path: Path, entries: dict[str, list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"key": k, "completions": v}, ensure_ascii=False) + "\n"
                           for k, v in entries.items()), encoding="utf-8")
    os.replace(tmp, path)


def _complete(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, jobs: list[tuple[str, Record, str]],
              cfg: GenerationSettings, seed: int, eos: list[int], log: logging.Logger,
              device: str) -> list[list[str]]:
    """For each (kind, record, key): its greedy completion, then ``cfg.samples`` sampled ones (seeded per batch).
    A kind's prompts share their few-shot part, computed once per batch (:func:`generate_after_prefix`)."""
    import torch

    out: list[list[str]] = [[] for _ in jobs]
    batches = []
    for kind in dict.fromkeys(k for k, _, _ in jobs):
        rows = [i for i, (k, _, _) in enumerate(jobs) if k == kind]
        parts = [generated.prompt_parts(kind, jobs[i][1].question, jobs[i][1].reply) for i in rows]
        prefix = tokenizer(parts[0][0]).input_ids
        own = {i: tokenizer(p[1], add_special_tokens=False).input_ids for i, p in zip(rows, parts, strict=True)}
        order = sorted(rows, key=lambda i: len(own[i]))
        batches += [(prefix, order[s:s + cfg.batch_size], own) for s in range(0, len(order), cfg.batch_size)]
    meter = Progress(log, "generation batch", (1 + cfg.samples) * len(batches), unit="batches", every_s=10)
    for n, (prefix, rows, own) in enumerate(batches):
        for sample in range(1 + cfg.samples):
            torch.manual_seed(seed * 1_000_003 + n * 101 + sample)
            texts = generate_after_prefix(model, tokenizer, prefix, [own[i] for i in rows],
                                          max_new_tokens=cfg.max_new_tokens, eos_token_ids=eos, device=device,
                                          do_sample=sample > 0,
                                          temperature=cfg.temperature, top_p=0.95)
            for i, (text, _) in zip(rows, texts, strict=True):
                out[i].append(text)
            meter.update()
    return out


def augment_with_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train: list[Record],
                       cfg: GenerationSettings, *, seed: int, generator_digest: str, cache_dir: Path,
                       eos: list[int], log: logging.Logger, device: str = "cpu") -> Generated:
    """Generate (or read from the cache), check and keep the texts for every source record of ``train``."""
    start = time.monotonic()
    records = sources(train)
    facts = expectations(train)
    fact_of = {id(r): f for r, f in zip(train, facts, strict=True)}
    kinds = [k for k in generated.GEN_KINDS if getattr(cfg, LIMITS[k]) > 0]
    cache = read_cache(cache_dir / CACHE_FILE)
    jobs = [(kind, r, cache_key(kind, r, generator_digest, seed, cfg)) for kind in kinds for r in records]
    missing = [(kind, r, key) for kind, r, key in jobs if key not in cache]
    result = Generated(counts={k: Counter() for k in kinds})
    if missing:
        log.info("generation: %d prompts (%d kinds x %d facts) to complete %d times each with the base model "
                 "(%d cached)", len(missing), len(kinds), len(records), 1 + cfg.samples, len(jobs) - len(missing))
        texts = _complete(model, tokenizer, missing, cfg, seed, eos, log, device)
        cache.update({key: t for (_, _, key), t in zip(missing, texts, strict=True)})
        result.generated_now = len(missing) * (1 + cfg.samples)
    write_cache(cache_dir / CACHE_FILE, {key: cache[key] for _, _, key in jobs})  # what this input uses, only
    questions_of: dict[object, list[str]] = {}  # each fact's questions: the record's and its rule variants'
    for r in train:
        questions_of.setdefault(r.meta.get("fact_id"), []).append(r.question)
    by_record: dict[int, list[Record]] = {}
    for kind, record, key in jobs:
        candidates = [t for c in cache[key] for t in generated.parse(c)]
        seen = questions_of[record.meta.get("fact_id")] if kind == "question" else [record.reply]
        kept, dropped = generated.select(kind, candidates, record.question, record.reply, fact_of[id(record)], seen,
                                         getattr(cfg, LIMITS[kind]))
        counts = result.counts[kind]
        counts["generated"] += len(candidates)
        counts["kept"] += len(kept)
        counts.update({f"dropped: {reason}": n for reason, n in dropped.items()})
        by_record.setdefault(id(record), []).extend(_as_records(kind, record, kept))
    result.records = [r for record in records for r in by_record.get(id(record), [])]
    result.facts_without = sum(not by_record.get(id(r)) for r in records)
    result.seconds = time.monotonic() - start
    return result


def _as_records(kind: str, record: Record, texts: list[str]) -> list[Record]:
    """A generated question asks for the record's reply; a generated statement is one more reply to the record's
    question (the fact in other words: a fact seen in several forms is recalled from new questions)."""
    system = [m for m in record.messages if m["role"] == "system"]
    meta = {**record.meta, "variant": f"generated_{kind}"}
    question, reply = record.messages[-2], record.messages[-1]
    return [record.replace(messages=[*system, {"role": "user", "content": text}, dict(reply)] if kind == "question"
                           else [*system, dict(question), {"role": "assistant", "content": text}], meta=meta)
            for text in texts]
