"""The process engine: each container's command runs as a local process of this checkout's venv.

Paths under a mount are rewritten to the mount's host folder, ``python`` is this interpreter, the
working folder ``/app`` is ``components/<image>/``, and ``0.0.0.0`` becomes ``127.0.0.1`` (a pod listens
on every interface; a laptop should not). Each process gets a session of its own, so a terminal's
Ctrl-C reaches only the runner, which then stops them in order; and each dies with the runner.
CPU requests weigh as they do on a node: a kubelet gives a container cgroup CPU shares in proportion
to its request; here each process gets the nice value whose scheduler weight is closest to that
proportion (:func:`nice_for`). On 2 cores a small Job still slows training more than its weight
says: torch's intra-op threads wait for each other whenever one of them is preempted.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from private_finetuning.deploy.local_runner.pods import Pod
from private_finetuning.deploy.manifests import APP_DIR

_PR_SET_PDEATHSIG = 1


NICE_WEIGHT_STEP = 1.25  # each nice level weighs about 1.25x less in Linux's CFS (sched_prio_to_weight)


def nice_for(cpu_millicores: int | None) -> int:
    """The nice value whose weight relative to nice 0 is the request's share relative to one CPU.

    A kubelet sets cpu.shares = 1024 * request (1000m: 1024, 100m: 102, 50m: 51); nice 0 weighs 1024
    and each level about 1.25x less, so 1000m runs at 0, 250m at 6, 100m at 10, 50m at 13. No request
    (or a CPU or more) runs at 0.
    """
    if not cpu_millicores or cpu_millicores >= 1000:
        return 0
    return min(19, round(math.log(1000 / cpu_millicores) / math.log(NICE_WEIGHT_STEP)))


def _child_setup(nice: int) -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    with contextlib.suppress(OSError):
        os.nice(nice)


def _rewrite(value: str, mounts: dict[str, Path]) -> str:
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(mounts[mount_path]) + value[len(mount_path):]
    return value


def local_command(pod: Pod) -> tuple[list[str], dict[str, str], Path]:
    """argv, the container's env over this one's, and the working folder of the pod as a process."""
    mounts = {m.path: m.host for m in pod.mounts}
    argv = [_rewrite(a, mounts) for a in [*pod.command, *pod.args]]
    argv = ["127.0.0.1" if a == "0.0.0.0" else a.replace("0.0.0.0:", "127.0.0.1:") for a in argv]
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable  # the interpreter that has the package installed
    env = dict(os.environ)
    env.update({k: _rewrite(v, mounts) for k, v in pod.env.items()})
    env["PYTHONUNBUFFERED"] = "1"  # so stage logs stream through the runner as they are written
    cwd = pod.component if pod.working_dir == APP_DIR else Path(_rewrite(pod.working_dir, mounts))
    return argv, env, cwd


class LocalProcess:
    def __init__(self, pod: Pod, rendezvous: dict[str, str] | None = None):
        argv, env, cwd = local_command(pod)
        env.update(rendezvous or {})
        nice = nice_for(pod.requests.cpu)
        self.process = subprocess.Popen(argv, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, bufsize=1, start_new_session=True,
                                        preexec_fn=(lambda: _child_setup(nice)) if sys.platform == "linux" else None)
        assert self.process.stdout is not None
        self.output = self.process.stdout
        self.reason = ""
        self._peak: int | None = None

    def poll(self) -> int | None:
        if self.process.returncode is None:
            # wait4 rather than Popen.poll: it also gives the peak RSS of the process and what it waited for.
            try:
                pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
            except ChildProcessError:
                return self.process.poll()
            if pid == 0:
                return None
            self.process.returncode = os.waitstatus_to_exitcode(status)
            self._peak = usage.ru_maxrss * 1024
        code = self.process.returncode
        self.reason = "Completed" if code == 0 else f"Signal {-code}" if code < 0 else "Error"
        return 128 - code if code < 0 else code  # a signal reads as the kubelet reports it: 128 + n

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)  # the whole session: gunicorn's workers, tensorboard's threads

    def stop(self, grace_s: float) -> None:
        if self.poll() is None:
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.poll() is None:
                self._signal_group(signal.SIGKILL)
                while self.poll() is None:
                    time.sleep(0.05)
        self._signal_group(signal.SIGKILL)  # anything it left behind in its session

    def sample(self) -> None:
        """Nothing to do: the peak comes from wait4 once the process has ended."""

    @property
    def peak_memory(self) -> int | None:
        return self._peak


class ProcessRuntime:
    name = "process"

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}  # a TrainJob's rendezvous port on this machine, the same for every attempt

    def check(self, pods: list[Pod]) -> None:
        """Every pod runs from its component folder, which translate() has already checked."""

    def start(self, pod: Pod, attempt: int) -> LocalProcess:
        return LocalProcess(pod, self.rendezvous(pod))

    def rendezvous(self, pod: Pod) -> dict[str, str]:
        """A training node's way to its peers: the first pod's Service name becomes loopback, Trainer's port one
        that is free here (a second run, or a test, may hold 29400), and gloo talks over loopback. Each rank
        gets its share of this machine's cores, as it would have a machine of its own: ranks whose thread pools
        each span every core wait for each other at every parallel region (on 2 cores, 6x slower per step)."""
        if pod.gang is None:
            return {}
        if pod.gang not in self.ports:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.ports[pod.gang] = sock.getsockname()[1]
        ranks = int(pod.env.get("PET_NNODES", "1")) * int(pod.env.get("PET_NPROC_PER_NODE", "1"))
        env = {"PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(self.ports[pod.gang]), "GLOO_SOCKET_IFNAME": "lo"}
        if "OMP_NUM_THREADS" not in pod.env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // ranks))
        return env

    def close(self) -> None:
        """Processes are stopped by the controller; nothing else is left."""
