"""The OpenVINO engine: continuous batching on the CPU with OpenVINO GenAI, the CPU default.

It serves the served model the promotion names: the IR the evaluation built for the promoted adapter
(merged in, int8 weights) and judged at one inference precision (``evaluation/served.py``). It
checks that model's digest and that it was built from the promoted adapter and the published base,
and refuses it if this host would run it at another precision than it was judged at (another
precision is another set of answers). Only where the promotion names no served model (a promotion
by hand of an adapter never evaluated here, a record from before served models) does it fuse the
adapter into the base model's IR (``AdapterConfig.MODE_FUSE``, the IR converted by its own stage),
and it says so in /ready and /metrics: those answers were not judged. A hot swap
builds a second pipeline and moves new requests to it; requests already running finish on the old
one, which is dropped when it is empty.

One worker thread owns the pipelines: it admits queued requests (up to ``max_batch_size`` at once),
runs one ``step()`` (every running request advances a token; a new one is prefilled beside them, so
nobody waits for a batch to finish), then reads each request's new tokens, streams them, and ends a
request on its stop token, its length, its deadline or its client's disconnection, alone.
The prompt and its tokens are the transformers engine's (the same tokenizer and chat template).
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from private_finetuning.artifacts import promotion
from private_finetuning.artifacts.store import (
    BASE_MODEL_OPENVINO,
    RETRIEVAL_FOLDER,
    Artifact,
    Manifest,
    current_version,
    open_artifact,
)
from private_finetuning.config import PipelineConfig
from private_finetuning.errors import ArtifactError, ConfigError
from private_finetuning.models import openvino_ir
from private_finetuning.serving.engines.base import Engine, LoadedModel, Request

log = logging.getLogger("model-inference-server")
IDLE_WAIT_S = 0.1  # how long an idle worker blocks on the queue before it looks at its stop flag again


@dataclass
class Running:
    """A request inside a pipeline: its handle, and what it has generated so far."""

    request: Request
    handle: Any
    loaded: LoadedModel  # the model it started on: after a hot swap it finishes there
    tokens: list[int] = field(default_factory=list)
    sent: str = ""


def adapter_alpha(adapter_dir: Path) -> float:
    """The scale OpenVINO GenAI applies to B @ A: peft's lora_alpha / r (or / sqrt(r) for rsLoRA).

    GenAI does not read ``adapter_config.json``; a wrong alpha would serve a different model.
    """
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    rank, alpha = cfg["r"], cfg["lora_alpha"]
    if cfg.get("alpha_pattern") or cfg.get("rank_pattern"):
        raise ArtifactError("the adapter scales some modules differently (alpha_pattern/rank_pattern), which "
                            "OpenVINO GenAI cannot apply; serve it with serving.engine: transformers")
    return alpha / (rank ** 0.5 if cfg.get("use_rslora") else rank)


class OpenVINOEngine(Engine):
    name = "openvino"

    def __init__(self, config: PipelineConfig, *, base_model: Path, base_tokenizer: Path, fine_tuned: Path,
                 base_model_openvino: Path):
        super().__init__(config, base_model=base_model, base_tokenizer=base_tokenizer, fine_tuned=fine_tuned)
        self.base_model_openvino = base_model_openvino
        self._ids = itertools.count()

    def _waiting_for(self, base_manifest: Manifest | None) -> str | None:
        waiting = super()._waiting_for(base_manifest)
        promoted = promotion.current(self.fine_tuned)
        if waiting is None and (promoted is None or not promoted.served_model_version):
            ir = current_version(self.base_model_openvino, BASE_MODEL_OPENVINO.artifact)
            if ir is None or base_manifest is None or ir.metadata.get("base_model_digest") != base_manifest.digest:
                return "the base model's OpenVINO IR (openvino-model-conversion)"
        return waiting

    def _load(self, base: Artifact, tokenizer_artifact: Artifact, adapter: Artifact,
              promoted: promotion.Promotion) -> LoadedModel:
        start = time.monotonic()
        loaded = self._load_served(base, promoted) if promoted.served_model_version else self._load_fused(base, adapter)
        loaded.tokenizer, loaded.eos_token_ids = self._tokenizer(tokenizer_artifact)
        loaded.adapter_digest, loaded.adapter_name = adapter.manifest.digest, adapter.manifest.name
        loaded.adapter_version, loaded.base_digest = promoted.adapter_version, base.manifest.digest
        loaded.report_digest = promoted.report_digest
        how = ("the base IR with the adapter fused (not judged)" if loaded.fallback else
               f"the judged model {loaded.served_model_digest[:12]} ({loaded.weights}, {loaded.precision})")
        log.info("loaded %s + adapter %s (%s) as %s in %.1fs", base.manifest.name, adapter.manifest.name,
                 adapter.manifest.digest[:12], how, time.monotonic() - start)
        return loaded

    def _load_served(self, base: Artifact, promoted: promotion.Promotion) -> LoadedModel:
        """The served model the promotion names, verified, at the precision it was judged at (or refused)."""
        served = promotion.served_model(self.fine_tuned, promoted)
        meta = served.manifest.metadata
        if meta.get("base_model_digest") != base.manifest.digest:
            raise ArtifactError(f"the served model {promoted.served_model_version} was built on base model "
                                f"{str(meta.get('base_model_digest'))[:12]}, not the published "
                                f"{base.manifest.digest[:12]}")
        try:
            precision = openvino_ir.host_precision(self.serving.openvino.precision)
        except ConfigError as exc:
            raise ArtifactError(str(exc)) from None
        if precision != promoted.served_precision:
            raise ArtifactError(f"it was judged at {promoted.served_precision}, but serving.openvino.precision "
                                f"({self.serving.openvino.precision}) is {precision} on this host; another precision "
                                "gives other answers, so it is not served (set the precision it was judged at)")
        judged_with = bool(meta.get("retrieval", False))
        if judged_with != self.serving.retrieval:
            how = "with" if judged_with else "without"
            raise ArtifactError(f"it was judged {how} retrieval, but serving.retrieval is "
                                f"{str(self.serving.retrieval).lower()}; answers with and without context differ, "
                                "so it is not served (set serving.retrieval as it was judged)")
        # As judged: served models from before the key was recorded were judged with OpenVINO's default, u8.
        kv_cache = str(meta.get("kv_cache_precision", "u8"))
        pipeline = openvino_ir.pipeline(served.path, self.serving.openvino, precision=precision,
                                        kv_cache_precision=kv_cache)
        return LoadedModel(pipeline, None, [], "", "", served_model_digest=served.manifest.digest,
                           weights=str(meta.get("weights", "")), precision=precision, kv_cache_precision=kv_cache,
                           retrieval_path=str(served.path / RETRIEVAL_FOLDER) if judged_with else "")

    def _load_fused(self, base: Artifact, adapter: Artifact) -> LoadedModel:
        """The adapter fused into the base model's IR: only where the promotion names no judged model."""
        import openvino_genai

        ir = open_artifact(self.base_model_openvino, BASE_MODEL_OPENVINO.artifact, BASE_MODEL_OPENVINO.kind)
        if ir.manifest.metadata.get("base_model_digest") != base.manifest.digest:
            raise ArtifactError(f"the OpenVINO IR was converted from base model "
                                f"{str(ir.manifest.metadata.get('base_model_digest'))[:12]}, not the published "
                                f"{base.manifest.digest[:12]}")
        fused = openvino_genai.AdapterConfig(openvino_genai.Adapter(str(adapter.path / "adapter_model.safetensors")),
                                             adapter_alpha(adapter.path), openvino_genai.AdapterConfig.Mode.MODE_FUSE)
        try:
            precision = openvino_ir.host_precision(self.serving.openvino.precision)
        except ConfigError as exc:
            raise ArtifactError(str(exc)) from None
        kv_cache = self.serving.openvino.kv_cache_precision
        pipeline = openvino_ir.pipeline(ir.path, self.serving.openvino, precision=precision,
                                        kv_cache_precision=kv_cache, adapters=fused)
        log.warning("the promotion names no served model: the adapter is fused into the base IR, whose answers "
                    "the evaluation did not judge")
        return LoadedModel(pipeline, None, [], "", "", weights="fp32", precision=precision,
                           kv_cache_precision=kv_cache,
                           fallback="the promotion names no served model the evaluation judged (promoted by hand, "
                                    "or before served models existed): the adapter is fused into the base IR")

    # --- the worker ------------------------------------------------------------------------------

    def _work(self) -> None:
        running: list[Running] = []
        while not self._stop.is_set():
            try:
                self._admit(running)
                if running:
                    self._step(running)
            except Exception:  # a fault outside any one request: fail those running, keep the worker alive
                log.exception("the worker loop failed with %d requests running; they are failed, it goes on",
                              len(running))
                for r in running:
                    self.finish(r.request, error="generation failed")
                running.clear()

    def _step(self, running: list[Running]) -> None:
        """One generation step of every pipeline with requests running, then each request's new tokens."""
        self.largest_batch = max(self.largest_batch, len(running))
        try:
            for pipeline in {id(r.loaded.model): r.loaded.model for r in running}.values():
                pipeline.step()
        except Exception as exc:
            log.exception("a generation step failed with %d requests running", len(running))
            for r in running:
                self.finish(r.request, error=f"generation failed: {exc}")
            running.clear()
            return
        now = time.monotonic()
        running[:] = [r for r in running if not self._advance_or_fail(r, now)]

    def _admit(self, running: list[Running]) -> None:
        """Move queued requests into the current pipeline, up to max_batch_size running at once."""
        while len(running) < self.serving.max_batch_size:
            try:
                request = self.queue.get(timeout=IDLE_WAIT_S) if not running else self.queue.get_nowait()
            except queue.Empty:
                return
            loaded = self.loaded
            if self._expired(request, time.monotonic()):
                continue
            if loaded is None:  # cannot happen: requests are refused until a model is loaded
                self.finish(request, error="no model loaded")
                continue
            temperature, top_p = request.sampling_key
            try:
                handle = openvino_ir.add_request(loaded.model, next(self._ids), request.prompt_ids,
                                                 request.max_new_tokens, set(loaded.eos_token_ids), temperature, top_p)
            except Exception as exc:  # this request alone could not be admitted
                log.exception("a request could not be admitted")
                self.finish(request, error=f"generation failed: {exc}")
                continue
            running.append(Running(request, handle, loaded))

    def _advance_or_fail(self, r: Running, now: float) -> bool:
        """:meth:`_advance`, with a failure ending this request alone; True once the request has ended."""
        try:
            return self._advance(r, now)
        except Exception as exc:
            log.exception("reading a request's tokens failed; that request is failed")
            try:
                r.handle.cancel()
            except Exception:  # the handle is what failed: nothing more to stop
                log.debug("cancelling a failed request's handle failed too", exc_info=True)
            if not r.request.done.is_set():
                self.finish(r.request, error=f"generation failed: {exc}")
            return True

    def _advance(self, r: Running, now: float) -> bool:
        """Take the request's new tokens and stream them; True once the request has ended."""
        import openvino_genai

        request, tokenizer, eos = r.request, r.loaded.tokenizer, set(r.loaded.eos_token_ids)
        if r.handle.can_read():
            for output in r.handle.read().values():
                r.tokens.extend(int(t) for t in output.generated_ids)
        tokens = openvino_ir.answer_tokens(r.tokens, eos, request.max_new_tokens)  # cut as the evaluation cuts
        if request.cancelled or request.deadline <= now:
            r.handle.cancel()
            self.finish(request, error="cancelled by the client" if request.cancelled
                        else "generation passed the request deadline")
            return True
        if request.stream is not None:
            r.sent = self.stream(request, tokenizer, tokens, r.sent)
        if r.handle.get_status() == openvino_genai.GenerationStatus.RUNNING:
            return False
        self.complete(request, tokenizer.decode(tokens, skip_special_tokens=True), len(tokens),
                      "length" if len(tokens) >= request.max_new_tokens else "stop")
        return True
