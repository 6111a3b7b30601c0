"""The pipeline run from its real images, as a kubelet would run each pod (`make test-containers`).

Skipped in `make test`: scripts/test-containers.sh builds the ten images first and sets
PFT_CONTAINER_TESTS=1. The run is the embedded default with a short training, on a 4-CPU / 8 GiB node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import NO_GATES, REPO, write_config
from private_finetuning.artifacts.store import open_artifact

pytestmark = [
    pytest.mark.containers,
    pytest.mark.skipif(os.environ.get("PFT_CONTAINER_TESTS") != "1",
                       reason="needs the images and a Docker engine: run `make test-containers`"),
]
FAST = {
    "dataset": {"source": {"size": "tiny"}},
    "training": {"max_steps": 3, "batch_size": 4, "sample_generations": 1, "projector_tokens": 50},
    "evaluation": {"samples": 4, "max_new_tokens": 8, "gates": NO_GATES},  # 3 steps learn nothing
    "export": {"check_questions": 4},
}


def pft(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "private_finetuning.cli", *args], cwd=cwd, capture_output=True,
                          text=True, check=False, timeout=1800)


@pytest.fixture(scope="module")
def readable_tmp() -> Iterator[Path]:
    """A folder the pods (uid 10001) can read the --config file in; pytest's own are private to root."""
    root = Path(tempfile.mkdtemp(prefix="pft-containers-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pipeline(readable_tmp: Path) -> tuple[Path, subprocess.CompletedProcess, list[dict]]:
    root = readable_tmp
    config = write_config(root / "fast.yaml", FAST)
    result = pft("run", "--engine", "docker", "--node-cpus", "4", "--node-memory", "8Gi", "--state-dir",
                 str(root / "state"), "--config", str(config), "--then", "smoke")
    print(result.stdout[-6000:], result.stderr[-6000:], sep="\n")
    runs = root / "state" / "runs.json"
    attempts = json.loads(runs.read_text())["attempts"] if runs.is_file() else []
    return root / "state", result, attempts


def test_the_pipeline_runs_from_its_images_and_answers_through_the_published_port(pipeline: tuple) -> None:
    state, result, _ = pipeline
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "on a node of 4 CPU, 8Gi memory (docker engine)" in result.stderr
    assert "model-inference is ready on http://127.0.0.1:5000" in result.stderr
    answer = result.stdout.split("POST /prompt 'What is the best hotel in Seville?'\n-> ", 1)[1].split("\n")[0]
    assert answer.strip()
    volumes = state / "volumes"
    adapter = open_artifact(volumes / "fine-tuned-model", "adapter", "lora-adapter")
    assert adapter.manifest.metadata["steps"] == 3
    open_artifact(volumes / "fine-tuned-model", "evaluation", "evaluation-report")
    open_artifact(volumes / "reference-model", "model", "reference-model")
    export = open_artifact(volumes / "exports", "export", "model-export")
    assert export.manifest.metadata["round_trip"]["f16_equal"] == export.manifest.metadata["round_trip"]["questions"]
    ir = open_artifact(volumes / "base-model-openvino", "model", "base-model-openvino")  # the image's tool env ran
    assert ir.manifest.metadata["base_model_digest"] == adapter.manifest.source["base_model"]["digest"]
    served = open_artifact(volumes / "fine-tuned-model", "served-model", "served-model-openvino")  # built in its image
    assert served.manifest.metadata["adapter_digest"] == adapter.manifest.digest
    log = (state / "logs" / "model-inference.log").read_text()
    assert "inference engine: openvino" in log and "as the judged model" in log
    assert "CORRUPT" not in result.stdout


def test_every_container_ran_locked_down_and_none_was_oom_killed(pipeline: tuple) -> None:
    _, _, attempts = pipeline
    pods = {a["pod"] for a in attempts}
    assert pods == {"dataset-relocation", "model-relocation", "tokenizer-relocation", "model-reference-relocation",
                    "model-peft", "model-evaluation", "model-export", "openvino-model-conversion", "model-inference",
                    "tensorboard"}
    for attempt in attempts:
        assert attempt["user"] == "10001:10001", attempt  # never root
        assert attempt["oom_killed"] is False and attempt["reason"] != "OOMKilled", attempt
        assert attempt["read_only_root"] is True and attempt["cap_drop"] == ["ALL"], attempt
        assert "no-new-privileges" in attempt["security_opt"], attempt
        assert attempt["memory_limit"] > 0, attempt


def test_job_containers_had_no_network_and_servers_listen_on_loopback_only(pipeline: tuple) -> None:
    _, _, attempts = pipeline
    for attempt in attempts:
        if attempt["kind"] == "Job":
            assert attempt["network_mode"] == "none", attempt
        else:
            hosts = {b["HostIp"] for bindings in attempt["port_bindings"].values() for b in bindings}
            assert hosts == {"127.0.0.1"}, attempt


def test_a_config_the_pods_cannot_read_is_refused_before_anything_starts(readable_tmp: Path) -> None:
    tmp_path = readable_tmp / "refused"
    tmp_path.mkdir()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    config = write_config(private / "p.yaml", FAST)
    result = pft("run", "--engine", "docker", "--state-dir", str(tmp_path / "state"), "--config", str(config))
    assert result.returncode == 2
    assert f"--config {config}: the pods run as uid 10001, which cannot read it ({private} is mode drwx------)" \
        in result.stderr
    assert not (tmp_path / "state" / "runs.json").exists()


def test_a_job_container_has_no_interface_but_loopback(tmp_path: Path) -> None:
    """The same `docker run` the engine builds for a Job, asked which interfaces it has."""
    from private_finetuning.deploy.local_runner.pods import pods_from_manifests, prepare_volumes
    from private_finetuning.deploy.local_runner.runtimes.docker import DockerRuntime
    from private_finetuning.deploy.manifests import render

    pod = next(p for p in pods_from_manifests(render(REPO / "k8s" / "overlays" / "cpu"), repo=REPO, state=tmp_path)
               if p.name == "dataset-relocation")
    pod.command, pod.args = ["python", "-c", "import socket; print(sorted(n for _, n in socket.if_nameindex()))"], []
    prepare_volumes(pod)
    engine = DockerRuntime(str(tmp_path))
    engine.check([pod])
    name = f"pft-probe-{os.getpid()}"
    try:
        out = subprocess.run(engine.command(pod, name), capture_output=True, text=True, timeout=120, check=True)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    assert out.stdout.strip() == "['lo']"


OOM_APP = textwrap.dedent('''
    held = bytearray(400 * 2**20)  # more than the 128Mi limit: the kernel kills it
    held[::4096] = b"x" * len(held[::4096])
''')


def test_a_container_over_its_memory_limit_is_reported_oomkilled(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "components" / "private-fine-tuning-base").mkdir(parents=True)
    (repo / "components" / "private-fine-tuning-base" / "app.py").write_text(OOM_APP)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "greedy"},
           "spec": {"backoffLimit": 0, "template": {"spec": {
               "restartPolicy": "Never", "securityContext": {"runAsUser": 10001, "runAsGroup": 10001},
               "containers": [{"name": "greedy", "image": "private-fine-tuning-base", "workingDir": "/work",
                               "command": ["python", "/work/app.py"],
                               "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                                             "limits": {"memory": "128Mi"}},
                               "volumeMounts": [{"name": "code", "mountPath": "/work"}]}],
               "volumes": [{"name": "code", "persistentVolumeClaim": {"claimName": "code"}}]}}}}
    overlay = repo / "k8s" / "overlays" / "oom"
    overlay.mkdir(parents=True)
    (overlay / "job.yaml").write_text(json.dumps(job))
    (overlay / "kustomization.yaml").write_text("resources: [job.yaml]\n")
    (tmp_path / "state" / "volumes" / "code").mkdir(parents=True)
    (tmp_path / "state" / "volumes" / "code" / "app.py").write_text(OOM_APP)
    result = pft("run", "--engine", "docker", "--overlay", str(overlay), "--state-dir", str(tmp_path / "state"),
                 cwd=repo)
    assert result.returncode == 1
    assert "greedy: Last State: Terminated, Reason: OOMKilled, Exit Code: 137 (memory limit 128Mi)" in result.stderr
    assert "exit 137 (OOMKilled): backoffLimit 0 reached" in result.stdout
    attempt = json.loads((tmp_path / "state" / "runs.json").read_text())["attempts"][0]
    assert attempt["oom_killed"] is True and attempt["reason"] == "OOMKilled"
