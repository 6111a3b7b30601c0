"""The three kinds of x86 host this project meets, simulated, and a guard on every precision the code asks for.

A host kind is what ``/proc/cpuinfo`` flags and OpenVINO's capability list say (``models/host.py``):
:func:`simulate` patches both, so a test's decisions (precision, fallback, refusal) are those of that kind,
whatever machine runs the test. :class:`PrecisionGuard` records each OpenVINO pipeline and compile and each
torch autocast this package opens; the autouse fixture in conftest.py fails a test in which one of them
leaves its precision to the host (as the conversion check once did, failing on every Zen 4 run).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PACKAGE = "private_finetuning"
BASE_FLAGS = ["fpu", "sse4_2", "avx", "avx2", "fma", "f16c"]
# kind -> (cpuinfo flags, OpenVINO's OPTIMIZATION_CAPABILITIES), as read on each kind of machine.
HOST_KINDS: dict[str, tuple[list[str], list[str]]] = {
    "avx2": (BASE_FLAGS, ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]),
    "avx512-bf16": ([*BASE_FLAGS, "avx512f", "avx512_vnni", "avx512_bf16"],
                    ["BF16", "WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"]),
    "amx": ([*BASE_FLAGS, "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"],
            ["BF16", "FP16", "WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"]),
}


def simulate(monkeypatch: pytest.MonkeyPatch, folder: Path, kind: str) -> str:
    """Make this process see a host of ``kind``: its cpuinfo flags and OpenVINO's capabilities."""
    from private_finetuning.models import host

    flags, capabilities = HOST_KINDS[kind]
    cpuinfo = folder / f"cpuinfo-{kind}"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: simulated\nflags\t\t: {' '.join(flags)}\n\n")
    monkeypatch.setattr(host, "CPUINFO", cpuinfo)
    monkeypatch.setattr(host, "openvino_capabilities", lambda: tuple(capabilities))
    assert host.kind() == kind
    return kind


@dataclass
class Call:
    what: str
    caller: str
    asked: dict[str, Any]
    explicit: bool


@dataclass
class PrecisionGuard:
    """What this package asked OpenVINO and torch for, call by call."""

    calls: list[Call] = field(default_factory=list)

    def record(self, what: str, asked: dict[str, Any], explicit: bool, depth: int = 2) -> None:
        caller = sys._getframe(depth).f_globals.get("__name__", "")
        if caller.startswith(PACKAGE):  # libraries' own calls (transformers turning autocast off) are theirs
            self.calls.append(Call(what, caller, asked, explicit))

    def implicit(self) -> list[Call]:
        return [c for c in self.calls if not c.explicit]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> PrecisionGuard:
        import openvino
        import openvino_genai
        import torch

        guard, pipeline, compile_model = self, openvino_genai.ContinuousBatchingPipeline, openvino.Core.compile_model

        def recording_pipeline(*args: Any, **kwargs: Any) -> Any:
            properties = dict(args[3] if len(args) > 3 else kwargs.get("properties", {}))
            guard.record("openvino_genai.ContinuousBatchingPipeline", properties,
                         {"INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION"} <= properties.keys())
            return pipeline(*args, **kwargs)

        def recording_compile(core: Any, model: Any, device: Any = None, config: Any = None, **kwargs: Any) -> Any:
            asked = dict(config or {})
            guard.record("openvino.Core.compile_model", asked, "INFERENCE_PRECISION_HINT" in asked)
            return compile_model(core, model, device, config, **kwargs) if device is not None \
                else compile_model(core, model, **kwargs)

        class RecordingAutocast(torch.autocast):
            def __init__(self, device_type: str, dtype: Any = None, enabled: Any = None, **kwargs: Any):
                guard.record("torch.autocast", {"dtype": dtype, "enabled": enabled},
                             dtype is not None and enabled is not None)
                super().__init__(device_type, dtype=dtype, enabled=True if enabled is None else enabled, **kwargs)

        monkeypatch.setattr(openvino_genai, "ContinuousBatchingPipeline", recording_pipeline)
        monkeypatch.setattr(openvino.Core, "compile_model", recording_compile)
        monkeypatch.setattr(torch, "autocast", RecordingAutocast)
        return self
