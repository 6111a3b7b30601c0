"""Container runtimes start a :class:`~private_finetuning.deploy.local_runner.pods.Pod`'s container and
report how it ended, as a kubelet's runtime would.

``process`` runs the container's command as a local process in the checkout's venv; ``docker`` runs
it from its image with what a kubelet would enforce. The controller drives either through the same
small interface, so Job semantics and scheduling are written once. :data:`RUNTIMES` is the table
``pft run --engine`` takes its choices and help from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol

from private_finetuning.deploy.local_runner.pods import Pod


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


class ContainerRuntime(Protocol):
    name: str

    def check(self, pods: list[Pod]) -> None:
        """Fail early, with a clear error, if these pods cannot be run (a missing image, say)."""

    def start(self, pod: Pod, attempt: int) -> Container:
        """Start one attempt of a pod whose volumes are prepared."""

    def close(self) -> None:
        """Remove whatever the runtime left behind."""


def _process(state: str) -> ContainerRuntime:
    from private_finetuning.deploy.local_runner.runtimes.process import ProcessRuntime

    return ProcessRuntime()


def _docker(state: str) -> ContainerRuntime:
    from private_finetuning.deploy.local_runner.runtimes.docker import DockerRuntime

    return DockerRuntime(state)


@dataclass(frozen=True)
class RuntimeChoice:
    help: str
    make: Callable[[str], ContainerRuntime]  # from the state folder


RUNTIMES: dict[str, RuntimeChoice] = {
    "process": RuntimeChoice("each pod as a local process in this checkout's environment", _process),
    "docker": RuntimeChoice("each pod as a container from its image, with its securityContext, limits and volumes "
                            "enforced (needs the images: scripts/build-images.sh)", _docker),
}


def make_runtime(name: str, state: str) -> ContainerRuntime:
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; expected one of {', '.join(RUNTIMES)}")
    return RUNTIMES[name].make(state)
