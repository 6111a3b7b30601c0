"""Engines start a :class:`~private_finetuning.local_runner.pods.Pod`'s container and report how it ended.

``process`` runs the container's command as a local process in the checkout's venv; ``docker`` runs
it from its image with what a kubelet would enforce. The controller drives either through the same
small interface, so Job semantics and scheduling are written once.
"""

from __future__ import annotations

from typing import IO, Protocol

from private_finetuning.local_runner.pods import Pod


class Container(Protocol):
    """One attempt of one pod."""

    output: IO[str]  # stdout and stderr together, line by line
    reason: str  # how it ended, as kubectl shows it: Completed, Error, OOMKilled, ...

    def poll(self) -> int | None:
        """The exit code once it has ended, else None; sets ``reason``."""

    def stop(self, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``, as the kubelet stops a pod; waits for the end."""

    def sample(self) -> None:
        """Take a memory reading (called about once a second while it runs)."""

    @property
    def peak_memory(self) -> int | None:
        """The highest memory use seen, in bytes, if the engine can tell."""


class Engine(Protocol):
    name: str

    def check(self, pods: list[Pod]) -> None:
        """Fail early, with a clear error, if these pods cannot be run (a missing image, say)."""

    def start(self, pod: Pod, attempt: int) -> Container:
        """Start one attempt of a pod whose volumes are prepared."""

    def close(self) -> None:
        """Remove whatever the engine left behind."""


def make_engine(name: str, state: str) -> Engine:
    if name == "process":
        from private_finetuning.local_runner.engines.process import ProcessEngine

        return ProcessEngine()
    if name == "docker":
        from private_finetuning.local_runner.engines.docker import DockerEngine

        return DockerEngine(state)
    raise ValueError(f"unknown engine {name!r}")
