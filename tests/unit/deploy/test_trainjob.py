"""The distributed overlay's TrainJob as the local runner reads it: one Job per node, as Trainer would make them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import REPO
from private_finetuning.deploy.local_runner import run_pipeline
from private_finetuning.deploy.local_runner.pods import pods_from_manifests
from private_finetuning.deploy.local_runner.runtimes.process import ProcessRuntime, local_command
from private_finetuning.deploy.local_runner.scheduling import Node
from private_finetuning.deploy.local_runner.trainjob import node_jobs
from private_finetuning.deploy.manifests import render
from private_finetuning.errors import ConfigError


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return render(REPO / "k8s" / "overlays" / "distributed")


def test_the_trainjob_becomes_one_pod_per_node_with_the_rendezvous_trainer_gives(rendered: list[dict],
                                                                                 tmp_path: Path) -> None:
    pods = {p.name: p for p in pods_from_manifests(rendered, repo=REPO, state=tmp_path)}
    single = pods_from_manifests(render(REPO / "k8s" / "overlays" / "cpu"), repo=REPO, state=tmp_path / "cpu")
    (job,) = [p for p in single if p.name == "model-peft"]
    nodes = [pods["model-peft-node-0-0"], pods["model-peft-node-0-1"]]
    assert "model-peft" not in pods
    for rank, node in enumerate(nodes):
        assert node.gang == "model-peft" and node.kind == "Job"
        assert (node.image, node.command, node.args) == (job.image, job.command, job.args)
        assert [(m.kind, m.source, m.path, m.read_only) for m in node.mounts] == [
            (m.kind, m.source, m.path, m.read_only) for m in job.mounts]
        assert {k: node.env[k] for k in ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR",
                                          "PET_MASTER_PORT")} == {
            "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": str(rank),
            "PET_MASTER_ADDR": "model-peft-node-0-0.model-peft", "PET_MASTER_PORT": "29400"}
        assert node.env["HF_HUB_OFFLINE"] == "1"  # the runtime's own env stays
        # the Job policy the runtime carries: exit 5 a new pod, exit 2 fails the run, time to checkpoint
        assert (node.ignore_exit_codes, node.fail_job_exit_codes, node.grace_s) == ({5}, {2}, 90)
        assert node.backoff_limit == 6 and node.deadline_s == job.deadline_s
    runtime = ProcessRuntime()
    first, second = (runtime.rendezvous(n) for n in nodes)
    assert first == second and first["PET_MASTER_ADDR"] == "127.0.0.1"  # both find rank 0 on this machine
    assert first["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))  # a share of the cores each
    argv, _, _ = local_command(nodes[1])
    assert argv[argv.index("--output") + 1] == str(tmp_path / "volumes" / "fine-tuned-model")


def test_numnodes_and_numprocpernode_come_from_the_trainjob(rendered: list[dict]) -> None:
    docs = json.loads(json.dumps(rendered))
    (job,) = [d for d in docs if d["kind"] == "TrainJob"]
    job["spec"]["trainer"].update(numNodes=3, numProcPerNode=4)
    nodes = node_jobs(job, docs)
    assert [n["metadata"]["name"] for n in nodes] == [f"model-peft-node-0-{i}" for i in range(3)]
    env = {e["name"]: e["value"] for e in nodes[2]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"], env["PET_NODE_RANK"]) == ("3", "4", "2")


def test_a_runtime_the_overlay_does_not_render_is_named(rendered: list[dict]) -> None:
    (job,) = [d for d in rendered if d["kind"] == "TrainJob"]
    stock = {**job, "spec": {**job["spec"], "runtimeRef": {"name": "torch-distributed"}}}
    with pytest.raises(ConfigError, match="TrainJob/model-peft: its ClusterTrainingRuntime 'torch-distributed' is "
                                          "not in the rendered overlay"):
        node_jobs(stock, rendered)


GANG = """
import os, sys, time
from pathlib import Path
Path(os.environ["OUT"], "rank" + os.environ["PET_NODE_RANK"]).write_text(os.environ["PET_MASTER_PORT"])
sys.exit(0)
"""


def fake_trainjob_repo(tmp_path: Path, cpu: str) -> Path:
    """A TrainJob of 2 nodes on a runtime whose container only notes its rank and rendezvous port."""
    repo = tmp_path / "repo"
    (repo / "components" / "stage").mkdir(parents=True)
    (repo / "components" / "stage" / "app.py").write_text(GANG)
    container = {"name": "node", "image": "stage", "workingDir": "/app", "command": ["python", "app.py"],
                 "env": [{"name": "OUT", "value": str(tmp_path)}]}
    runtime = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainingRuntime", "metadata": {"name": "rt"},
               "spec": {"mlPolicy": {"numNodes": 1, "torch": {}}, "template": {"spec": {"replicatedJobs": [
                   {"name": "node", "template": {"spec": {"backoffLimit": 0, "template": {
                       "spec": {"restartPolicy": "Never", "containers": [container]}}}}}]}}}}
    job = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": "train"},
           "spec": {"runtimeRef": {"kind": "TrainingRuntime", "name": "rt"}, "activeDeadlineSeconds": 20,
                    "trainer": {"numNodes": 2, "resourcesPerNode": {"requests": {"cpu": cpu, "memory": "16Mi"}}}}}
    overlay = repo / "k8s" / "overlays" / "t"
    overlay.mkdir(parents=True)
    (overlay / "all.yaml").write_text("---\n".join(json.dumps(d) + "\n" for d in (runtime, job)))
    (overlay / "kustomization.yaml").write_text("resources: [all.yaml]\n")
    return repo


def test_the_nodes_start_together_and_meet_on_one_port(tmp_path: Path) -> None:
    repo = fake_trainjob_repo(tmp_path, "1")
    assert run_pipeline(repo, repo / "k8s" / "overlays" / "t", tmp_path / "state", node=Node.this_machine("2", "1Gi"))
    assert (tmp_path / "rank0").read_text() == (tmp_path / "rank1").read_text()


def test_nodes_that_cannot_all_be_placed_are_unschedulable_not_half_started(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Each node fits the machine alone, but not both: none starts (rank 0 would wait for its peer for ever)."""
    repo = fake_trainjob_repo(tmp_path, "1500m")
    assert not run_pipeline(repo, repo / "k8s" / "overlays" / "t", tmp_path / "state",
                            node=Node.this_machine("2", "1Gi"))
    assert "Unschedulable: requests (the 2 training nodes of TrainJob train together) exceed the node" in caplog.text
    assert not list(tmp_path.glob("rank*"))
