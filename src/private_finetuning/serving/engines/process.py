"""Generation in a process of its own, so that the HTTP worker never waits for a step.

A step of OpenVINO GenAI (like a torch forward) holds its process's GIL for the whole step. In the
HTTP worker that made /health and /ready wait behind generation, past the kubelet's 5 s under 16
clients on some hosts. So the HTTP worker holds an :class:`EngineProcess`: it has the engine's face
(``ready``, ``status``, ``loaded``, ``encode``, ``submit``), encodes prompts with its own copy of the
served tokenizer, and hands each request over a pipe to a child process that runs the real engine
(any of :data:`~private_finetuning.serving.engines.ENGINES`, unchanged). The child sends the text back
as it is generated, and its state a few times a second; probes read that copy and never cross the pipe.

A child that dies fails the requests it held (503 with Retry-After), turns /health and /ready 503 while
it is down, and is started again, with backoff; /ready then says how often and why.

Deadlines cross the pipe as ``time.monotonic()`` values: on Linux that clock is the same in every process.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from private_finetuning.data.chat import encode_prompt, with_system
from private_finetuning.serving.engines.base import Engine, LoadedModel, QueueFull, Request

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from private_finetuning.config import PipelineConfig
    from private_finetuning.serving.engines import EngineVolumes

log = logging.getLogger("model-inference-server")
STATE_EVERY_S = 0.2  # how often the child sends its state (when it changed)
POLL_S = 0.05  # how long the parent's reader waits for a message before it looks at cancellations and the child
FIRST_BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0  # between a child's death and its restart, doubling while it keeps dying
STOP_WAIT_S = 10.0
SIGTERM_GRACE_S = 5.0  # a SIGTERM to the engine process alone is rare; to the pod's group, the server stops too


# --- the child: the real engine behind a pipe -------------------------------------------------------------


def run_child(config: PipelineConfig, volumes: EngineVolumes, conn: Connection) -> None:
    """The engine process's main: build the engine as the server always did, then answer the pipe until it closes."""
    from private_finetuning.serving.engines import make_engine
    from private_finetuning.telemetry.progress import setup_logging

    setup_logging("model-inference-server")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides, then stops us
    engine = make_engine(config, base_model=volumes.base_model, base_tokenizer=volumes.base_tokenizer,
                         fine_tuned=volumes.fine_tuned, base_model_openvino=volumes.base_model_openvino).start()
    log.info("inference engine: %s, generating in process %d", engine.name, os.getpid())
    try:
        _Child(engine, conn).serve()
    finally:
        engine.stop()


def snapshot(engine: Engine) -> dict[str, Any]:
    """What the HTTP process needs to know about the engine, as plain data (the model itself stays here)."""
    loaded = engine.loaded
    return {"name": engine.name, "status": engine.status, "ready": engine.ready, "worker_alive": engine.worker_alive,
            "generated_tokens": engine.generated_tokens, "queue_depth": engine.queue_depth(),
            "loaded": None if loaded is None else {f.name: getattr(loaded, f.name) for f in fields(LoadedModel)
                                                   if f.name not in ("model", "tokenizer")}}


class _Child:
    def __init__(self, engine: Engine, conn: Connection):
        self.engine, self.conn = engine, conn
        self.requests: dict[int, Request] = {}
        self._send_lock = threading.Lock()

    def send(self, *message: Any) -> None:
        with self._send_lock, contextlib.suppress(OSError):  # the HTTP process gone: serve() sees the pipe close
            self.conn.send(message)

    def serve(self) -> None:
        threading.Thread(target=self._report, name="engine-state", daemon=True).start()
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                return  # the HTTP process is gone
            if message[0] == "submit":
                self._submit(*message[1:])
            elif message[0] == "cancel" and (request := self.requests.get(message[1])) is not None:
                request.cancelled = True
            elif message[0] == "stop":
                return

    def _submit(self, rid: int, prompt_ids: list[int], max_new_tokens: int, temperature: float, top_p: float,
                deadline: float, stream: bool) -> None:
        request = Request(prompt_ids, max_new_tokens, temperature, top_p, deadline,
                          stream=_Pieces(self, rid) if stream else None)  # type: ignore[arg-type]
        request.done = _Answered(self, rid, request)
        self.requests[rid] = request
        try:
            self.engine.submit(request)
        except QueueFull:
            self.requests.pop(rid, None)
            self.send("full", rid)

    def _report(self) -> None:
        last: dict[str, Any] | None = None
        while True:
            state = snapshot(self.engine)
            if state != last:
                self.send("state", state)
                last = state
            time.sleep(STATE_EVERY_S)


class _Pieces:
    """A streaming request's queue, as the engine sees it: each piece of text goes straight to the HTTP process."""

    def __init__(self, child: _Child, rid: int):
        self.child, self.rid = child, rid

    def put(self, piece: str | None) -> None:
        if piece is not None:  # the end is sent by _Answered, with the request's outcome
            self.child.send("piece", self.rid, piece)


class _Answered(threading.Event):
    """A request's ``done``: when the engine sets it, the outcome goes to the HTTP process."""

    def __init__(self, child: _Child, rid: int, request: Request):
        super().__init__()
        self.child, self.rid, self.request = child, rid, request

    def set(self) -> None:
        r = self.request
        self.child.requests.pop(self.rid, None)
        self.child.send("done", self.rid, r.text, r.completion_tokens, r.finish_reason, r.error)
        super().set()


# --- the parent: the engine's face in the HTTP worker -----------------------------------------------------


class EngineProcess:
    """The engine as the HTTP views see it, generating in a child process (see the module docstring)."""

    def __init__(self, config: PipelineConfig, volumes: EngineVolumes):
        self.config, self.serving, self.volumes = config, config.serving, volumes
        self.name = config.serving.engine  # until the child says which engine "auto" chose
        self.loaded: LoadedModel | None = None
        self.restarts, self.last_exit = 0, ""
        self._state: dict[str, Any] = {}
        self._down: str | None = None  # why the child is not running, while it is not
        self._pending: dict[int, Request] = {}
        self._cancelling: set[int] = set()
        self._ids = itertools.count()
        self._lock = threading.Lock()  # the pending map and the pipe: a request is sent to one child, or failed
        self._stop = threading.Event()
        self._process: Any = None
        self._conn: Connection | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> EngineProcess:
        self._spawn()
        self._thread = threading.Thread(target=self._supervise, name="engine-process", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._send("stop")
        if self._process is not None:
            self._process.join(STOP_WAIT_S)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(STOP_WAIT_S)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _spawn(self) -> None:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: never fork a threaded process
        parent, child = context.Pipe()
        process = context.Process(target=run_child, args=(self.config, self.volumes, child), name="inference-engine",
                                  daemon=True)
        process.start()
        child.close()
        with self._lock:
            old, self._process, self._conn, self._state, self._down = self._conn, process, parent, {}, None
        if old is not None:
            old.close()  # the dead child's pipe: one descriptor per restart otherwise
        log.info("started the engine process %d", process.pid)

    # --- what the views read ---------------------------------------------------------------------

    @property
    def worker_alive(self) -> bool:
        return self._down is None and self._process is not None and self._process.is_alive() \
            and self._state.get("worker_alive", True)

    @property
    def ready(self) -> bool:
        return self.worker_alive and bool(self._state.get("ready")) and self.loaded is not None

    @property
    def status(self) -> str:
        if self._down is not None:
            return f"not ready: {self._down}"
        status = self._state.get("status", "starting the engine process")
        if self.last_exit and not self.ready:
            status += f" (the engine process was restarted after it stopped: {self.last_exit})"
        return status

    @property
    def down_reason(self) -> str:
        return self._down or "the engine process's generation worker has stopped; it will be restarted"

    @property
    def generated_tokens(self) -> int:
        return int(self._state.get("generated_tokens", 0))

    def queue_depth(self) -> int:
        return int(self._state.get("queue_depth", 0))

    def process_info(self) -> dict[str, Any]:
        return {"engine_process": {"pid": self.pid, "restarts": self.restarts, "last_exit": self.last_exit or None}}

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        assert self.loaded is not None
        return encode_prompt(self.loaded.tokenizer, with_system(messages, self.config.prompting.system_prompt))

    def submit(self, request: Request) -> Request:
        with self._lock:
            if len(self._pending) >= self.serving.queue_size + self.serving.max_batch_size:
                raise QueueFull
            rid = next(self._ids)
            self._pending[rid] = request
            if self._send("submit", rid, request.prompt_ids, request.max_new_tokens, request.temperature,
                          request.top_p, request.deadline, request.stream is not None):
                return request
            del self._pending[rid]
        self._fail(request, "the engine process is not running; retry shortly")
        return request

    # --- the reader: messages, cancellations, the child's health ---------------------------------

    def _send(self, *message: Any) -> bool:
        """Send under ``self._lock``; False if the pipe is broken (the child died)."""
        try:
            assert self._conn is not None
            self._conn.send(message)
            return True
        except (OSError, ValueError, AssertionError):
            return False

    def _supervise(self) -> None:
        backoff = FIRST_BACKOFF_S
        while not self._stop.is_set():
            conn = self._conn
            try:
                while conn is not None and conn.poll(POLL_S):
                    self._receive(conn.recv())
            except (EOFError, OSError):
                pass  # the child is gone: seen below
            self._forward_cancellations()
            if self._state.get("ready"):
                backoff = FIRST_BACKOFF_S
            if not self._stop.is_set() and not self._process.is_alive():
                self._child_died(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _receive(self, message: tuple) -> None:
        kind = message[0]
        if kind == "state":
            self._adopt(message[1])
        elif kind == "piece":
            request = self._pending.get(message[1])
            if request is not None and request.stream is not None:
                request.stream.put(message[2])
        elif kind == "done":
            with self._lock:
                request = self._pending.pop(message[1], None)
            if request is not None:
                request.text, request.completion_tokens, request.finish_reason = message[2], message[3], message[4]
                Engine.finish(request, message[5])
        elif kind == "full":
            with self._lock:
                request = self._pending.pop(message[1], None)
            if request is not None:
                self._fail(request, "the server is busy: the request queue is full")

    def _adopt(self, state: dict[str, Any]) -> None:
        """The child's state; a newly loaded model's tokenizer is loaded here too, for encoding prompts."""
        self.name = state["name"]
        loaded = state["loaded"]
        if loaded is None:
            self.loaded = None
        elif self.loaded is None or any(getattr(self.loaded, k) != v for k, v in loaded.items()):
            tokenizer = self._tokenizer(loaded["tokenizer_path"])
            self.loaded = LoadedModel(model=None, tokenizer=tokenizer, **loaded) if tokenizer is not None else None
        self._state = state

    def _tokenizer(self, path: str) -> Any:
        if self.loaded is not None and path == self.loaded.tokenizer_path:
            return self.loaded.tokenizer
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception:  # the child loaded it a moment ago: a volume fault; the next state tries again
            log.exception("the served tokenizer could not be loaded in the HTTP process")
            return None
        return tokenizer

    def _forward_cancellations(self) -> None:
        with self._lock:
            for rid, request in self._pending.items():
                if request.cancelled and rid not in self._cancelling:
                    self._cancelling.add(rid)
                    self._send("cancel", rid)
            self._cancelling &= self._pending.keys()

    def _child_died(self, backoff: float) -> None:
        code = self._process.exitcode
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        self.last_exit = f"{why} at {time.strftime('%H:%M:%S')}"
        with self._lock:
            self._down = f"the engine process stopped ({why}); restarting it"
            failed, self._pending = list(self._pending.values()), {}
        if code == -signal.SIGTERM:  # the pod is stopping (its whole process group got SIGTERM): no alarm, and a
            backoff = max(backoff, SIGTERM_GRACE_S)  # restart only if this process is still here after a while
            log.info("the engine process was stopped by SIGTERM with %d requests in it; restarting it in %.0fs "
                     "unless this server stops too", len(failed), backoff)
        else:
            log.error("the engine process stopped (%s) with %d requests in it; they are answered 503, and it is "
                      "restarted in %.0fs", why, len(failed), backoff)
        for request in failed:
            self._fail(request, f"the engine process stopped ({why}) while answering; retry shortly")
        if self._stop.wait(backoff):
            return
        self.restarts += 1
        self._spawn()

    @staticmethod
    def _fail(request: Request, error: str) -> None:
        request.unavailable = True
        Engine.finish(request, error)
