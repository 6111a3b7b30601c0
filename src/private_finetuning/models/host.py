"""What this CPU computes natively: the one place the code looks at the host.

Left to themselves, torch and OpenVINO pick a precision per host: OpenVINO runs bf16 on any CPU
with AVX512-BF16 or AMX, and a check that compared its tokens with fp32 torch failed there and
nowhere else. So no computation takes its precision from the host; a configuration's ``auto`` is
resolved here, once, logged, and recorded in the artifact it produced. The three kinds of x86 host
this project meets differ in exactly the two things read below (tests simulate each by patching
:data:`CPUINFO` and :func:`openvino_capabilities`):

========================  ==================  ============================  ==================
kind                      ``/proc/cpuinfo``   OpenVINO's capabilities       native bf16
========================  ==================  ============================  ==================
``avx2`` (no AVX-512)     avx2                FP32, INT8                    none
``avx512-bf16`` (Zen 4)   avx512_bf16         BF16, FP32, INT8              torch and OpenVINO
``amx`` (Xeon 4th gen+)   amx_bf16            BF16, FP32, INT8              torch and OpenVINO
========================  ==================  ============================  ==================
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``flags`` in ``/proc/cpuinfo``); empty where it cannot be read."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@cache
def _openvino_capabilities() -> tuple[str, ...]:
    import openvino

    return tuple(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def openvino_capabilities() -> tuple[str, ...]:
    """What OpenVINO's CPU plugin says it can run natively (``BF16`` among them, or not)."""
    return _openvino_capabilities()


def torch_has_bf16() -> bool:
    """AVX512-BF16 or AMX: where bf16 autocast is native (1.8x fp32 on a Zen 4 training step)."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def openvino_has_bf16() -> bool:
    """Whether OpenVINO runs bf16 natively here; elsewhere a bf16 hint would quietly run f32."""
    return "BF16" in openvino_capabilities()


def kind() -> str:
    """The host's kind, in the names of the table above (logged and recorded beside each precision)."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"
