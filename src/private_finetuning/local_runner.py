"""Runs the pipeline on one machine, as local processes, from the same manifests a cluster runs.

Every Job starts at once, as it would on a cluster; stages that consume artifacts wait for them
per the artifact contract. Failed pods are restarted as the Job controller would (``backoffLimit``,
``podFailurePolicy`` exit codes, ``activeDeadlineSeconds``). When a Job fails for good, the others
are stopped, since their inputs will never come.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from private_finetuning.artifacts import CURRENT, MANIFEST, human_size, verify
from private_finetuning.errors import ArtifactError, ConfigError
from private_finetuning.manifests import LocalPod, plan, process_env, render
from private_finetuning.progress import format_duration

log = logging.getLogger("local-runner")
INFERENCE_IMAGE = "model-inference-server"


@dataclass
class JobRun:
    pod: LocalPod
    log_path: Path
    attempts: int = 0
    status: str = "pending"  # pending, running, succeeded, failed
    reason: str = ""
    started: float = 0.0
    finished: float = 0.0
    process: subprocess.Popen | None = None
    threads: list[threading.Thread] = field(default_factory=list)


def _pump(stream: IO[str], prefix: str, sink: IO[str], lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            sink.write(line)
            sink.flush()
            print(f"{prefix} {line}", end="", flush=True)


class LocalRunner:
    def __init__(self, pods: list[LocalPod], state: Path, poll_s: float = 0.2):
        self.state, self.poll_s = state, poll_s
        (state / "logs").mkdir(parents=True, exist_ok=True)
        width = max((len(p.name) for p in pods), default=0)
        self.prefixes = {p.name: f"[{p.name:<{width}}]" for p in pods}
        self.runs = [JobRun(p, state / "logs" / f"{p.name}.log") for p in pods]
        self.lock = threading.Lock()

    def _start(self, run: JobRun) -> None:
        run.attempts += 1
        run.status = "running"
        if run.attempts == 1:
            run.started = time.monotonic()
            run.log_path.write_text("")
        sink = run.log_path.open("a", encoding="utf-8")
        run.process = subprocess.Popen(run.pod.argv, cwd=run.pod.cwd, env=process_env(run.pod), text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
        assert run.process.stdout is not None
        thread = threading.Thread(target=_pump, args=(run.process.stdout, self.prefixes[run.pod.name], sink, self.lock),
                                  daemon=True)
        thread.start()
        run.threads.append(thread)

    def _stop(self, run: JobRun, reason: str) -> None:
        if run.process and run.process.poll() is None:
            run.process.send_signal(signal.SIGTERM)
            try:
                run.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()
        run.status, run.reason, run.finished = "failed", reason, time.monotonic()

    @property
    def jobs(self) -> list[JobRun]:
        return [r for r in self.runs if r.pod.kind == "Job"]

    @property
    def services(self) -> list[JobRun]:
        return [r for r in self.runs if r.pod.kind == "Deployment"]

    def run(self) -> bool:
        """Start every workload together; return once every Job has finished (Deployments keep running)."""
        jobs = self.jobs
        log.info("starting %d jobs and %d deployments together, as a cluster would: %s", len(jobs),
                 len(self.services), ", ".join(r.pod.name for r in self.runs))
        for run in self.runs:
            self._start(run)
        try:
            while any(r.status == "running" for r in jobs):
                time.sleep(self.poll_s)
                for run in (r for r in jobs if r.status == "running"):
                    self._check(run, jobs)
                self.keep_services_up()
        except KeyboardInterrupt:
            self.stop_all("interrupted")
            raise
        ok = all(r.status == "succeeded" for r in jobs)
        if not ok:
            self.stop_all("a job failed")
        return ok

    def keep_services_up(self) -> None:
        """A Deployment's pod that exits is started again, as its ReplicaSet would."""
        for run in self.services:
            if run.status == "running" and run.process is not None and run.process.poll() is not None:
                if run.attempts >= 5:
                    run.status, run.reason, run.finished = "failed", f"exited {run.attempts} times", time.monotonic()
                    log.error("%s keeps exiting (last exit %d); giving up", run.pod.name, run.process.returncode)
                    continue
                log.warning("%s exited with %d; starting it again", run.pod.name, run.process.returncode)
                self._start(run)

    def wait_ready(self, timeout_s: float = 600) -> bool:
        """Poll each Deployment's readiness probe, as the kubelet would, until all answer 200."""
        deadline = time.monotonic() + timeout_s
        pending = [r for r in self.services if r.pod.readiness]
        while pending and time.monotonic() < deadline:
            self.keep_services_up()
            for run in list(pending):
                path, port = run.pod.readiness  # type: ignore[misc]
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                        if response.status == 200:
                            log.info("%s is ready on http://127.0.0.1:%d", run.pod.name, port)
                            pending.remove(run)
                except (urllib.error.URLError, OSError):
                    pass
            if any(r.status == "failed" for r in self.services):
                return False
            time.sleep(1)
        return not pending

    def stop_all(self, reason: str) -> None:
        for run in self.runs:
            if run.status == "running":
                self._stop(run, reason)
                if run.pod.kind == "Deployment":
                    run.status = "stopped"
        for run in self.runs:
            for thread in run.threads:
                thread.join(timeout=5)

    def _check(self, run: JobRun, jobs: list[JobRun]) -> None:
        assert run.process is not None
        deadline = run.pod.deadline_s
        if deadline and time.monotonic() - run.started > deadline:
            self._stop(run, f"exceeded activeDeadlineSeconds={deadline}")
            self._fail_others(run, jobs)
            return
        code = run.process.poll()
        if code is None:
            return
        if code == 0:
            run.status, run.finished = "succeeded", time.monotonic()
            log.info("%s succeeded in %s", run.pod.name, format_duration(run.finished - run.started))
            return
        if code in run.pod.fail_job_exit_codes:
            run.status, run.reason = "failed", f"exit {code}: podFailurePolicy FailJob (bad input, not retried)"
        elif run.attempts > run.pod.backoff_limit:
            run.status, run.reason = "failed", f"exit {code}: backoffLimit {run.pod.backoff_limit} reached"
        else:
            log.warning("%s exited with %d; restarting it (attempt %d of %d), as the Job controller would",
                        run.pod.name, code, run.attempts + 1, run.pod.backoff_limit + 1)
            self._start(run)
            return
        run.finished = time.monotonic()
        log.error("%s failed: %s; its log: %s", run.pod.name, run.reason, run.log_path)
        self._fail_others(run, jobs)

    def _fail_others(self, failed: JobRun, jobs: list[JobRun]) -> None:
        for other in jobs:
            if other.status == "running":
                log.warning("stopping %s: %s failed, so inputs it may wait for will not come", other.pod.name,
                            failed.pod.name)
                self._stop(other, f"stopped after {failed.pod.name} failed")

    def summary(self) -> str:
        lines = ["", "Jobs:"]
        for run in self.runs:
            took = format_duration(run.finished - run.started) if run.finished else "-"
            reason = f"  ({run.reason})" if run.reason else ""
            lines.append(f"  {run.pod.name:<28} {run.status:<10} {took:>8}  attempts={run.attempts}{reason}")
        lines += ["", f"Volumes (under {self.state / 'volumes'}):"]
        lines += artifact_table(self.state / "volumes")
        lines.append(f"\nLogs: {self.state / 'logs'}")
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


def ask(port: int, question: str) -> str:
    """POST /prompt exactly as the README's curl does."""
    body = json.dumps({"input_prompt": question}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/prompt", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as response:
        return response.read().decode()


def run_pipeline(repo: Path, overlay: Path, state: Path, config: Path | None = None,
                 only: list[str] | None = None, then: str = "exit",
                 question: str = "What is the best hotel in Seville?") -> bool:
    docs = render(overlay)
    pods = plan(docs, repo=repo, state=state, config_override=config)
    if only:
        unknown = sorted(set(only) - {p.name for p in pods})
        if unknown:
            raise ConfigError(f"no such workload in {overlay}: {', '.join(unknown)}")
        pods = [p for p in pods if p.name in only]
    log.info("rendered %s: %d objects, %d workloads; state in %s", overlay, len(docs), len(pods), state)
    for pod in pods:
        log.info("  %s/%s: %s (volumes: %s)", pod.kind, pod.name, " ".join(pod.argv[1:]),
                 ", ".join(f"{claim} at {path}" for claim, path in pod.volumes.items()) or "none")
    runner = LocalRunner(pods, state)
    start = time.monotonic()
    try:
        ok = runner.run()
        print(runner.summary(), flush=True)
        log.info("jobs %s in %s", "succeeded" if ok else "FAILED", format_duration(time.monotonic() - start))
        if ok and runner.services and then != "exit":
            ok = _serve(runner, then, question)
    finally:
        runner.stop_all("pipeline finished")
    log.info("pipeline %s in %s", "succeeded" if ok else "FAILED", format_duration(time.monotonic() - start))
    return ok


def _serve(runner: LocalRunner, then: str, question: str) -> bool:
    if not runner.wait_ready():
        log.error("the inference server did not become ready; see %s", runner.state / "logs")
        return False
    inference = [r for r in runner.services if r.pod.image == INFERENCE_IMAGE and r.pod.readiness]
    if not inference:
        log.warning("no %s Deployment in this overlay: nothing to ask", INFERENCE_IMAGE)
        return True
    port = inference[0].pod.readiness[1]  # type: ignore[index]
    answer = ask(port, question)
    print(f"\nPOST /prompt {question!r}\n-> {answer}\n", flush=True)
    if then == "serve":
        others = [f"{r.pod.name} on http://127.0.0.1:{r.pod.readiness[1]}" for r in runner.services
                  if r.pod.readiness and r not in inference]
        print(f"Serving on http://127.0.0.1:{port} - try:\n  curl -XPOST 127.0.0.1:{port}/prompt "
              f"-d '{{\"input_prompt\": \"{question}\"}}'\n" + "".join(f"Also: {o}\n" for o in others)
              + "Press Ctrl-C to stop.", flush=True)
        try:
            while all(r.status == "running" for r in runner.services):
                time.sleep(1)
                runner.keep_services_up()
        except KeyboardInterrupt:
            print("stopping", flush=True)
    return True
