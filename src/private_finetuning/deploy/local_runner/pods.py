"""A rendered Job or Deployment, read into what a kubelet needs to run its one container.

Both engines start from a :class:`Pod`: the container's image, command, env, mounts, security
context, resources and probes, plus the Job controller's policy. The host side of every volume is
laid out here too, the same for both engines: a PVC is ``state/volumes/<claim>``, a ConfigMap is
written to ``state/configmaps/<pod>/<volume>``, an emptyDir is ``state/scratch/<pod>/<volume>``.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from private_finetuning.deploy.local_runner.scheduling import Resources
from private_finetuning.deploy.local_runner.trainjob import GANG_LABEL, node_jobs
from private_finetuning.errors import ConfigError

log = logging.getLogger("local-runner")

WORKLOAD_KINDS = ("Job", "Deployment")
NOT_RUN_LOCALLY = ("PyTorchJob", "StatefulSet", "DaemonSet", "CronJob")
DEFAULT_GRACE_S = 30  # terminationGracePeriodSeconds when a pod does not set it


@dataclass(frozen=True)
class Mount:
    """One volumeMount, with the host folder that backs it."""

    kind: str  # persistentVolumeClaim, configMap or emptyDir
    source: str  # claim name, ConfigMap name, or the volume's name for an emptyDir
    path: str  # mountPath in the container
    host: Path
    read_only: bool = False


@dataclass(frozen=True)
class Security:
    """The pod- and container-level securityContext, merged as the kubelet merges them."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    fs_group: int | None = None
    run_as_non_root: bool = False
    read_only_root: bool = False
    no_new_privileges: bool = False
    drop: tuple[str, ...] = ()
    add: tuple[str, ...] = ()
    seccomp: str = "RuntimeDefault"


@dataclass
class Pod:
    """One workload's container, as both engines need it."""

    name: str
    kind: str
    image: str  # the image reference as written in the manifest
    command: list[str]
    args: list[str]
    env: dict[str, str]
    working_dir: str
    mounts: list[Mount]
    security: Security
    requests: Resources
    limits: Resources
    component: Path  # components/<image>/ in the checkout: the process engine's working folder
    ports: list[int] = field(default_factory=list)
    readiness: tuple[str, int] | None = None  # httpGet path and port of the readiness probe
    backoff_limit: int = 0
    fail_job_exit_codes: frozenset[int] = frozenset()
    ignore_exit_codes: frozenset[int] = frozenset()  # podFailurePolicy Ignore: a new pod, not counted
    deadline_s: float | None = None
    grace_s: float = DEFAULT_GRACE_S
    gang: str | None = None  # the TrainJob whose training node this is: its pods rendezvous with each other

    @property
    def image_name(self) -> str:
        """The bare image name (no registry, no tag), which names the component folder."""
        return self.image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]

    @property
    def volumes(self) -> dict[str, str]:
        """PVC claim name -> mount path."""
        return {m.source: m.path for m in self.mounts if m.kind == "persistentVolumeClaim"}


def _security(spec: dict[str, Any], container: dict[str, Any]) -> Security:
    pod_ctx, ctx = spec.get("securityContext", {}), container.get("securityContext", {})

    def pick(key: str) -> Any:
        return ctx.get(key, pod_ctx.get(key))

    caps = ctx.get("capabilities", {})
    seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type", "RuntimeDefault")
    return Security(
        run_as_user=pick("runAsUser"), run_as_group=pick("runAsGroup"), fs_group=pod_ctx.get("fsGroup"),
        run_as_non_root=bool(pick("runAsNonRoot")), read_only_root=bool(ctx.get("readOnlyRootFilesystem")),
        no_new_privileges=ctx.get("allowPrivilegeEscalation") is False,
        drop=tuple(caps.get("drop", ())), add=tuple(caps.get("add", ())), seccomp=seccomp,
    )


def _mounts(where: str, name: str, spec: dict[str, Any], container: dict[str, Any], state: Path,
            config_maps: dict[str, dict[str, str]], config_override: Path | None) -> list[Mount]:
    declared = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = []
    for mount in container.get("volumeMounts", []):
        volume = declared.get(mount["name"])
        if volume is None:
            raise ConfigError(f"{where}: volumeMount {mount['name']!r} has no volume")
        read_only = bool(mount.get("readOnly"))
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            host = state / "volumes" / claim
            mounts.append(Mount("persistentVolumeClaim", claim, mount["mountPath"], host, read_only))
        elif "configMap" in volume:
            source = volume["configMap"]["name"]
            data = config_maps.get(source)
            if data is None:
                raise ConfigError(f"{where}: ConfigMap {source!r} not rendered")
            host = _write_config_map(state / "configmaps" / name / mount["name"], data, config_override)
            mounts.append(Mount("configMap", source, mount["mountPath"], host, True))
        elif "emptyDir" in volume:
            host = state / "scratch" / name / mount["name"]
            mounts.append(Mount("emptyDir", mount["name"], mount["mountPath"], host, read_only))
        else:
            raise ConfigError(f"{where}: volume {mount['name']!r} has a type the local runner does not map "
                              "(supported: persistentVolumeClaim, configMap, emptyDir)")
    return mounts


def _write_config_map(folder: Path, data: dict[str, str], config_override: Path | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, text in data.items():
        target = folder / key
        target.unlink(missing_ok=True)
        if config_override is not None and key == "pipeline.yaml":
            # A link, so relative paths in the user's file resolve against its own folder (the docker
            # engine mounts that folder at the same path, read-only).
            target.symlink_to(config_override.resolve())
        else:
            target.write_text(text, encoding="utf-8")
    return folder


def _job_policy(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] != "Job":
        return {}
    spec = obj["spec"]
    restart = spec["template"]["spec"].get("restartPolicy")
    if "podFailurePolicy" in spec and restart != "Never":
        # As the API server does: 'only "Never" is supported when podFailurePolicy is specified'.
        raise ConfigError(f"Job/{obj['metadata']['name']}: a podFailurePolicy needs the pod template's restartPolicy "
                          f"to be Never, not {restart or 'unset (defaulted to OnFailure by JobSet)'}; the API server "
                          "refuses it")
    codes_by_action: dict[str, set[int]] = {"FailJob": set(), "Ignore": set()}
    for rule in spec.get("podFailurePolicy", {}).get("rules", []):
        codes = rule.get("onExitCodes")
        if rule.get("action") in codes_by_action and codes and codes.get("operator") == "In":
            codes_by_action[rule["action"]].update(codes["values"])
    return {"backoff_limit": spec.get("backoffLimit", 6), "fail_job_exit_codes": frozenset(codes_by_action["FailJob"]),
            "ignore_exit_codes": frozenset(codes_by_action["Ignore"]), "deadline_s": spec.get("activeDeadlineSeconds")}


def translate(obj: dict[str, Any], *, repo: Path, state: Path, config_maps: dict[str, dict[str, str]],
              config_override: Path | None = None) -> Pod:
    """Read one Job or Deployment into a :class:`Pod`, laying out the host side of its volumes."""
    name = obj["metadata"]["name"]
    where = f"{obj['kind']}/{name}"
    spec = obj["spec"]["template"]["spec"]
    containers = spec.get("containers", [])
    if len(containers) != 1:
        raise ConfigError(f"{where}: the local runner supports one container per pod, found {len(containers)}")
    container = containers[0]
    if not container.get("command"):
        raise ConfigError(f"{where}: the container has no command")
    env = {}
    for item in container.get("env", []):
        if "value" not in item:
            raise ConfigError(f"{where}: env {item['name']!r} uses valueFrom, which the local runner does not "
                              "resolve; give it a literal value")
        env[item["name"]] = str(item["value"])
    named_ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    readiness = None
    probe = container.get("readinessProbe", {}).get("httpGet")
    if probe:
        port = probe["port"]
        readiness = (probe.get("path", "/"), named_ports[port] if isinstance(port, str) else int(port))
    resources = container.get("resources", {})
    pod = Pod(
        name=name, kind=obj["kind"], image=container["image"], command=list(container["command"]),
        args=[str(a) for a in container.get("args", [])], env=env, working_dir=container.get("workingDir", "/"),
        mounts=_mounts(where, name, spec, container, state, config_maps, config_override),
        security=_security(spec, container),
        requests=Resources.parse(resources.get("requests", {}), where=f"{where} requests"),
        limits=Resources.parse(resources.get("limits", {}), where=f"{where} limits"),
        component=repo / "components" / "_", ports=list(named_ports.values()), readiness=readiness,
        grace_s=spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S), **_job_policy(obj),
        gang=obj["spec"]["template"].get("metadata", {}).get("labels", {}).get(GANG_LABEL),
    )
    pod.component = repo / "components" / pod.image_name
    if not pod.component.is_dir():
        raise ConfigError(f"{where}: image {pod.image_name!r} has no folder components/{pod.image_name}")
    return pod


def pods_from_manifests(docs: list[dict[str, Any]], *, repo: Path, state: Path,
                        config_override: Path | None = None) -> list[Pod]:
    """Every Job and Deployment of a rendered overlay, in the order they were rendered; a TrainJob as the Jobs of
    its training nodes (:mod:`trainjob`)."""
    docs = [job for doc in docs for job in (node_jobs(doc, docs) if doc.get("kind") == "TrainJob" else [doc])]
    for doc in docs:
        if doc.get("kind") in NOT_RUN_LOCALLY:
            log.warning("%s/%s is not run locally: the local runner runs %s", doc.get("kind"),
                        doc["metadata"]["name"], " and ".join(WORKLOAD_KINDS))
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d.get("kind") == "ConfigMap"}
    return [translate(d, repo=repo, state=state, config_maps=config_maps, config_override=config_override)
            for d in docs if d.get("kind") in WORKLOAD_KINDS]


def prepare_volumes(pod: Pod) -> None:
    """Create each volume's host folder before a container starts, as the kubelet would.

    PVC folders are made group-writable for the pod's fsGroup (KinD's local-path provisioner gives
    world-writable ones); an emptyDir starts empty at every attempt, mode 0777 like the kubelet's.
    """
    for mount in pod.mounts:
        if mount.kind == "emptyDir":
            shutil.rmtree(mount.host, ignore_errors=True)
            mount.host.mkdir(parents=True)
            mount.host.chmod(0o777)
        elif mount.kind == "persistentVolumeClaim":
            mount.host.mkdir(parents=True, exist_ok=True)
            _share_with_group(mount.host, pod.security.fs_group)


def _share_with_group(folder: Path, gid: int | None) -> None:
    """What the kubelet does for fsGroup: the volume's files join the group, group-writable, recursively.

    The runner may be root and a container may be writing to the volume meanwhile, so nothing here
    follows a symlink, even one swapped in between a look and a change: folders are walked by file
    descriptor (``os.fwalk``), files are opened with ``O_NOFOLLOW`` relative to their folder's descriptor,
    and the owner and mode are changed through that descriptor."""
    if gid is None or os.geteuid() != 0:
        return  # running as the user who owns the folder: nothing to share
    for _root, _dirs, files, dir_fd in os.fwalk(folder, follow_symlinks=False):
        _join_group(dir_fd, gid)
        for name in files:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError:  # a symlink (ELOOP), or gone meanwhile: left alone
                continue
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    _join_group(fd, gid)
            finally:
                os.close(fd)


def _join_group(fd: int, gid: int) -> None:
    info = os.fstat(fd)
    if info.st_gid != gid:
        os.fchown(fd, -1, gid)
    os.fchmod(fd, stat.S_IMODE(info.st_mode) | (0o2070 if stat.S_ISDIR(info.st_mode) else 0o060))
