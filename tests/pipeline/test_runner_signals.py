"""Ctrl-C or SIGTERM stops `pft run` and everything it started, within seconds, with nothing restarted.

The runner is started as a terminal would start it (its own process group), serving a fake inference
server (which, like gunicorn, has a worker process) and TensorBoard, while a Job with a status port
still runs. Then the signal comes: to the whole group for Ctrl-C, to the runner alone for SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import NETGUARD, free_port, port_is_free

SERVER = textwrap.dedent('''
    import http.server, os, sys, time
    from pathlib import Path
    out = Path(os.environ["PIDS"])
    out.mkdir(parents=True, exist_ok=True)
    if os.environ.get("ROLE") == "job":
        (out / f"job-{os.getpid()}").write_text("")
        import socket
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen()
        time.sleep(600)
        sys.exit(0)
    if os.fork() == 0:  # a worker, as gunicorn has: the server is the worker's parent
        (out / f"worker-{os.getpid()}").write_text("")
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
            do_POST = do_GET
            def log_message(self, *args):
                pass
        http.server.HTTPServer.allow_reuse_address = True
        http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
    (out / f"server-{os.getpid()}").write_text("")
    os.wait()
''')




def workload(kind: str, name: str, image: str, port: int, pids: Path, role: str) -> dict:
    container = {"name": image, "image": image, "workingDir": "/app", "command": ["python", "app.py"],
                 "env": [{"name": "PIDS", "value": str(pids)}, {"name": "PORT", "value": str(port)},
                         {"name": "ROLE", "value": role}],
                 "ports": [{"name": "http", "containerPort": port}],
                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}
    if kind == "Deployment":
        container["readinessProbe"] = {"httpGet": {"path": "/", "port": "http"}}
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                "spec": {"selector": {"matchLabels": {"app": name}}, "template": {
                    "metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}}}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [container]}}}}


@pytest.fixture
def fake_pipeline(tmp_path: Path) -> tuple[Path, Path, list[int]]:
    """A checkout whose overlay has an inference server and TensorBoard (Deployments) and a long Job."""
    repo, pids = tmp_path / "repo", tmp_path / "pids"
    ports = [free_port(), free_port(), free_port()]
    for image in ("model-inference-server", "tensorboard-server", "peft-server"):
        (repo / "components" / image).mkdir(parents=True)
        (repo / "components" / image / "app.py").write_text(SERVER)
    docs = [workload("Deployment", "model-inference", "model-inference-server", ports[0], pids, "server"),
            workload("Deployment", "tensorboard", "tensorboard-server", ports[1], pids, "server"),
            workload("Job", "model-peft", "peft-server", ports[2], pids, "job")]
    overlay = repo / "k8s" / "overlays" / "cpu"
    overlay.mkdir(parents=True)
    (overlay / "all.yaml").write_text("---\n".join(json.dumps(d) + "\n" for d in docs))
    (overlay / "kustomization.yaml").write_text("resources: [all.yaml]\n")
    return repo, pids, ports


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for every purpose that matters here (it holds no port and runs nothing)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def start_runner(repo: Path, then: str, tmp_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(NETGUARD))
    return subprocess.Popen([sys.executable, "-m", "private_finetuning.cli", "run", "--then", then, "--overlay",
                             str(repo / "k8s" / "overlays" / "cpu"), "--state-dir", str(tmp_path / "state")],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as a shell gives a foreground job


def wait_for_pids(pids: Path, count: int, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [int(p.name.split("-")[1]) for p in pids.glob("*-*")] if pids.is_dir() else []
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"only {len(found)} of {count} processes started")


@pytest.fixture
def reaped(fake_pipeline: tuple) -> Iterator[list[subprocess.Popen]]:
    """Runners a test starts; whatever a failed test leaves running is killed, so no server outlives it."""
    runners: list[subprocess.Popen] = []
    yield runners
    for runner in runners:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
    pids = fake_pipeline[1]
    for pid in (int(p.name.split("-")[1]) for p in pids.glob("*-*")) if pids.is_dir() else ():
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["ctrl-c to the group", "sigterm to the runner"])
def test_a_signal_stops_every_child_in_seconds_with_no_restart(fake_pipeline: tuple, tmp_path: Path,
                                                               how: str, reaped: list) -> None:
    repo, pids, ports = fake_pipeline
    runner = start_runner(repo, "serve", tmp_path)
    reaped.append(runner)
    children = wait_for_pids(pids, 5)  # 2 servers + 2 workers + the job
    deadline = time.monotonic() + 60
    while not all(not port_is_free(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # the runner has seen them ready and asked its question
    if how == "ctrl-c to the group":
        os.killpg(runner.pid, signal.SIGINT)
    else:
        runner.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    output = runner.communicate(timeout=30)[0]
    took = time.monotonic() - sent
    assert runner.returncode == 130, output[-2000:]
    assert took < 15, f"stopping took {took:.1f} s"
    assert "starting it again" not in output  # no ReplicaSet restart during shutdown
    assert not [pid for pid in children if alive(pid)], output[-2000:]
    assert all(port_is_free(p) for p in ports)


def test_what_a_pod_leaves_running_in_its_session_goes_with_it(fake_pipeline: tuple, tmp_path: Path,
                                                              reaped: list) -> None:
    """The Job is stopped by the runner at the end of a smoke run too: nothing outlives `pft run`."""
    repo, pids, ports = fake_pipeline
    runner = start_runner(repo, "smoke", tmp_path)
    reaped.append(runner)
    children = wait_for_pids(pids, 5)
    runner.send_signal(signal.SIGTERM)
    runner.communicate(timeout=30)
    assert not [pid for pid in children if alive(pid)]
    assert all(port_is_free(p) for p in ports)
