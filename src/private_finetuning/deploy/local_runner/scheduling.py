"""The node a local run pretends to be, and kube-scheduler's resource fit check against it.

A pod is placed only when its requests fit what is left of the node's allocatable CPU and memory
after the requests of the pods already running; otherwise it stays Pending, and the reason is the
one ``kubectl describe pod`` shows ("0/1 nodes are available: 1 Insufficient cpu."). Limits play no
part in scheduling: they are what an engine enforces once the pod runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from private_finetuning.errors import ConfigError

_MEMORY_SUFFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)$")


def parse_cpu(value: str | int | float, where: str = "cpu") -> int:
    """A Kubernetes CPU quantity ("2", "500m", 1.5) in millicores."""
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group(2) not in ("", "m"):
        raise ConfigError(f"{where}: {value!r} is not a CPU quantity (e.g. 2, 1.5 or 500m)")
    number = float(match.group(1))
    return round(number if match.group(2) == "m" else number * 1000)


def parse_memory(value: str | int, where: str = "memory") -> int:
    """A Kubernetes memory quantity ("8Gi", "512Mi", "1G", 1048576) in bytes."""
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group(2) not in _MEMORY_SUFFIXES:
        raise ConfigError(f"{where}: {value!r} is not a memory quantity (e.g. 8Gi, 512Mi or 1G)")
    return round(float(match.group(1)) * _MEMORY_SUFFIXES[match.group(2)])


def format_memory(size: int) -> str:
    for suffix, factor in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size >= factor:
            return f"{size / factor:.1f}{suffix}".replace(".0" + suffix, suffix)
    return str(size)


def format_cpu(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


@dataclass(frozen=True)
class Resources:
    """CPU in millicores and memory in bytes; None where the manifest says nothing."""

    cpu: int | None = None
    memory: int | None = None

    @classmethod
    def parse(cls, spec: dict[str, object], where: str) -> Resources:
        return cls(cpu=parse_cpu(spec["cpu"], f"{where}.cpu") if "cpu" in spec else None,  # type: ignore[arg-type]
                   memory=parse_memory(spec["memory"], f"{where}.memory") if "memory" in spec else None)  # type: ignore[arg-type]

    @classmethod
    def total(cls, items: Iterable[Resources]) -> Resources:
        """What several pods request together (a request left unsaid counts as nothing)."""
        listed = list(items)
        return cls(cpu=sum(r.cpu or 0 for r in listed), memory=sum(r.memory or 0 for r in listed))

    def __str__(self) -> str:
        cpu = format_cpu(self.cpu) if self.cpu is not None else "-"
        memory = format_memory(self.memory) if self.memory is not None else "-"
        return f"cpu {cpu}, memory {memory}"


def _this_machine_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass
class Node:
    """One node's allocatable resources and what the running pods have requested of it."""

    cpu: int
    memory: int

    def __post_init__(self) -> None:
        self.requested: dict[str, Resources] = {}

    @classmethod
    def this_machine(cls, cpus: str | None = None, memory: str | None = None) -> Node:
        """The node given by --node-cpus / --node-memory, each defaulting to this machine's."""
        return cls(cpu=parse_cpu(cpus, "--node-cpus") if cpus else (os.cpu_count() or 1) * 1000,
                   memory=parse_memory(memory, "--node-memory") if memory else _this_machine_memory())

    @property
    def free(self) -> Resources:
        used = Resources.total(self.requested.values())
        return Resources(cpu=self.cpu - (used.cpu or 0), memory=self.memory - (used.memory or 0))

    def unfit(self, requests: Resources, against: Resources | None = None) -> list[str]:
        """What is short for these requests ("cpu", "memory"); empty when the pod fits."""
        room = against or self.free
        short = []
        if (requests.cpu or 0) > (room.cpu or 0):
            short.append("cpu")
        if (requests.memory or 0) > (room.memory or 0):
            short.append("memory")
        return short

    def never_fits(self, requests: Resources) -> list[str]:
        """What this node could not give the pod even with nothing else running."""
        return self.unfit(requests, Resources(self.cpu, self.memory))

    def bind(self, pod: str, requests: Resources) -> None:
        self.requested[pod] = requests

    def release(self, pod: str) -> None:
        self.requested.pop(pod, None)

    def __str__(self) -> str:
        return f"{format_cpu(self.cpu)} CPU, {format_memory(self.memory)} memory"


def pending_reason(short: list[str]) -> str:
    """The scheduler's event message for a pod that does not fit on the one node."""
    return "0/1 nodes are available: " + ", ".join(f"1 Insufficient {what}" for what in short) + "."
