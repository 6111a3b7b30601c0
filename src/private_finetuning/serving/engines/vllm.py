"""The vLLM engine (GPU): this server's HTTP layer in front of a vLLM OpenAI server in the same pod.

vLLM runs as a sidecar (``k8s/overlays/gpu``) on the base model, with runtime LoRA enabled; it does
the continuous batching, the paged KV cache and the CUDA kernels. This engine keeps everything the
other engines give clients (``/prompt``, the OpenAI routes, validation, probes, metrics, deadlines,
the system prompt, only a promoted adapter) and hands generation over: each request becomes a
streaming ``/v1/completions`` call with the prompt's token ids and the promoted adapter's name. A
promotion loads the adapter into vLLM under its version (``/v1/load_lora_adapter``), moves new
requests to it, and unloads the old one once no request uses it: a hot swap without a restart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from private_finetuning.artifacts import promotion
from private_finetuning.artifacts.store import Artifact
from private_finetuning.config import PipelineConfig
from private_finetuning.errors import ArtifactError
from private_finetuning.serving.engines.base import Engine, LoadedModel, Request

log = logging.getLogger("model-inference-server")


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, config: PipelineConfig, *, base_model: Path, base_tokenizer: Path, fine_tuned: Path,
                 url: str):
        super().__init__(config, base_model=base_model, base_tokenizer=base_tokenizer, fine_tuned=fine_tuned)
        self.url = url.rstrip("/")
        self.in_flight: dict[str, int] = {}  # adapter name in vLLM -> requests using it
        self.vllm_base: str | None = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.serving.max_batch_size)

    # --- talking to vLLM ---------------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any], timeout: float = 120) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        return urllib.request.urlopen(request, timeout=timeout)  # the sidecar, on loopback

    def _load(self, base: Artifact, tokenizer_artifact: Artifact, adapter: Artifact,
              promoted: promotion.Promotion) -> LoadedModel:
        name = promoted.adapter_version or adapter.manifest.digest[:12]
        self.vllm_base = self.vllm_base or base.manifest.digest  # what vLLM loaded when the pod started
        if base.manifest.digest != self.vllm_base:
            raise ArtifactError(f"vLLM runs base model {self.vllm_base[:12]}, loaded when the pod started; the "
                                f"adapter was trained on {base.manifest.digest[:12]}: restart the pod to serve it")
        try:
            with self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(adapter.path)}):
                pass
        except urllib.error.HTTPError as exc:
            said = exc.read().decode(errors="replace")[:300]
            if exc.code == 400 and "already been loaded" in said:
                # This front restarted beside a sidecar that kept the adapter: the name is the version folder,
                # whose digest was verified on the volume, so what vLLM holds is this very adapter.
                log.info("vLLM already holds adapter %s as %s (this server restarted); serving it",
                         adapter.manifest.digest[:12], name)
            elif exc.code in (400, 404, 422):  # vLLM refused the adapter itself: not worth another try
                raise ArtifactError(f"vLLM refused the adapter: {said}") from None
            else:
                raise
        tokenizer, eos = self._tokenizer(tokenizer_artifact)
        previous = self.loaded
        log.info("vLLM loaded adapter %s (%s) as %s", adapter.manifest.name, adapter.manifest.digest[:12], name)
        if previous is not None:
            threading.Thread(target=self._unload_when_idle, args=(previous.model,), daemon=True).start()
        return LoadedModel(name, tokenizer, eos, adapter.manifest.digest, adapter.manifest.name,
                           adapter_version=promoted.adapter_version, base_digest=base.manifest.digest,
                           report_digest=promoted.report_digest)

    def _follow_promotion(self) -> None:
        self._check_sidecar()
        super()._follow_promotion()

    def _check_sidecar(self) -> None:
        """Whether vLLM still holds the adapter being served. A restarted sidecar has forgotten it: the server
        turns unready (no request is sent to an adapter vLLM does not have) and loads it again."""
        loaded = self.loaded
        if loaded is None:
            return
        try:
            with urllib.request.urlopen(f"{self.url}/v1/models", timeout=10) as response:
                names = {m.get("id") for m in json.loads(response.read()).get("data", [])}
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.loaded, self.status = None, "not ready: the vLLM sidecar does not answer"
            log.warning("the vLLM sidecar does not answer (%s); not ready until it serves the adapter again", exc)
            return
        if loaded.model not in names:
            self.loaded, self.status = None, "not ready: the vLLM sidecar lost the adapter; loading it again"
            log.warning("vLLM no longer holds adapter %s (the sidecar restarted?); loading it again", loaded.model)

    def _unload_when_idle(self, name: str) -> None:
        """Unload a replaced adapter from vLLM once the requests that started on it have finished."""
        while self.in_flight.get(name, 0) and not self._stop.is_set():
            time.sleep(0.2)
        try:
            with self._post("/v1/unload_lora_adapter", {"lora_name": name}):
                log.info("vLLM unloaded the replaced adapter %s", name)
        except (urllib.error.URLError, OSError) as exc:
            log.warning("could not unload the replaced adapter %s from vLLM: %s", name, exc)

    # --- the worker ------------------------------------------------------------------------------

    def _work(self) -> None:
        """Hand each queued request to vLLM on a thread of its own, at most max_batch_size at once."""
        while not self._stop.is_set():
            request = self.queue.get()
            if self._expired(request, time.monotonic()):
                continue
            self._slots.acquire()
            loaded = self.loaded
            assert loaded is not None  # requests are refused until a model is loaded
            with self._lock:
                self.in_flight[loaded.model] = self.in_flight.get(loaded.model, 0) + 1
                self.largest_batch = max(self.largest_batch, sum(self.in_flight.values()))
            threading.Thread(target=self._generate, args=(request, loaded), daemon=True).start()

    def _generate(self, request: Request, loaded: LoadedModel) -> None:
        try:
            self._stream(request, loaded)
        except Exception as exc:  # vLLM down or restarting: this request fails, the server goes on
            log.warning("generation through vLLM failed: %s", exc)
            self.finish(request, error=f"generation failed: {type(exc).__name__}")
        finally:
            with self._lock:
                self.in_flight[loaded.model] -= 1
            self._slots.release()

    def _stream(self, request: Request, loaded: LoadedModel) -> None:
        temperature, top_p = request.sampling_key
        body = {"model": loaded.model, "prompt": request.prompt_ids, "max_tokens": request.max_new_tokens,
                "temperature": temperature, "top_p": top_p, "stop_token_ids": loaded.eos_token_ids,
                "skip_special_tokens": True, "stream": True, "stream_options": {"include_usage": True}}
        text, finish, tokens = "", "stop", 0
        with self._post("/v1/completions", body, timeout=max(1.0, request.deadline - time.monotonic())) as response:
            for raw in response:
                if request.cancelled or request.deadline <= time.monotonic():
                    # Closing the connection makes vLLM abort the request: no tokens spent on it.
                    self.finish(request, error="cancelled by the client" if request.cancelled
                                else "generation passed the request deadline")
                    return
                line = raw.decode().strip()
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[len("data: "):])
                for choice in chunk.get("choices", []):
                    delta = choice.get("text") or ""
                    text += delta
                    if delta and request.stream is not None:
                        request.stream.put(delta)
                    finish = choice.get("finish_reason") or finish
                tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
        self.complete(request, text, tokens, "length" if finish == "length" else "stop")
