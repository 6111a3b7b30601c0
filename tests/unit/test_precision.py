"""Every precision is explicit, and each decision is the documented one on every kind of host.

The guard (tests/hosts.py) records what the code asks OpenVINO and torch for; the ``host_kind`` fixture
makes the code see each kind of x86 host in turn, so these pass or fail the same on any machine."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from hosts import PrecisionGuard
from private_finetuning.config import OpenVINOConfig
from private_finetuning.errors import ConfigError
from private_finetuning.models import host, openvino_ir
from private_finetuning.models.device import Device, select_device

NATIVE_BF16 = {"avx2": False, "avx512-bf16": True, "amx": True}


class Opened(Exception):
    """Raised by a stand-in pipeline once the code has asked for it: what it asked is all a test needs."""


def test_the_conversion_check_compares_at_f32_and_measures_bf16_only_where_it_is_native(
        host_kind: str, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check that failed every Zen 4 run: its pipeline now says f32 (inference and KV cache) on every host."""
    import openvino_genai
    from transformers import AutoModelForCausalLM, AutoTokenizer

    asked: list[dict] = []

    def pipeline(path: str, scheduler: object, device: str, properties: dict) -> object:
        asked.append(properties)
        raise Opened

    monkeypatch.setattr(openvino_genai, "ContinuousBatchingPipeline", pipeline)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with pytest.raises(Opened):
        openvino_ir.check_against(Path("unused"), model, AutoTokenizer.from_pretrained(tiny_model_dir),
                                  OpenVINOConfig())
    assert asked == [{"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}]


def test_a_pipeline_cannot_be_opened_without_a_precision() -> None:
    with pytest.raises(TypeError, match="precision"):
        openvino_ir.pipeline(Path("unused"), OpenVINOConfig())  # type: ignore[call-arg]


def test_autocast_always_names_its_dtype_and_whether_it_is_on(precision_guard: PrecisionGuard) -> None:
    import torch

    for precision in ("fp32", "bf16"):
        with Device("cpu", precision, "test").autocast():
            on = torch.is_autocast_enabled("cpu")
        assert on is (precision == "bf16")
    assert [(c.asked["enabled"], c.explicit) for c in precision_guard.calls] == [(False, True), (True, True)]


def test_the_guard_catches_an_autocast_left_to_the_host(precision_guard: PrecisionGuard) -> None:
    """The guard itself: code of this package that opens autocast without a dtype is recorded as implicit."""
    import torch

    exec("with torch.autocast('cpu'):\n    pass", {"__name__": "private_finetuning.simulated", "torch": torch})
    assert [(c.caller, c.explicit) for c in precision_guard.calls] == [("private_finetuning.simulated", False)]
    precision_guard.calls.clear()  # recorded on purpose: the autouse check must not fail this test


def test_training_precision_auto_follows_the_host_kind_and_says_which(host_kind: str) -> None:
    device = select_device("auto")
    assert device.precision == ("bf16" if NATIVE_BF16[host_kind] else "fp32")
    assert host_kind in device.description
    assert select_device("fp32").precision == "fp32"  # what a user pins holds on every kind
    assert select_device("auto", cpu_bf16=False).precision == "fp32"  # serving and evaluation on a CPU


def test_served_precision_auto_is_f32_everywhere_and_bf16_only_where_native(host_kind: str) -> None:
    assert openvino_ir.host_precision("auto") == "f32" and openvino_ir.host_precision("f32") == "f32"
    if NATIVE_BF16[host_kind]:
        assert openvino_ir.host_precision("bf16") == "bf16"
    else:  # OpenVINO would quietly run f32 while we recorded bf16
        with pytest.raises(ConfigError, match=f"{host_kind}.*no native bf16"):
            openvino_ir.host_precision("bf16")


def test_the_served_model_builder_resolves_its_precision_before_building(host_kind: str, tmp_path: Path) -> None:
    from private_finetuning.config import PipelineConfig
    from private_finetuning.evaluation.served import Builder

    config = PipelineConfig.model_validate({"serving": {"openvino": {"precision": "bf16"}}})
    unused = SimpleNamespace()
    if not NATIVE_BF16[host_kind]:
        with pytest.raises(ConfigError, match="no native bf16"):
            Builder(config, unused, unused, unused, tmp_path)  # type: ignore[arg-type]
        return
    assert Builder(config, unused, unused, unused, tmp_path).precision == "bf16"  # type: ignore[arg-type]
    default = Builder(PipelineConfig(), unused, unused, unused, tmp_path)  # type: ignore[arg-type]
    assert default.precision == "f32"


def test_the_host_kind_is_read_from_the_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "CPUINFO", tmp_path / "missing")
    assert host.cpu_flags() == frozenset() and not host.torch_has_bf16() and host.kind() == "other"
