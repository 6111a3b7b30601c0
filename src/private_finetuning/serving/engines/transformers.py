"""The transformers engine: HF ``generate`` on the merged model, in static batches (the exact reference).

The LoRA adapter is merged into the base weights (no adapter overhead per token). A single worker
takes up to ``max_batch_size`` queued requests (waiting at most ``batch_window_ms`` for company) and
generates for the whole batch at once; each request's own deadline or cancellation ends its row
alone. It is the engine on CUDA, and on the CPU the fallback (``serving.engine: transformers``)
whose answers the OpenVINO engine is measured against.
"""

from __future__ import annotations

import logging
import queue
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from private_finetuning.artifacts import promotion
from private_finetuning.artifacts.store import Artifact
from private_finetuning.config import PipelineConfig
from private_finetuning.models.device import Device, select_device
from private_finetuning.models.loading import load_published_model
from private_finetuning.serving.engines.base import Engine, LoadedModel, Request

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("model-inference-server")


class BatchStreamer:
    """Receives each generation step of a batch and forwards text deltas to streaming requests."""

    def __init__(self, requests: list[Request], tokenizer: PreTrainedTokenizerBase, eos_token_ids: list[int]):
        self.requests, self.tokenizer, self.eos = requests, tokenizer, set(eos_token_ids)
        self.tokens: list[list[int]] = [[] for _ in requests]
        self.sent: list[str] = ["" for _ in requests]
        self.finished = [False] * len(requests)
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        now = time.monotonic()
        for row, token in enumerate(value.reshape(-1).tolist()):
            request = self.requests[row]
            if self.finished[row]:
                continue
            if request.cancelled or request.deadline <= now:  # this row alone ends; the others go on
                self.finished[row] = True
                TransformersEngine.finish(request, error="cancelled by the client" if request.cancelled
                              else "generation passed the request deadline")
                continue
            if token in self.eos or len(self.tokens[row]) >= request.max_new_tokens:
                self.finished[row] = True
                continue
            self.tokens[row].append(token)
            if request.stream is not None:
                self.sent[row] = Engine.stream(request, self.tokenizer, self.tokens[row], self.sent[row])

    def end(self) -> None:
        pass

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
        """A stopping criterion too: the batch stops once every row has ended (EOS, length, deadline, cancel)."""
        return all(self.finished)


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, config: PipelineConfig, *, base_model: Path, base_tokenizer: Path, fine_tuned: Path):
        super().__init__(config, base_model=base_model, base_tokenizer=base_tokenizer, fine_tuned=fine_tuned)
        self.device: Device = select_device(self.serving.precision, cpu_bf16=False)

    def _load(self, base: Artifact, tokenizer_artifact: Artifact, adapter: Artifact,
              promoted: promotion.Promotion) -> LoadedModel:
        start = time.monotonic()
        tokenizer, eos = self._tokenizer(tokenizer_artifact)
        model = load_published_model(base.path, adapter.path).to(self.device.name).eval()
        log.info("loaded %s + adapter %s (%s) on %s in %.1fs", base.manifest.name, adapter.manifest.name,
                 adapter.manifest.digest[:12], self.device.description, time.monotonic() - start)
        return LoadedModel(model, tokenizer, eos, adapter.manifest.digest, adapter.manifest.name,
                           adapter_version=promoted.adapter_version, base_digest=base.manifest.digest,
                           report_digest=promoted.report_digest, precision=self.device.precision)

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
            live = [request for request in batch if not self._expired(request, now)]
            groups: dict[tuple[float, float], list[Request]] = {}
            for request in live:
                groups.setdefault(request.sampling_key, []).append(request)
            for group in groups.values():
                try:
                    self._generate(group)
                except Exception as exc:
                    log.exception("generation failed for a batch of %d", len(group))
                    for request in group:
                        self.finish(request, error=f"generation failed: {exc}")

    def _generate(self, batch: list[Request]) -> None:
        from private_finetuning.models.generation import generate

        loaded = self.loaded
        assert loaded is not None
        self.largest_batch = max(self.largest_batch, len(batch))
        temperature, top_p = batch[0].sampling_key
        streamer = BatchStreamer(batch, loaded.tokenizer, loaded.eos_token_ids)
        # The batch may run until its latest deadline: each request's own deadline ends its row alone.
        budget = max(0.05, max(r.deadline for r in batch) - time.monotonic())
        with self.device.autocast():
            results = generate(loaded.model, loaded.tokenizer, [r.prompt_ids for r in batch],
                               max_new_tokens=max(r.max_new_tokens for r in batch),
                               eos_token_ids=loaded.eos_token_ids, device=self.device.name,
                               do_sample=temperature > 0, temperature=temperature or 1.0, top_p=top_p,
                               streamer=streamer, max_time=budget, stopping_criteria=[streamer])
        for row, (request, _) in enumerate(zip(batch, results, strict=True)):
            if request.done.is_set():  # ended early: past its deadline, or cancelled
                continue
            tokens = streamer.tokens[row]
            self.complete(request, loaded.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens),
                          "stop" if streamer.finished[row] and len(tokens) < request.max_new_tokens else "length")

