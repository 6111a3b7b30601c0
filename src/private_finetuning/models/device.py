"""Choosing the device and precision: CUDA with bf16 when present, the CPU otherwise.

Every precision is explicit: ``auto`` is resolved here once (from :mod:`models.host`), the stage logs
the result and records it in what it publishes, and every autocast names its dtype and whether it is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from private_finetuning.models import host


@dataclass(frozen=True)
class Device:
    """Where a stage computes (``name``: "cuda" or "cpu", as torch names it) and in which precision."""

    name: str
    precision: str  # "bf16" (autocast) or "fp32"
    description: str

    def autocast(self) -> Any:
        """bf16 autocast, on exactly when this device's precision is bf16 (never torch's default for the host)."""
        import torch

        return torch.autocast(device_type=self.name, dtype=torch.bfloat16, enabled=self.precision == "bf16")


def select_device(precision: str, cpu_bf16: bool = True) -> Device:
    """``auto`` picks bf16 on CUDA; on the CPU it picks bf16 only if ``cpu_bf16`` and the CPU has it
    natively (AVX512-BF16, AMX). Serving passes ``cpu_bf16=False``: one-at-a-time generation measured
    slower in bf16 on a CPU."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        chosen = "fp32" if precision == "fp32" else "bf16"
        return Device("cuda", chosen, f"CUDA ({name}), {chosen}")
    chosen = precision
    if precision == "auto":
        chosen = "bf16" if cpu_bf16 and host.torch_has_bf16() else "fp32"
    return Device("cpu", chosen, f"CPU ({torch.get_num_threads()} threads, {host.kind()} host), {chosen}")
