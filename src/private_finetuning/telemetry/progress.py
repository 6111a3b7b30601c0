"""Logs a person can follow: one line format for every stage, and progress lines with an ETA."""

from __future__ import annotations

import logging
import os
import sys
import time


def setup_logging(stage: str) -> logging.Logger:
    """Configure the root logger once per process; every line names the stage that wrote it."""
    level = os.environ.get("PFT_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level, stream=sys.stderr, force=True,
        format=f"%(asctime)s %(levelname)-5s [{stage}] %(message)s", datefmt="%H:%M:%S",
    )
    # Library chatter (progress bars, deprecation notes) drowns the stage's own story.
    for noisy in ("transformers", "datasets", "huggingface_hub", "urllib3", "filelock", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    return logging.getLogger(stage)


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Reports ``done/total``, rate and ETA at most every ``every_s`` seconds, and always at the end."""

    def __init__(self, log: logging.Logger, what: str, total: int, unit: str = "items", every_s: float = 10.0):
        self.log, self.what, self.total, self.unit, self.every_s = log, what, total, unit, every_s
        self.done = 0
        self.start = self._last = time.monotonic()

    def update(self, n: int = 1, **extra: object) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self.log.info("%s", self.line(**extra))

    def line(self, **extra: object) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        fields = "".join(f" {k}={v}" for k, v in extra.items())
        eta_text = format_duration(eta) if eta == eta else "?"
        return (f"{self.what} {self.done}/{self.total} ({pct:.0f}%) {rate:.1f} {self.unit}/s "
                f"elapsed {format_duration(elapsed)} ETA {eta_text}{fields}")
