"""The docker engine: each pod runs from its image as a container, with what a kubelet would enforce.

- securityContext: ``--user`` runAsUser:runAsGroup, fsGroup as a supplementary group, ``--read-only``
  for readOnlyRootFilesystem, ``--cap-drop``/``--cap-add``, ``no-new-privileges`` when privilege
  escalation is off, Docker's default seccomp profile for RuntimeDefault; runAsNonRoot refuses an
  image that would run as root (CreateContainerConfigError);
- resources.limits: ``--memory`` (no swap) and ``--cpus``; requests.cpu as CPU shares;
- volumes: a PVC is its host folder under ``state/volumes`` (group-writable for fsGroup, as KinD's
  local-path gives), a ConfigMap a read-only bind mount, an emptyDir a fresh folder per attempt;
- network: a Job's container has none at all (no interface but loopback): the deny-all egress
  NetworkPolicy made physical. A Deployment's ports are published on 127.0.0.1 only.
An OOM kill is reported as ``OOMKilled``, as ``kubectl describe pod`` shows it; memory is sampled
from the container's cgroup as the kubelet does (working set: usage less inactive file cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import stat
import subprocess
import time
from pathlib import Path

from private_finetuning.deploy.local_runner.pods import Mount, Pod
from private_finetuning.errors import ConfigError

log = logging.getLogger("local-runner")
LABEL = "io.private-fine-tuning.local-runner"


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=timeout)
    except FileNotFoundError as exc:
        raise ConfigError("--engine docker needs the docker command and a running Docker engine") from exc
    if check and result.returncode != 0:
        raise ConfigError(f"docker {args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def _volume_args(mounts: list[Mount]) -> list[str]:
    args = []
    for mount in mounts:
        args += ["--volume", f"{mount.host.resolve()}:{mount.path}{':ro' if mount.read_only else ''}"]
        if mount.kind == "configMap":
            # A user's pipeline file is linked in (see pods.py): mount its folder at the same path, read-only,
            # so the link and the relative paths inside the file resolve in the container as on the host.
            for item in sorted(mount.host.iterdir()):
                if item.is_symlink():
                    folder = item.resolve().parent
                    args += ["--volume", f"{folder}:{folder}:ro"]
    return args


def _unreadable_by_pods(path: Path) -> Path | None:
    """The first folder or file on the way to ``path`` that a pod's uid (not its owner) cannot pass or read."""
    for part in [*reversed(path.parents), path]:
        mode = part.stat().st_mode
        needed = stat.S_IROTH if part == path else stat.S_IXOTH
        if not mode & needed:
            return part
    return None


def _check_linked_config(pod: Pod) -> None:
    """A --config file is mounted with its folder: the pod's user must be able to read it there."""
    for mount in pod.mounts:
        if mount.kind != "configMap":
            continue
        for item in mount.host.iterdir():
            if item.is_symlink():
                blocked = _unreadable_by_pods(item.resolve())
                if blocked is not None:
                    mode = stat.filemode(blocked.stat().st_mode)
                    raise ConfigError(f"--config {item.resolve()}: the pods run as uid {pod.security.run_as_user}, "
                                      f"which cannot read it ({blocked} is mode {mode}); make it readable "
                                      "(chmod o+rx on the folders, o+r on the file)")


def _security_args(pod: Pod, image_user: str) -> list[str]:
    sec = pod.security
    if sec.run_as_non_root:
        user = str(sec.run_as_user) if sec.run_as_user is not None else image_user.split(":")[0]
        if user in ("", "0", "root"):
            raise _CreateConfigError(f"{pod.name}: container has runAsNonRoot and image will run as root")
    args = []
    if sec.run_as_user is not None:
        args += ["--user", f"{sec.run_as_user}:{sec.run_as_group if sec.run_as_group is not None else 0}"]
    if sec.fs_group is not None:
        args += ["--group-add", str(sec.fs_group)]
    if sec.read_only_root:
        args.append("--read-only")
    args += [f"--cap-drop={c}" for c in sec.drop] + [f"--cap-add={c}" for c in sec.add]
    if sec.no_new_privileges:
        args += ["--security-opt", "no-new-privileges"]
    if sec.seccomp == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    return args


def _resource_args(pod: Pod) -> list[str]:
    args = []
    if pod.limits.memory is not None:
        args += ["--memory", str(pod.limits.memory), "--memory-swap", str(pod.limits.memory)]
    if pod.limits.cpu is not None:
        args += ["--cpus", f"{pod.limits.cpu / 1000:g}"]
    if pod.requests.cpu is not None:
        args += ["--cpu-shares", str(max(2, pod.requests.cpu * 1024 // 1000))]  # what the kubelet sets
    return args


def _network_args(pod: Pod) -> list[str]:
    if pod.kind == "Job":
        return ["--network", "none"]
    return [arg for port in pod.ports for arg in ("--publish", f"127.0.0.1:{port}:{port}")]


class _CreateConfigError(ConfigError):
    """The kubelet would refuse to create this container."""


def _cgroup_memory_files(pid: int) -> tuple[Path, Path] | None:
    """(usage, stat) of the container's memory cgroup, v1 or v2, seen from the host."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return folder / "memory.usage_in_bytes", folder / "memory.stat"
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            folder = Path("/sys/fs/cgroup") / path.lstrip("/")
            return folder / "memory.current", folder / "memory.stat"
    return None


def _working_set(files: tuple[Path, Path]) -> int | None:
    try:
        usage = int(files[0].read_text())
        stat = dict(line.split() for line in files[1].read_text().splitlines())
    except (OSError, ValueError):
        return None
    inactive = int(stat.get("total_inactive_file", stat.get("inactive_file", 0)))
    return max(0, usage - inactive)


class DockerContainer:
    def __init__(self, pod: Pod, name: str, argv: list[str]):
        self.pod, self.name = pod, name
        self.process = subprocess.Popen(argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1,
                                        start_new_session=True)
        assert self.process.stdout is not None
        self.output = self.process.stdout
        self.reason = ""
        self.inspect: dict = {}
        self._peak: int | None = None
        self._cgroup: tuple[Path, Path] | None = None
        self._no_cgroup = False

    def poll(self) -> int | None:
        code = self.process.poll()
        if code is None:
            return None
        if not self.inspect:
            self.sample()
            result = docker("inspect", self.name, check=False)
            self.inspect = json.loads(result.stdout)[0] if result.returncode == 0 else {"State": {}}
            docker("rm", "-f", self.name, check=False)
        state = self.inspect.get("State", {})
        code = state.get("ExitCode", code)
        if state.get("OOMKilled"):
            self.reason = "OOMKilled"
        elif not state:
            self.reason = "ContainerCannotRun"
        else:
            self.reason = "Completed" if code == 0 else "Error"
        return code

    def stop(self, grace_s: float) -> None:
        if self.process.poll() is None:
            docker("stop", "--time", str(int(grace_s)), self.name, check=False, timeout=grace_s + 60)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.poll()

    def sample(self) -> None:
        if self._no_cgroup:
            return
        if self._cgroup is None:
            result = docker("inspect", "--format", "{{.State.Pid}}", self.name, check=False, timeout=10)
            pid = int(result.stdout.strip() or 0) if result.returncode == 0 else 0
            if pid <= 0:
                return  # not started yet, or already gone
            self._cgroup = _cgroup_memory_files(pid)
            if self._cgroup is None:
                self._no_cgroup = True  # not readable from here (a remote or rootless engine): stop asking
                return
        used = _working_set(self._cgroup)
        if used is not None:
            self._peak = max(self._peak or 0, used)

    @property
    def peak_memory(self) -> int | None:
        return self._peak

    @property
    def record(self) -> dict:
        """What a test or a person checks afterwards: how it ran and how it ended."""
        config, host, state = (self.inspect.get(k, {}) for k in ("Config", "HostConfig", "State"))
        return {"pod": self.pod.name, "kind": self.pod.kind, "container": self.name, "image": config.get("Image"),
                "user": config.get("User"), "network_mode": host.get("NetworkMode"),
                "read_only_root": host.get("ReadonlyRootfs"), "cap_drop": host.get("CapDrop"),
                "security_opt": host.get("SecurityOpt"), "memory_limit": host.get("Memory"),
                "port_bindings": host.get("PortBindings") or {},
                "oom_killed": state.get("OOMKilled"), "exit_code": state.get("ExitCode"),
                "reason": self.reason, "peak_memory": self._peak}


class DockerRuntime:
    name = "docker"

    def __init__(self, state: str):
        self.run_id = hashlib.sha256(str(Path(state).resolve()).encode()).hexdigest()[:10]
        self.containers: list[DockerContainer] = []
        self.image_users: dict[str, str] = {}

    def check(self, pods: list[Pod]) -> None:
        docker("version", "--format", "{{.Server.Version}}")
        missing = []
        for image in sorted({p.image for p in pods}):
            result = docker("image", "inspect", "--format", "{{.Config.User}}", image, check=False)
            if result.returncode != 0:
                missing.append(image)
            self.image_users[image] = result.stdout.strip()
        if missing:
            raise ConfigError(f"image(s) not found in the local Docker engine: {', '.join(missing)}; build them "
                              "with scripts/build-images.sh (see docs/containers.md)")
        for pod in pods:
            _check_linked_config(pod)
        gangs = sorted({p.gang for p in pods if p.gang})
        if gangs:  # a Job's container has no network at all here; ranks would need one of their own
            raise ConfigError(f"TrainJob {', '.join(gangs)}: the docker engine gives a Job's container no network, so "
                              "training nodes cannot reach each other; run this overlay with --engine process "
                              "(docs/cluster.md)")
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Containers an earlier run over the same state folder left (it was killed, say)."""
        result = docker("ps", "-aq", "--filter", f"label={LABEL}={self.run_id}", check=False)
        ids = result.stdout.split()
        if ids:
            log.warning("removing %d container(s) left by an earlier run over this state folder", len(ids))
            docker("rm", "-f", *ids, check=False)

    def command(self, pod: Pod, name: str) -> list[str]:
        """The ``docker run`` for one attempt of a pod."""
        env = [arg for key, value in pod.env.items() for arg in ("--env", f"{key}={value}")]
        return ["docker", "run", "--name", name, "--label", f"{LABEL}={self.run_id}",
                "--label", f"{LABEL}.pod={pod.name}", "--workdir", pod.working_dir,
                *_security_args(pod, self.image_users.get(pod.image, "")), *_resource_args(pod),
                *_network_args(pod), *_volume_args(pod.mounts), *env,
                "--entrypoint", pod.command[0], pod.image, *pod.command[1:], *pod.args]

    def start(self, pod: Pod, attempt: int) -> DockerContainer:
        name = f"pft-{self.run_id}-{pod.name}-{attempt}"
        docker("rm", "-f", name, check=False)
        container = DockerContainer(pod, name, self.command(pod, name))
        self.containers.append(container)
        return container

    def close(self) -> None:
        for container in self.containers:
            if container.process.poll() is None:
                container.stop(5)
        deadline = time.monotonic() + 30
        while any(c.process.poll() is None for c in self.containers) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._remove_leftovers()
