"""The inference engine: the fine-tuned model in memory, a bounded queue, and a batching worker.

One model per process, the LoRA adapter merged into the base weights (no adapter overhead per
token). Requests are queued; a single worker takes up to ``max_batch_size`` of them (waiting at most
``batch_window_ms`` for company) and generates for the whole batch at once, which is where the
throughput under concurrency comes from. A full queue refuses work instead of piling it up.
Streaming requests get their tokens as they are generated, from inside the batch.

A watcher polls the fine-tuned-model volume: when a new adapter is published it is loaded and
verified next to the current one, and swapped in between two batches; a broken one is refused and
the current model keeps serving.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from private_finetuning.artifacts import Artifact, current_version, open_artifact
from private_finetuning.chat import encode_prompt, with_system
from private_finetuning.config import PipelineConfig
from private_finetuning.errors import PipelineError
from private_finetuning.hf_io import load_published_model
from private_finetuning.runtime import Runtime, select_runtime
from private_finetuning.stages import peft_training
from private_finetuning.stages.common import wait_for_output

log = logging.getLogger("model-inference-server")


# Below this, sampling is greedy decoding in all but name, and logits / temperature can overflow to inf.
MIN_TEMPERATURE = 1e-3


class QueueFull(Exception):
    """Too many requests waiting; the client should retry later."""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    eos_token_ids: list[int]
    adapter_digest: str
    adapter_name: str
    loaded_at: float = field(default_factory=time.time)


@dataclass
class Request:
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    deadline: float
    stream: queue.Queue | None = None
    done: threading.Event = field(default_factory=threading.Event)
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str = "stop"
    error: str | None = None

    @property
    def sampling_key(self) -> tuple[float, float]:
        return (self.temperature, self.top_p) if self.temperature >= MIN_TEMPERATURE else (0.0, 1.0)


class BatchStreamer:
    """Receives each generation step of a batch and forwards text deltas to streaming requests."""

    def __init__(self, requests: list[Request], tokenizer: Any, eos_token_ids: list[int]):
        self.requests, self.tokenizer, self.eos = requests, tokenizer, set(eos_token_ids)
        self.tokens: list[list[int]] = [[] for _ in requests]
        self.sent: list[str] = ["" for _ in requests]
        self.finished = [False] * len(requests)
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            request = self.requests[row]
            if self.finished[row]:
                continue
            if token in self.eos or len(self.tokens[row]) >= request.max_new_tokens:
                self.finished[row] = True
                continue
            self.tokens[row].append(token)
            if request.stream is not None:
                text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
                if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                    delta, self.sent[row] = text[len(self.sent[row]):], text
                    if delta:
                        request.stream.put(delta)

    def end(self) -> None:
        pass


class Engine:
    def __init__(self, config: PipelineConfig, *, base_model: Path, base_tokenizer: Path, fine_tuned: Path):
        self.config, self.serving = config, config.serving
        self.base_model, self.base_tokenizer, self.fine_tuned = base_model, base_tokenizer, fine_tuned
        self.queue: queue.Queue[Request] = queue.Queue(maxsize=self.serving.queue_size)
        self.loaded: LoadedModel | None = None
        self.runtime: Runtime = select_runtime(self.serving.precision, cpu_bf16=False)
        self.status = "starting"
        self.generated_tokens = 0
        self.largest_batch = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Engine:
        for target, name in ((self._load_then_watch, "adapter-loader"), (self._work, "batch-worker")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def ready(self) -> bool:
        return self.loaded is not None

    def _load_then_watch(self) -> None:
        from private_finetuning.stages import model_relocation, tokenizer_relocation

        config, forever = self.config, float("inf")  # a server waits as long as it takes
        try:
            self.status = "waiting for the base model, base tokenizer and a published adapter"
            base = wait_for_output(config, self.base_model, model_relocation, timeout_s=forever)
            tokenizer = wait_for_output(config, self.base_tokenizer, tokenizer_relocation, timeout_s=forever)
            adapter = wait_for_output(config, self.fine_tuned, peft_training, timeout_s=forever)
            self.status = "loading the model"
            self.loaded = self._load(base, tokenizer, adapter)
            self.status = "ready"
        except Exception as exc:  # the server stays up and says why it is not ready
            self.status = f"not ready: {exc}"
            log.error("cannot load the model: %s", exc)
            return
        while not self._stop.wait(self.serving.adapter_poll_interval_s):
            self._swap_if_new(base, tokenizer)

    def _load(self, base: Artifact, tokenizer_artifact: Artifact, adapter: Artifact) -> LoadedModel:
        from transformers import AutoTokenizer

        start = time.monotonic()
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_artifact.path, local_files_only=True)
        model = load_published_model(base.path, adapter.path).to(self.runtime.device).eval()
        eos = tokenizer_artifact.manifest.metadata.get("end_of_turn_ids") or [tokenizer.eos_token_id]
        log.info("loaded %s + adapter %s (%s) on %s in %.1fs", base.manifest.name, adapter.manifest.name,
                 adapter.manifest.digest[:12], self.runtime.description, time.monotonic() - start)
        return LoadedModel(model, tokenizer, eos, adapter.manifest.digest, adapter.manifest.name)

    def _swap_if_new(self, base: Artifact, tokenizer: Artifact) -> None:
        try:
            manifest = current_version(self.fine_tuned, peft_training.ARTIFACT)
        except PipelineError as exc:
            log.warning("cannot read the published adapter: %s", exc)
            return
        if manifest is None or self.loaded is None or manifest.digest == self.loaded.adapter_digest:
            return
        log.info("a new adapter was published (%s); loading it beside the current one", manifest.digest[:12])
        try:
            adapter = open_artifact(self.fine_tuned, peft_training.ARTIFACT, peft_training.KIND)
            fresh = self._load(base, tokenizer, adapter)
        except Exception as exc:
            log.error("the new adapter was refused, still serving %s: %s", self.loaded.adapter_digest[:12], exc)
            return
        self.loaded = fresh  # one reference assignment: the worker picks it up at its next batch
        log.info("now serving adapter %s", fresh.adapter_digest[:12])

    # --- requests --------------------------------------------------------------------------------

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        assert self.loaded is not None
        return encode_prompt(self.loaded.tokenizer, with_system(messages, self.config.prompting.system_prompt))

    def submit(self, request: Request) -> Request:
        try:
            self.queue.put_nowait(request)
        except queue.Full:
            raise QueueFull from None
        return request

    def _next_batch(self) -> list[Request]:
        first = self.queue.get()
        batch = [first]
        until = time.monotonic() + self.serving.batch_window_ms / 1000
        while len(batch) < self.serving.max_batch_size:
            remaining = until - time.monotonic()
            try:
                batch.append(self.queue.get(timeout=max(remaining, 0)) if remaining > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _work(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            now = time.monotonic()
            live = []
            for request in batch:
                if request.deadline <= now:
                    self._finish(request, error="the request waited past its deadline")
                else:
                    live.append(request)
            groups: dict[tuple[float, float], list[Request]] = {}
            for request in live:
                groups.setdefault(request.sampling_key, []).append(request)
            for group in groups.values():
                try:
                    self._generate(group)
                except Exception as exc:
                    log.exception("generation failed for a batch of %d", len(group))
                    for request in group:
                        self._finish(request, error=f"generation failed: {exc}")

    def _generate(self, batch: list[Request]) -> None:
        from private_finetuning.generation import generate

        loaded = self.loaded
        assert loaded is not None
        self.largest_batch = max(self.largest_batch, len(batch))
        temperature, top_p = batch[0].sampling_key
        streamer = BatchStreamer(batch, loaded.tokenizer, loaded.eos_token_ids)
        budget = max(0.05, min(r.deadline for r in batch) - time.monotonic())
        with self.runtime.autocast():
            results = generate(loaded.model, loaded.tokenizer, [r.prompt_ids for r in batch],
                               max_new_tokens=max(r.max_new_tokens for r in batch),
                               eos_token_ids=loaded.eos_token_ids, device=self.runtime.device,
                               do_sample=temperature > 0, temperature=temperature or 1.0, top_p=top_p,
                               streamer=streamer, max_time=budget)
        for row, (request, _) in enumerate(zip(batch, results, strict=True)):
            tokens = streamer.tokens[row]
            request.text = loaded.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            request.completion_tokens = len(tokens)
            request.finish_reason = "stop" if streamer.finished[row] and len(tokens) < request.max_new_tokens \
                else "length"
            self.generated_tokens += len(tokens)
            self._finish(request)

    @staticmethod
    def _finish(request: Request, error: str | None = None) -> None:
        request.error = error
        if request.stream is not None:
            request.stream.put(None)
        request.done.set()
