"""Errors a stage reports to the person running it, each with the exit code the Job sees.

Exit codes are part of the contract with the Kubernetes manifests: a Job's ``podFailurePolicy``
fails the whole Job at once on ``EXIT_BAD_INPUT`` (retrying cannot fix a bad config or corrupt
data) and ``EXIT_GATE_FAILED`` (an evaluation gate refused the adapter), while other failures
(killed pod, timeout waiting for an input) are retried up to the Job's ``backoffLimit``.
``EXIT_INTERRUPTED`` means a SIGTERM (eviction, drain, Ctrl-C of the local runner) stopped the stage
cleanly, its progress saved where it has any: the Jobs' ``podFailurePolicy`` ignores it, so a
replacement pod is started without counting against ``backoffLimit``.
"""

from __future__ import annotations

import signal
from types import FrameType

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INPUT_TIMEOUT = 3
EXIT_GATE_FAILED = 4
EXIT_INTERRUPTED = 5


class PipelineError(Exception):
    """A failure with a message meant for a person; no traceback is needed to act on it."""

    exit_code = EXIT_FAILURE


class ConfigError(PipelineError):
    """The pipeline YAML is invalid; the message names the key."""

    exit_code = EXIT_BAD_INPUT


class InputDataError(PipelineError):
    """Training data is unusable; the message names the file, line and field."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: str, message: str, line: int | str | None = None, field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = path if line is None else f"{path}:{line}"
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")


class SourceError(PipelineError):
    """A model or tokenizer source is missing, unsafe or not loadable."""

    exit_code = EXIT_BAD_INPUT


class ArtifactError(PipelineError):
    """A published artifact is corrupt, half-written or of the wrong kind."""

    exit_code = EXIT_BAD_INPUT


class ExportError(PipelineError):
    """The model cannot be exported as asked (an architecture or vocabulary the format writer does not know)."""

    exit_code = EXIT_BAD_INPUT


class GateFailed(PipelineError):
    """An evaluation gate was not met: the adapter should not be promoted."""

    exit_code = EXIT_GATE_FAILED


class ArtifactTimeout(PipelineError):
    """An input artifact was not published in time; a retry of the Job may succeed."""

    exit_code = EXIT_INPUT_TIMEOUT


class Interrupted(PipelineError):
    """SIGTERM reached the stage: it stopped cleanly (a checkpoint saved, nothing partial published)."""

    exit_code = EXIT_INTERRUPTED


class Termination:
    """SIGTERM, as Kubernetes sends it before SIGKILL (eviction, drain, deletion).

    By default it raises :class:`Interrupted` wherever the stage is: unwinding removes staging
    folders, so nothing partial is published. A stage with progress to keep (training) defers it
    instead and checks ``requested`` at its safe points, then saves and raises itself.
    """

    deferred = False
    requested = False

    @classmethod
    def handle(cls, signum: int, _frame: FrameType | None) -> None:
        if cls.deferred:
            cls.requested = True  # acted on at the next safe point; nothing else is safe in a handler
            return
        raise Interrupted(f"stopped by {signal.Signals(signum).name} before finishing; nothing partial was "
                          "published")
