"""``pft run``: render an overlay, run its workloads on a container runtime, then ask or serve the model."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from private_finetuning.artifacts import promotion
from private_finetuning.artifacts.store import CURRENT, EVALUATION, MANIFEST, PROMOTION, human_size, verify
from private_finetuning.deploy.local_runner.controller import Controller, SignalReceived
from private_finetuning.deploy.local_runner.pods import pods_from_manifests
from private_finetuning.deploy.local_runner.runtimes import make_runtime
from private_finetuning.deploy.local_runner.scheduling import Node, format_memory
from private_finetuning.deploy.manifests import render
from private_finetuning.errors import ArtifactError, ConfigError
from private_finetuning.telemetry.progress import format_duration

log = logging.getLogger("local-runner")
INFERENCE_IMAGE = "model-inference-server"
SEED_QUESTION = "What is the best hotel in Seville?"
STOP_GRACE_S = 10  # how long each pod gets to stop after Ctrl-C or SIGTERM before it is killed


def curl_command(port: int, question: str) -> str:
    """The README's command, for this port and question, to paste into a shell."""
    body = json.dumps({"input_prompt": question}).replace("'", "'\\''")
    return f"curl -XPOST http://localhost:{port}/prompt -d '{body}'"


def ask(port: int, question: str) -> str:
    """POST /prompt as the README's curl does (a JSON body, no Content-Type header: curl's default form type)."""
    body = json.dumps({"input_prompt": question}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/prompt", data=body, method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req, timeout=120) as response:
        return response.read().decode()


@contextmanager
def _signals(controller: Controller) -> Iterator[None]:
    """SIGINT (Ctrl-C, sent to the whole terminal group) and SIGTERM stop the run.

    The handler only takes note; the controller acts on it between steps, so no pod is left half
    started. Pods run in sessions of their own, so the terminal's SIGINT reaches the runner alone,
    and no server shuts itself down behind the runner's back (to be "restarted" by its ReplicaSet).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        controller.interrupted = controller.interrupted or signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_pipeline(repo: Path, overlay: Path, state: Path, config: Path | None = None,
                 only: list[str] | None = None, then: str = "exit", question: str = SEED_QUESTION,
                 engine: str = "process", node: Node | None = None) -> bool:
    docs = render(overlay)
    pods = pods_from_manifests(docs, repo=repo, state=state, config_override=config)
    if only:
        unknown = sorted(set(only) - {p.name for p in pods})
        if unknown:
            raise ConfigError(f"no such workload in {overlay}: {', '.join(unknown)}")
        pods = [p for p in pods if p.name in only]
    log.info("rendered %s: %d objects, %d workloads; state in %s", overlay, len(docs), len(pods), state)
    for pod in pods:
        log.info("  %s/%s: %s (requests %s; volumes: %s)", pod.kind, pod.name, " ".join([*pod.command, *pod.args]),
                 pod.requests, ", ".join(f"{claim} at {path}" for claim, path in pod.volumes.items()) or "none")
    runtime = make_runtime(engine, str(state))
    runtime.check(pods)
    controller = Controller(pods, state, runtime, node or Node.this_machine())
    start = time.monotonic()
    ok, reason = False, "pipeline finished"
    try:
        with _signals(controller):
            try:
                first = FirstAnswer(controller, question, start)
                ok = controller.run(on_tick=first.poll if then != "exit" else None, keep_services=then == "serve")
                print(summary(controller), flush=True)
                log.info("jobs %s in %s", "succeeded" if ok else "FAILED", format_duration(time.monotonic() - start))
                if controller.services and then != "exit" and (ok or _serves_after_failure(controller, then, first)):
                    ok = _serve(controller, then, first) and ok
            except SignalReceived as why:
                log.warning("%s: stopping every pod (each gets %d s)", why, STOP_GRACE_S)
                reason = f"interrupted ({why})"
                raise KeyboardInterrupt from None
            finally:
                controller.stop_all(reason, STOP_GRACE_S)
    finally:
        runtime.close()
    log.info("pipeline %s in %s", "succeeded" if ok else "FAILED", format_duration(time.monotonic() - start))
    return ok


def _ready(run: object) -> bool:
    return _probe(run) is not None


def _probe(run: object) -> dict | None:
    """The readiness probe's JSON body when it answers 200, else None."""
    path, port = run.pod.readiness  # type: ignore[attr-defined]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            if response.status != 200:
                return None
            try:
                body = json.loads(response.read() or b"{}")
            except ValueError:
                body = {}
            return body if isinstance(body, dict) else {}
    except (urllib.error.URLError, OSError):
        return None


def _served_digest(run: object) -> str | None:
    """Which adapter the ready server serves (its /ready says), None while it is not ready."""
    body = _probe(run)
    return None if body is None else body.get("adapter_digest")


def wait_ready(controller: Controller, timeout_s: float = 600) -> bool:
    """Poll each Deployment's readiness probe, as the kubelet would, until all answer 200."""
    deadline = time.monotonic() + timeout_s
    pending = [r for r in controller.services if r.pod.readiness]
    while pending and time.monotonic() < deadline:
        controller.tick()
        for run in list(pending):
            if _ready(run):
                log.info("%s is ready on http://127.0.0.1:%d", run.pod.name, run.pod.readiness[1])
                pending.remove(run)
        if any(r.status == "failed" for r in controller.services):
            return False
        time.sleep(1)
    return not pending


class FirstAnswer:
    """Asks the inference server the first question as soon as it is ready, while later Jobs still run,
    as a user with `skaffold run --port-forward` could: the export does not delay the first answer."""

    def __init__(self, controller: Controller, question: str, start: float):
        self.controller, self.question, self.start = controller, question, start
        self.answer: str | None = None
        self.next_check = 0.0

    @property
    def inference(self) -> list:
        return [r for r in self.controller.services if r.pod.image_name == INFERENCE_IMAGE and r.pod.readiness]

    def poll(self) -> None:
        if self.answer is not None or time.monotonic() < self.next_check or not self.inference:
            return
        self.next_check = time.monotonic() + 2
        if any(r.pod.image_name == EVALUATION.producer and r.status in ("pending", "running")
               for r in self.controller.runs):
            return  # this run's evaluation may still promote another adapter: the answer would be the old one's
        promoted = self.promoted_digest()
        if promoted is None:
            return  # nothing promoted yet, so the server cannot be ready: no probe, no log line
        run = self.inference[0]
        if run.status == "running" and _served_digest(run) == promoted:
            log.info("%s is ready on http://127.0.0.1:%d", run.pod.name, run.pod.readiness[1])
            self.ask()

    def promoted_digest(self) -> str | None:
        """The adapter digest the promotion in force names, on whichever volume holds it."""
        for link in (self.controller.state / "volumes").glob(f"*/{PROMOTION.artifact}/{CURRENT}"):
            try:
                record = promotion.current(link.parent.parent)
            except ArtifactError:
                continue
            if record is not None:
                return record.adapter_digest
        return None

    def wait_for_promoted(self, controller: Controller, timeout_s: float = 120) -> None:
        """Until the server has loaded the adapter promoted last (it follows promotions by polling)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _served_digest(self.inference[0]) != self.promoted_digest():
            controller.tick()
            time.sleep(1)

    def ask(self) -> None:
        port = self.inference[0].pod.readiness[1]
        self.answer = ask(port, self.question)
        print(f"\nPOST /prompt {self.question!r}\n-> {self.answer}\n(the first answer, "
              f"{format_duration(time.monotonic() - self.start)} after the start)\n", flush=True)


def _serves_after_failure(controller: Controller, then: str, first: FirstAnswer) -> bool:
    """After a failed Job, under ``--then serve``: whether the Deployments go on serving what is promoted (as on a
    cluster), which needs something promoted; pft run still exits non-zero once stopped."""
    if then != "serve" or first.promoted_digest() is None or not any(r.status == "running"
                                                                     for r in controller.services):
        return False
    log.error("a job failed (the summary above says which); the Deployments keep running and the inference server "
              "serves the adapter the promotion names, as on a cluster; pft run exits non-zero when stopped")
    return True


def _serve(controller: Controller, then: str, first: FirstAnswer) -> bool:
    if first.answer is None:
        if not wait_ready(controller):
            log.error("the inference server did not become ready; see %s", controller.state / "logs")
            return False
        if not first.inference:
            log.warning("no %s Deployment in this overlay: nothing to ask", INFERENCE_IMAGE)
            return True
        first.wait_for_promoted(controller)
        first.ask()
    port = first.inference[0].pod.readiness[1]  # type: ignore[index]
    if then == "serve":
        others = [f"{r.pod.name} on http://localhost:{r.pod.readiness[1]}/" for r in controller.services
                  if r.pod.readiness and r not in first.inference]
        print(f"Serving on http://localhost:{port}/ - try:\n  {curl_command(port, first.question)}\n"
              + "".join(f"Also: {o}\n" for o in others) + "Press Ctrl-C to stop.", flush=True)
        while all(r.status == "running" for r in controller.services):
            time.sleep(1)
            controller.tick()
    return True


def summary(controller: Controller) -> str:
    lines = ["", "Jobs:"]
    for run in controller.runs:
        took = format_duration(run.finished - run.started) if run.finished and run.started else "-"
        peak = f"  peak {format_memory(run.peak_memory)}" if run.peak_memory else ""
        reason = f"  ({run.reason})" if run.reason else ""
        lines.append(f"  {run.pod.name:<28} {run.status:<10} {took:>8}  attempts={run.attempts}{peak}{reason}")
    lines += ["", f"Volumes (under {controller.state / 'volumes'}):"]
    lines += artifact_table(controller.state / "volumes")
    lines.append(f"\nLogs: {controller.state / 'logs'}; every attempt: {controller.state / 'runs.json'}")
    return "\n".join(lines)


def artifact_table(volumes: Path) -> list[str]:
    """One line per published artifact, verified against its manifest."""
    rows = []
    for volume in sorted(p for p in volumes.iterdir() if p.is_dir()) if volumes.is_dir() else []:
        found = False
        for link in sorted(volume.glob(f"*/{CURRENT}")):
            if not (link / MANIFEST).is_file():
                continue
            found = True
            try:
                manifest = verify(link.resolve())
                size = human_size(sum(f.size for f in manifest.files))
                status = (f"{manifest.kind} {manifest.name!r}: {len(manifest.files)} files, {size}, "
                          f"digest {manifest.digest[:12]}, verified")
            except ArtifactError as exc:
                status = f"CORRUPT: {exc}"
            rows.append(f"  {volume.name:<18} {link.parent.name}/{link.resolve().name}  {status}")
        if not found:
            rows.append(f"  {volume.name:<18} (nothing published)")
    return rows or ["  (no volumes)"]
