"""What the tests share besides fixtures: paths, config writing, publishing inputs, ports.

Imported by name (``from helpers import write_config``); conftest.py holds only fixtures and the
network guard every test runs under.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NETGUARD = Path(__file__).parent / "netguard"


NO_GATES = {"min_fact_accuracy_gain": None, "min_fact_accuracy": None, "max_forgetting_kl": None,
            "max_general_perplexity_increase": None}


def write_config(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def published_rows(path: Path) -> list[dict]:
    """The lines of a published dataset split as the JSON a user reading the volume sees."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def publish_inputs(root: Path, model_dir: Path, dataset: dict | None = None) -> dict[str, Path]:
    """Publish dataset, base model and tokenizer volumes with the real relocation stages."""
    from private_finetuning.stages import dataset_relocation, model_relocation, tokenizer_relocation

    cfg = write_config(root / "inputs.yaml", {
        "model": {"source": {"type": "hf-folder", "path": str(model_dir)}},
        "dataset": dataset or {"source": {"size": "tiny"}}})
    volumes = {name: root / name for name in ("datasets", "base-model", "base-tokenizer", "fine-tuned-model")}
    for stage, volume in ((dataset_relocation, "datasets"), (model_relocation, "base-model"),
                          (tokenizer_relocation, "base-tokenizer")):
        assert stage.main(["--config", str(cfg), "--output", str(volumes[volume])]) == 0
    return volumes


def train_argv(config: Path, volumes: dict[str, Path]) -> list[str]:
    return ["--config", str(config), "--datasets", str(volumes["datasets"]), "--base-model",
            str(volumes["base-model"]), "--base-tokenizer", str(volumes["base-tokenizer"]),
            "--output", str(volumes["fine-tuned-model"]), "--status-port", "0"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Logged:
    """A process whose output is read as it comes: a server under load fills an unread 64 KiB pipe with its
    access log in seconds and then blocks on its next log line, probes and all."""

    def __init__(self, argv: list[str], **kwargs: object):
        self.lines: list[str] = []
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        **kwargs)  # type: ignore[call-overload]
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def stop(self, timeout: float = 60) -> str:
        """Terminate it, wait, and return everything it wrote."""
        self.process.terminate()
        self.process.wait(timeout)
        self._reader.join(timeout)
        return "".join(self.lines)
