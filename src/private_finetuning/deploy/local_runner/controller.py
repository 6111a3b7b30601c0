"""What the Job and ReplicaSet controllers and kube-scheduler do, for the pods of one local run.

Every workload is created at once, as ``kubectl apply`` would; each pod is placed when its requests fit
the node (else it stays Pending), the training nodes of a TrainJob all at once or none; stages that
consume artifacts wait for them per the artifact contract. A failed Job pod is restarted within
``backoffLimit``, at once failed on a ``podFailurePolicy`` FailJob exit code, and stopped past
``activeDeadlineSeconds`` (counted from the Job's creation, Pending time included). A Deployment's pod
that exits is started again. When a Job fails for good the others are stopped, since their inputs will
never come.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from private_finetuning.deploy.local_runner.pods import Pod, prepare_volumes
from private_finetuning.deploy.local_runner.runtimes import Container, ContainerRuntime
from private_finetuning.deploy.local_runner.scheduling import Node, Resources, format_memory, pending_reason
from private_finetuning.errors import ConfigError
from private_finetuning.telemetry.progress import format_duration

log = logging.getLogger("local-runner")
SERVICE_RESTARTS = 5  # a Deployment pod that keeps exiting is given up on (CrashLoopBackOff)


class SignalReceived(Exception):
    """Ctrl-C or SIGTERM reached the runner."""


@dataclass
class PodRun:
    pod: Pod
    log_path: Path
    created: float
    attempts: int = 0
    ignored: int = 0  # attempts that podFailurePolicy Ignore does not count against backoffLimit
    status: str = "pending"  # pending, running, succeeded, failed, stopped
    reason: str = ""
    started: float = 0.0
    finished: float = 0.0
    container: Container | None = None
    pending_reason: str = ""
    peak_memory: int | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)


def _pump(stream: IO[str], prefix: str, sink: IO[str], lock: threading.Lock) -> None:
    with sink:
        for line in stream:
            with lock:
                sink.write(line)
                sink.flush()
                print(f"{prefix} {line}", end="", flush=True)


class Controller:
    def __init__(self, pods: list[Pod], state: Path, runtime: ContainerRuntime, node: Node, poll_s: float = 0.2):
        self.state, self.runtime, self.node, self.poll_s = state, runtime, node, poll_s
        (state / "logs").mkdir(parents=True, exist_ok=True)
        width = max((len(p.name) for p in pods), default=0)
        self.prefixes = {p.name: f"[{p.name:<{width}}]" for p in pods}
        now = time.monotonic()
        self.runs = [PodRun(p, state / "logs" / f"{p.name}.log", created=now) for p in pods]
        self.lock = threading.Lock()
        self.stopping = False
        self.interrupted = ""  # the signal's name, set by the runner's handler; acted on between steps
        self.last_sample = 0.0

    @property
    def jobs(self) -> list[PodRun]:
        return [r for r in self.runs if r.pod.kind == "Job"]

    @property
    def services(self) -> list[PodRun]:
        return [r for r in self.runs if r.pod.kind == "Deployment"]

    # -- placing and starting pods ------------------------------------------------------------------

    def schedule(self) -> None:
        """Bind every Pending pod that fits, in creation order, as kube-scheduler's fit check would; the pending
        nodes of a TrainJob all together or none, as a gang scheduler (Kueue, Volcano) would, so no rank waits
        at the rendezvous for a peer that cannot start."""
        for run in (r for r in self.runs if r.status == "pending"):
            gang = self._pending_gang(run)
            requests = Resources.total(r.pod.requests for r in gang)
            what = f"the {len(gang)} training nodes of TrainJob {run.pod.gang} together" if len(gang) > 1 else ""
            never = self.node.never_fits(requests)
            if never:
                for member in gang:
                    self._finish(member, "failed", f"Unschedulable: requests ({what or requests}) exceed the node "
                                                   f"({self.node}): {pending_reason(never)}")
                    log.error("%s failed: %s", member.pod.name, member.reason)
                if run.pod.kind == "Job":
                    self._fail_others(run)
                continue
            short = self.node.unfit(requests)
            if short:
                reason = pending_reason(short)
                if reason != run.pending_reason:
                    log.info("%s is Pending: %s (requests %s%s; free on the node: %s)", run.pod.name, reason,
                             requests, f" for {what}" if what else "", self.node.free)
                    run.pending_reason = reason
                continue
            for member in gang:
                self.node.bind(member.pod.name, member.pod.requests)
                self._start(member)

    def _pending_gang(self, run: PodRun) -> list[PodRun]:
        """The pod with the other pending nodes of its TrainJob, if none of them runs (else the pod alone)."""
        if run.pod.gang is None:
            return [run]
        gang = [r for r in self.runs if r.pod.gang == run.pod.gang]
        return gang if all(r.status == "pending" for r in gang) else [run]

    def _start(self, run: PodRun) -> None:
        run.attempts += 1
        run.status, run.pending_reason = "running", ""
        if run.attempts == 1:
            run.started = time.monotonic()
            run.log_path.write_text("")
        prepare_volumes(run.pod)
        try:
            run.container = self.runtime.start(run.pod, run.attempts)
        except ConfigError as exc:
            run.container = None
            self._finish(run, "failed", f"CreateContainerConfigError: {exc}")
            return
        sink = run.log_path.open("a", encoding="utf-8")
        thread = threading.Thread(target=_pump, args=(run.container.output, self.prefixes[run.pod.name], sink,
                                                      self.lock), daemon=True)
        thread.start()
        run.threads.append(thread)

    def _finish(self, run: PodRun, status: str, reason: str = "") -> None:
        run.status, run.reason, run.finished = status, reason, time.monotonic()
        self.node.release(run.pod.name)

    def _ended(self, run: PodRun) -> int | None:
        """The exit code of the current attempt once it has ended; records it."""
        container = run.container
        if container is None:
            return None
        code = container.poll()
        if code is not None:
            self._record(run, code)
        return code

    def _record(self, run: PodRun, code: int) -> None:
        container = run.container
        assert container is not None
        run.peak_memory = max(filter(None, [run.peak_memory, container.peak_memory]), default=None)
        record = {"pod": run.pod.name, "attempt": run.attempts, "exit_code": code, "reason": container.reason,
                  "peak_memory": container.peak_memory, **getattr(container, "record", {})}
        run.records.append(record)
        run.container = None
        if container.reason == "OOMKilled":
            log.error("%s: Last State: Terminated, Reason: OOMKilled, Exit Code: %d (memory limit %s)",
                      run.pod.name, code, format_memory(run.pod.limits.memory or 0))

    # -- the loop -------------------------------------------------------------------------------------

    def run(self, on_tick: Callable[[], None] | None = None, keep_services: bool = False) -> bool:
        """Create every workload; return once every Job has finished (Deployments keep running).

        ``on_tick`` is called on every pass, e.g. to ask the inference server its first question as
        soon as it is ready while later Jobs (the export) still run. A failed Job stops every pod unless
        ``keep_services``: then the Deployments go on, as on a cluster, where a failed Job leaves the inference
        Deployment serving what is promoted."""
        log.info("creating %d jobs and %d deployments together, as a cluster would, on a node of %s (%s engine)",
                 len(self.jobs), len(self.services), self.node, self.runtime.name)
        while any(r.status in ("pending", "running") for r in self.jobs):
            self.raise_if_interrupted()
            self.schedule()
            for run in [r for r in self.jobs if r.status in ("pending", "running")]:
                self._check_job(run)
            self.keep_services_up()
            if on_tick is not None:
                on_tick()
            time.sleep(self.poll_s)
        ok = all(r.status == "succeeded" for r in self.jobs)
        if not ok and not (keep_services and any(r.status == "running" for r in self.services)):
            self.stop_all("a job failed")
        return ok

    def raise_if_interrupted(self) -> None:
        """Act on Ctrl-C or SIGTERM here, between steps, never halfway through starting a pod."""
        if self.interrupted and not self.stopping:
            raise SignalReceived(self.interrupted)

    def tick(self) -> None:
        """One pass for the Deployments alone: placement, restarts and memory samples."""
        self.raise_if_interrupted()
        self.schedule()
        self.keep_services_up()

    def _sample(self) -> None:
        if time.monotonic() - self.last_sample >= 0.25:
            self.last_sample = time.monotonic()
            for run in self.runs:
                if run.container is not None:
                    run.container.sample()

    def _check_job(self, run: PodRun) -> None:
        self._sample()
        deadline = run.pod.deadline_s
        if deadline and time.monotonic() - run.created > deadline:
            self._stop(run, f"DeadlineExceeded: activeDeadlineSeconds={deadline}")
            log.error("%s failed: %s (%s)", run.pod.name, run.reason,
                      "still Pending" if run.attempts == 0 else f"attempt {run.attempts}")
            self._fail_others(run)
            return
        code = self._ended(run)
        if code is None:  # still running, or still Pending
            return
        if code == 0:
            self._finish(run, "succeeded")
            log.info("%s succeeded in %s%s", run.pod.name, format_duration(run.finished - run.started),
                     f", peak memory {format_memory(run.peak_memory)}" if run.peak_memory else "")
            return
        why = f"exit {code}" + (f" ({run.records[-1]['reason']})" if run.records[-1]["reason"] != "Error" else "")
        if code in run.pod.fail_job_exit_codes:
            self._finish(run, "failed", f"{why}: podFailurePolicy FailJob (bad input, not retried)")
        elif code in run.pod.ignore_exit_codes:
            run.ignored += 1
            log.warning("%s: %s, a clean stop; podFailurePolicy Ignore: a new pod, not counted against backoffLimit",
                        run.pod.name, why)
            self._start(run)
            return
        elif run.attempts - run.ignored > run.pod.backoff_limit:
            self._finish(run, "failed", f"{why}: backoffLimit {run.pod.backoff_limit} reached")
        else:
            log.warning("%s: %s; restarting it (attempt %d of %d), as the Job controller would", run.pod.name, why,
                        run.attempts - run.ignored + 1, run.pod.backoff_limit + 1)
            self._start(run)
            return
        log.error("%s failed: %s; its log: %s", run.pod.name, run.reason, run.log_path)
        self._fail_others(run)

    def keep_services_up(self) -> None:
        """A Deployment's pod that exits is started again, as its ReplicaSet would; never while stopping."""
        self._sample()
        for run in self.services:
            if self.stopping or run.status != "running":
                continue
            code = self._ended(run)
            if code is None and run.container is not None:
                continue
            if run.attempts >= SERVICE_RESTARTS:
                self._finish(run, "failed", f"CrashLoopBackOff: exited {run.attempts} times")
                log.error("%s keeps exiting (last exit %s); giving up", run.pod.name, code)
                continue
            log.warning("%s exited with %s; starting it again", run.pod.name, code)
            self._start(run)

    def _fail_others(self, failed: PodRun) -> None:
        for other in self.jobs:
            if other.status in ("running", "pending"):
                log.warning("stopping %s: %s failed, so inputs it may wait for will not come", other.pod.name,
                            failed.pod.name)
                self._stop(other, f"stopped after {failed.pod.name} failed")

    # -- stopping -------------------------------------------------------------------------------------

    def _stop(self, run: PodRun, reason: str, status: str = "failed", grace_s: float | None = None) -> None:
        if run.container is not None:
            run.container.stop(run.pod.grace_s if grace_s is None else grace_s)
            code = run.container.poll()
            self._record(run, code if code is not None else -1)
        self._finish(run, status, reason)

    def stop_all(self, reason: str, grace_s: float | None = None) -> None:
        """Stop every pod (Deployments first: they would restart nothing now), then wait for the logs."""
        self.stopping = True
        for run in sorted(self.runs, key=lambda r: r.pod.kind != "Deployment"):
            status = "stopped" if run.pod.kind == "Deployment" else "failed"
            if run.status == "running":
                self._stop(run, reason, status, grace_s)
            elif run.status == "pending":
                self._finish(run, status, reason)
        for run in self.runs:
            for thread in run.threads:
                thread.join(timeout=5)
        self.write_records()

    def write_records(self) -> Path:
        """Every attempt of every pod (exit code, reason, peak memory, how the runtime ran it), as JSON (its
        ``engine`` key is the ``--engine`` the run was given)."""
        path = self.state / "runs.json"
        path.write_text(json.dumps({"engine": self.runtime.name, "node": {"cpu_millis": self.node.cpu,
                                                                         "memory": self.node.memory},
                                    "attempts": [rec for run in self.runs for rec in run.records]}, indent=2))
        return path
