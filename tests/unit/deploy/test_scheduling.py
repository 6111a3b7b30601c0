"""Pods start only when their requests fit the node, as kube-scheduler decides; the manifests fit a laptop."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import REPO
from private_finetuning.deploy.local_runner import run_pipeline
from private_finetuning.deploy.local_runner.pods import pods_from_manifests
from private_finetuning.deploy.local_runner.scheduling import Node, Resources, parse_cpu, parse_memory, pending_reason
from private_finetuning.deploy.manifests import render
from private_finetuning.errors import ConfigError

GiB, MiB = 2**30, 2**20
# What KinD's own pods request on a single-node cluster (apiserver, controller-manager, scheduler,
# etcd, two CoreDNS, kindnet): the node's allocatable less this is what the pipeline can have.
KIND_SYSTEM = Resources(cpu=950, memory=290 * MiB)


def test_quantities_read_as_kubernetes_reads_them() -> None:
    assert parse_cpu("2") == 2000 and parse_cpu("500m") == 500 and parse_cpu(1.5) == 1500 and parse_cpu("0.1") == 100
    assert parse_memory("8Gi") == 8 * GiB and parse_memory("512Mi") == 512 * MiB and parse_memory("1G") == 10**9
    assert parse_memory(1048576) == MiB
    with pytest.raises(ConfigError, match="--node-memory: '8GB' is not a memory quantity"):
        Node.this_machine("4", "8GB")
    with pytest.raises(ConfigError, match="--node-cpus: 'four' is not a CPU quantity"):
        Node.this_machine("four", "8Gi")


def test_fit_check_and_its_message() -> None:
    node = Node(cpu=4000, memory=8 * GiB)
    node.bind("inference", Resources(2000, 2 * GiB))
    node.bind("evaluation", Resources(2000, 3 * GiB))
    assert node.unfit(Resources(2000, 3 * GiB)) == ["cpu"]
    assert node.unfit(Resources(0, 4 * GiB)) == ["memory"]
    assert pending_reason(["cpu", "memory"]) == "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory."
    node.release("evaluation")
    assert node.unfit(Resources(2000, 3 * GiB)) == []
    assert node.never_fits(Resources(5000, GiB)) == ["cpu"]


def cpu_overlay_pods(tmp_path: Path) -> list:
    return pods_from_manifests(render(REPO / "k8s" / "overlays" / "cpu"), repo=REPO, state=tmp_path)


@pytest.mark.parametrize(("cpus", "memory"), [("4", "8Gi"), ("2", "8Gi")], ids=["kind-4cpu-8gi", "this-2-cores"])
def test_every_pod_of_the_default_pipeline_fits_at_once(tmp_path: Path, cpus: str, memory: str) -> None:
    """Nothing waits for a reservation, so no pod that only waits for an artifact can starve training."""
    node = Node.this_machine(cpus, memory)
    if cpus == "4":  # a KinD node also runs the control plane
        node.bind("kind-system", KIND_SYSTEM)
    for pod in cpu_overlay_pods(tmp_path):
        assert not node.unfit(pod.requests), f"{pod.name} would be Pending: {pod.requests}, free {node.free}"
        node.bind(pod.name, pod.requests)


def test_every_memory_limit_is_above_its_request(tmp_path: Path) -> None:
    for pod in cpu_overlay_pods(tmp_path):
        assert pod.requests.cpu and pod.requests.memory and pod.limits.memory, pod.name
        assert pod.limits.memory > pod.requests.memory, pod.name


# The requests of the 0.1.0 manifests: inference, evaluation and training 2 CPUs each.
OLD_REQUESTS = {"model-inference": ("2", "2Gi"), "tensorboard": ("100m", "256Mi"),
                "dataset-relocation": ("500m", "256Mi"), "model-evaluation": ("2", "3Gi"),
                "model-peft": ("2", "3Gi"), "model-reference-relocation": ("500m", "3Gi"),
                "model-relocation": ("500m", "2Gi"), "tokenizer-relocation": ("500m", "512Mi")}

WAITER = '''
import os, sys, time
from pathlib import Path
flag = Path(os.environ["WAIT_FOR"]) if os.environ.get("WAIT_FOR") else None
while flag is not None and not flag.exists():
    time.sleep(0.1)
if os.environ.get("WRITE"):
    Path(os.environ["WRITE"]).write_text("done")
if os.environ.get("SERVE"):
    time.sleep(600)
'''


def old_pipeline(tmp_path: Path) -> Path:
    """The default pipeline's shape with the old requests: relocations, training that writes the adapter,
    evaluation that waits for it, an inference server and TensorBoard that stay up."""
    repo = tmp_path / "repo"
    (repo / "components" / "stage").mkdir(parents=True)
    (repo / "components" / "stage" / "app.py").write_text(WAITER)
    adapter = tmp_path / "adapter-published"
    env = {"model-peft": {"WRITE": str(adapter)}, "model-evaluation": {"WAIT_FOR": str(adapter)},
           "model-inference": {"SERVE": "1"}, "tensorboard": {"SERVE": "1"}}
    docs = []
    for name, (cpu, memory) in OLD_REQUESTS.items():
        container = {"name": "stage", "image": "stage", "workingDir": "/app", "command": ["python", "app.py"],
                     "env": [{"name": k, "value": v} for k, v in env.get(name, {}).items()],
                     "resources": {"requests": {"cpu": cpu, "memory": memory}}}
        template = {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}
        if name in ("model-inference", "tensorboard"):
            docs.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                         "spec": {"selector": {"matchLabels": {"app": name}}, "template": template}})
        else:
            template["spec"]["restartPolicy"] = "Never"
            docs.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                         "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 8, "template": template}})
    overlay = repo / "k8s" / "overlays" / "old"
    overlay.mkdir(parents=True)
    (overlay / "all.yaml").write_text("---\n".join(json.dumps(d) + "\n" for d in docs))
    (overlay / "kustomization.yaml").write_text("resources: [all.yaml]\n")
    return repo


def test_the_old_requests_leave_training_pending_forever_on_a_4_cpu_node(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Inference and TensorBoard hold 2.1 CPUs from the start, so neither evaluation nor training (2 each)
    is ever placed: training Pending until its Job's deadline, with the scheduler's reason logged."""
    repo = old_pipeline(tmp_path)
    caplog.set_level("INFO", logger="local-runner")
    ok = run_pipeline(repo, repo / "k8s" / "overlays" / "old", tmp_path / "state",
                      node=Node.this_machine("4", "8Gi"))
    assert not ok
    runs = {r["pod"]: r for r in json.loads((tmp_path / "state" / "runs.json").read_text())["attempts"]}
    assert "model-peft" not in runs  # never started
    assert runs["model-relocation"]["exit_code"] == 0
    assert "model-peft is Pending: 0/1 nodes are available: 1 Insufficient cpu." in caplog.text
    assert "DeadlineExceeded" in caplog.text


def test_a_pod_larger_than_the_node_is_unschedulable_not_left_waiting(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    repo = old_pipeline(tmp_path)
    ok = run_pipeline(repo, repo / "k8s" / "overlays" / "old", tmp_path / "state", only=["model-peft"],
                      node=Node.this_machine("1", "8Gi"))
    assert not ok
    assert "Unschedulable: requests (cpu 2, memory 3Gi) exceed the node (1 CPU, 8Gi memory)" in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="the fsGroup sharing runs only as root, as the docker engine does")
def test_sharing_a_volume_with_the_pods_group_never_follows_a_symlink(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A container may plant symlinks in its volume (or swap a file for one while the runner, as root, walks
    it): the host files they point at keep their group and mode, and nothing is changed through a path."""
    from private_finetuning.deploy.local_runner import pods

    host = tmp_path / "host-secret"
    host.write_text("x")
    host.chmod(0o600)
    (tmp_path / "host-folder").mkdir()
    volume = tmp_path / "volume"
    (volume / "sub").mkdir(parents=True)
    (volume / "sub" / "weights.bin").write_text("w")
    (volume / "link-to-file").symlink_to(host)
    (volume / "link-to-folder").symlink_to(tmp_path / "host-folder")
    before = {p: (p.stat().st_gid, p.stat().st_mode) for p in (host, tmp_path / "host-folder")}

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an owner or mode was changed through a path, which follows a symlink")

    monkeypatch.setattr(os, "chown", refuse)
    monkeypatch.setattr(Path, "chmod", refuse)
    pods._share_with_group(volume, 10001)
    assert {p: (p.stat().st_gid, p.stat().st_mode) for p in before} == before
    inside = (volume / "sub" / "weights.bin").stat()
    assert inside.st_gid == 10001 and inside.st_mode & 0o060 == 0o060


def test_the_distributed_overlay_fits_at_once_on_two_cores(tmp_path: Path) -> None:
    """Both training nodes and every other pod are placed together on a 2-CPU machine with 16 GiB (`pft run
    --overlay k8s/overlays/distributed`): no node waits at the rendezvous behind a Deployment's request."""
    node = Node.this_machine("2", "16Gi")
    pods = pods_from_manifests(render(REPO / "k8s" / "overlays" / "distributed"), repo=REPO, state=tmp_path)
    assert sum(p.gang == "model-peft" for p in pods) == 2
    for pod in pods:
        assert not node.unfit(pod.requests), f"{pod.name} would be Pending: {pod.requests}, free {node.free}"
        node.bind(pod.name, pod.requests)
