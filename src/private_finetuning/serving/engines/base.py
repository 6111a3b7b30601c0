"""What every inference engine shares: requests, a bounded queue, and following the promotion.

One model per process. Requests are queued; an engine's worker (``_work``) takes them from the
queue and generates, however it batches (``transformers.py``: static batches with HF ``generate``,
the exact reference; ``openvino.py``: OpenVINO GenAI continuous batching, the CPU default). A full
queue refuses work instead of piling it up.

Only a promoted adapter is served (``promotion.py``): a watcher follows the promotion record, loads
the promoted version on the base model it was trained on (never another), verifies both, and swaps
them in between two steps. A refused promotion is remembered and not tried again until something
else is promoted; a failure that may pass (an I/O error) is retried with backoff; until a first
model is loaded ``/ready`` says why, in words without volume paths.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from private_finetuning.artifacts import promotion
from private_finetuning.artifacts.store import (
    BASE_MODEL,
    BASE_TOKENIZER,
    Artifact,
    Manifest,
    current_version,
    open_artifact,
)
from private_finetuning.config import PipelineConfig
from private_finetuning.data.chat import encode_prompt, with_system
from private_finetuning.errors import ArtifactError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("model-inference-server")


# Below this, sampling is greedy decoding in all but name, and logits / temperature can overflow to inf.
MIN_TEMPERATURE = 1e-3


class QueueFull(Exception):
    """Too many requests waiting; the client should retry later."""


@dataclass
class LoadedModel:
    model: Any  # what generates: a torch model, an OpenVINO pipeline, or the adapter's name in vLLM
    tokenizer: PreTrainedTokenizerBase
    eos_token_ids: list[int]
    adapter_digest: str
    adapter_name: str
    adapter_version: str = ""
    base_digest: str = ""
    report_digest: str | None = None
    loaded_at: float = field(default_factory=time.time)
    # The OpenVINO engine's served model: the judged IR's digest, its weights and precision; or, where the
    # promotion names none, why the adapter is fused into the base IR instead (answers the evaluation did not see).
    served_model_digest: str = ""
    weights: str = ""
    precision: str = ""
    kv_cache_precision: str = ""
    fallback: str | None = None
    tokenizer_path: str = ""  # the published tokenizer it encodes with (the engine process's parent loads it too)
    retrieval_path: str = ""  # the retrieval index judged with the served model (serving.retrieval), "" without
    promotion: tuple[str, ...] = ()  # the promotion's ``served`` identity this model was loaded for


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
    cancelled: bool = False  # the client went away: stop spending tokens on it
    unavailable: bool = False  # its error is the server's state (engine process down, queue full): 503, retry

    @property
    def sampling_key(self) -> tuple[float, float]:
        return (self.temperature, self.top_p) if self.temperature >= MIN_TEMPERATURE else (0.0, 1.0)


class Engine:
    name = "engine"  # which implementation: logged, and in /metrics

    def __init__(self, config: PipelineConfig, *, base_model: Path, base_tokenizer: Path, fine_tuned: Path):
        self.config, self.serving = config, config.serving
        self.base_model, self.base_tokenizer, self.fine_tuned = base_model, base_tokenizer, fine_tuned
        self.queue: queue.Queue[Request] = queue.Queue(maxsize=self.serving.queue_size)
        self.loaded: LoadedModel | None = None
        self.status = "starting"
        self.generated_tokens = 0
        self.largest_batch = 0
        self.refused: dict[tuple[str, ...], str] = {}  # a promotion's served identity -> why; not retried
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
        return self.loaded is not None and self.worker_alive

    @property
    def worker_alive(self) -> bool:
        """Whether the thread that answers requests still runs (liveness: a dead one is never coming back)."""
        return all(t.is_alive() for t in self._threads if t.name == "batch-worker")

    @property
    def down_reason(self) -> str:
        """Why /health fails when the worker is not alive."""
        return "the generation worker has stopped; the server cannot answer and must be restarted"

    def queue_depth(self) -> int:
        return self.queue.qsize()

    def process_info(self) -> dict[str, Any]:
        """What /ready adds about where generation runs ({}: in this process)."""
        return {}

    def _load_then_watch(self) -> None:
        """Follow the promotion for as long as the server runs; a first failure is never the last word."""
        backoff = 1.0
        while not self._stop.is_set():
            try:
                self._follow_promotion()
                backoff = 1.0
            except Exception as exc:  # an I/O error, say: worth another try, later and later
                self.status = f"not ready: loading failed ({self._public(exc)}); retrying in {backoff:.0f}s"
                log.warning("loading the promoted model failed, retrying in %.0fs: %s", backoff, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            self._stop.wait(self.serving.adapter_poll_interval_s if self.loaded else min(2.0, backoff))

    def _follow_promotion(self) -> None:
        promoted = promotion.current(self.fine_tuned)
        if promoted is None:
            self.status = "waiting for an adapter that evaluation has promoted"
            return
        loaded = self.loaded
        key = promoted.served
        if loaded is not None and loaded.promotion == key:
            return  # already serving exactly what this promotion names
        if key in self.refused:
            return  # refused before: wait for another promotion instead of reloading it every poll
        base_manifest = current_version(self.base_model, BASE_MODEL.artifact)
        waiting = self._waiting_for(base_manifest)
        if waiting:
            self.status = f"waiting for {waiting}"
            return
        assert base_manifest is not None
        try:
            self._check_pair(promoted, base_manifest.digest)
            adapter = promotion.adapter_of(self.fine_tuned, promoted)
            base = open_artifact(self.base_model, BASE_MODEL.artifact, BASE_MODEL.kind)
            tokenizer = open_artifact(self.base_tokenizer, BASE_TOKENIZER.artifact, BASE_TOKENIZER.kind)
            self._check_pair(promoted, base.manifest.digest)  # the base may have changed since the first look
            self._check_tokenizer(promoted, adapter.manifest, tokenizer.manifest.digest)
            self.status = "loading the model"
            fresh = self._load(base, tokenizer, adapter, promoted)
            fresh.tokenizer_path, fresh.promotion = str(tokenizer.path), key
            if self.serving.retrieval and not fresh.retrieval_path:
                raise ArtifactError("serving.retrieval is on, but the promotion names no served model judged with "
                                    "retrieval (re-run the evaluation with serving.retrieval: true)")
        except ArtifactError as exc:
            self.refused[key] = self._public(exc)
            still = f"still serving {loaded.adapter_digest[:12]}" if loaded else "nothing else to serve"
            log.error("promoted adapter %s refused (%s): %s", promoted.adapter_digest[:12], still, exc)
            if loaded is None:
                self.status = f"not ready: promoted adapter {promoted.adapter_digest[:12]} refused: {self.refused[key]}"
            return
        self.loaded = fresh  # one reference assignment: the worker picks it up at its next batch
        self.status = "ready"
        log.info("now serving adapter %s (version %s, promoted by %s)", fresh.adapter_digest[:12],
                 fresh.adapter_version, promoted.promoted_by)

    def _waiting_for(self, base_manifest: Manifest | None) -> str | None:
        """What the engine still needs published before it can load anything, in words; None when nothing."""
        if base_manifest is None or current_version(self.base_tokenizer, BASE_TOKENIZER.artifact) is None:
            return "the base model and base tokenizer"
        return None

    @staticmethod
    def _check_pair(promoted: promotion.Promotion, base_digest: str) -> None:
        if promoted.base_model_digest != base_digest:
            raise ArtifactError(f"it was trained on base model {promoted.base_model_digest[:12]}, but the published "
                                f"base model is {base_digest[:12]}; an adapter is never merged into another base")

    @staticmethod
    def _check_tokenizer(promoted: promotion.Promotion, adapter: Manifest, tokenizer_digest: str) -> None:
        expected = promoted.tokenizer_digest(adapter)
        if expected and expected != tokenizer_digest:
            raise ArtifactError(f"it was trained with base tokenizer {expected[:12]}, but the published base tokenizer "
                                f"is {tokenizer_digest[:12]}; another chat template or end-of-turn ids would change "
                                "its answers")

    def _public(self, exc: Exception) -> str:
        """An error for /ready: the volumes named by what they are, not by where they are mounted."""
        text = str(exc)
        for path, name in ((self.fine_tuned, "fine-tuned-model"), (self.base_model, "base-model"),
                           (self.base_tokenizer, "base-tokenizer")):
            text = text.replace(str(path.resolve()), name).replace(str(path), name)
        return re.sub(r"(?<![\w.-])/[^\s:,;]+", lambda m: Path(m.group(0)).name, text)

    def _load(self, base: Artifact, tokenizer_artifact: Artifact, adapter: Artifact,
              promoted: promotion.Promotion) -> LoadedModel:
        """The promoted adapter on its base, ready to generate (each engine loads it its own way)."""
        raise NotImplementedError

    @staticmethod
    def _tokenizer(tokenizer_artifact: Artifact) -> tuple[Any, list[int]]:
        """The base tokenizer every engine encodes prompts with, and the ids that end the assistant's turn."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_artifact.path, local_files_only=True)
        return tokenizer, tokenizer_artifact.manifest.metadata.get("end_of_turn_ids") or [tokenizer.eos_token_id]

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

    def _work(self) -> None:
        """Take requests from the queue and answer them until stopped (each engine batches its own way)."""
        raise NotImplementedError

    def _expired(self, request: Request, now: float) -> bool:
        """Finish a request that waited past its deadline before it got to the model; True if it did."""
        if request.deadline > now:
            return False
        self.finish(request, error="the request waited past its deadline")
        return True

    @staticmethod
    def stream(request: Request, tokenizer: PreTrainedTokenizerBase, tokens: list[int], sent: str) -> str:
        """Send a streaming request the text its ``tokens`` add to what was ``sent``; what is sent now.

        Text that ends inside a multi-byte character waits for the rest of it."""
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        if request.stream is None or text.endswith("\ufffd"):
            return sent
        if text[len(sent):]:
            request.stream.put(text[len(sent):])
        return text

    def complete(self, request: Request, text: str, completion_tokens: int, finish_reason: str) -> None:
        """A request answered in full: its text, token count and why it stopped, counted in the metrics."""
        request.text, request.completion_tokens, request.finish_reason = text.strip(), completion_tokens, finish_reason
        self.generated_tokens += completion_tokens
        self.finish(request)

    @staticmethod
    def finish(request: Request, error: str | None = None) -> None:
        request.error = error
        if request.stream is not None:
            request.stream.put(None)
        request.done.set()
