"""What every view of the inference server shares, kept on the Flask app (``app.extensions``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app

from private_finetuning.config import ServingConfig
from private_finetuning.serving.engines.base import Engine
from private_finetuning.serving.engines.process import EngineProcess
from private_finetuning.serving.metrics import Metrics
from private_finetuning.serving.retrieval import Retrieval
from private_finetuning.serving.schemas import Bodies

KEY = "private_finetuning"


@dataclass(frozen=True)
class ServerState:
    engine: Engine | EngineProcess  # in this process, or generating in a process of its own
    serving: ServingConfig
    metrics: Metrics
    bodies: Bodies
    retrieval: Retrieval | None = None  # serving.retrieval: questions asked with the train split's best records


def state() -> ServerState:
    return current_app.extensions[KEY]


def served(engine: Engine | EngineProcess) -> dict[str, Any]:
    """Which adapter version is served, on which base, approved by which evaluation report, by which engine;
    for OpenVINO, which judged model (weights, precision) or why it fuses the adapter instead."""
    loaded = engine.loaded
    assert loaded is not None
    out = {"adapter": loaded.adapter_name, "adapter_digest": loaded.adapter_digest,
           "adapter_version": loaded.adapter_version, "base_model_digest": loaded.base_digest,
           "evaluation_report_digest": loaded.report_digest, "engine": engine.name}
    if loaded.precision:
        out.update(precision=loaded.precision, kv_cache_precision=loaded.kv_cache_precision)
    if loaded.served_model_digest:
        out.update(served_model_digest=loaded.served_model_digest, weights=loaded.weights, judged=True)
    if loaded.fallback is not None:
        out.update(judged=False, fallback=loaded.fallback)
    out["retrieval"] = bool(loaded.retrieval_path)  # judged with retrieval, and so served with it
    return out
