"""The one real-model pipeline of `make test`: the default manifests and embedded models, run once per session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, write_config


def pft(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "private_finetuning.cli", *args], cwd=cwd, capture_output=True,
                          text=True, check=False, timeout=900)


# The embedded default models and manifests, with a dataset small enough for a test, trained long
# enough (10 epochs of its 16 records) to have learnt what it was taught.
FAST_PIPELINE = {
    "dataset": {"source": {"size": "tiny"}},
    # fp32 on every host: the same steps compute the same adapter on a Zen 4 or AMX host (bf16 there) as elsewhere.
    "training": {"max_steps": 40, "batch_size": 4, "sample_generations": 1, "projector_tokens": 50,
                 "precision": "fp32"},
    # Replies long enough to reach the fact; 8 trained questions per model instead of 48 (each model answers them).
    # The reference row is judged on tiny models (tests/stages/test_evaluation.py); Gemma's relocation is checked here.
    "evaluation": {"samples": 4, "max_new_tokens": 32, "trained_samples": 8, "include_reference": False},
    "export": {"check_questions": 4},
    # int8 whatever it costs: on 4 questions one answer is 25 points, and the test checks the int8 model is served.
    "serving": {"openvino": {"max_int8_accuracy_loss": None}},
}


@pytest.fixture(scope="session")
def default_pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The pipeline run once per test session from the repository's own manifests, on the real embedded models;
    every end-to-end test that only reads its results shares it (the most expensive thing `make test` does)."""
    state = tmp_path_factory.mktemp("pipeline")
    config = write_config(state / "fast.yaml", FAST_PIPELINE)
    return state, pft("run", "--state-dir", str(state / "state"), "--config", str(config), "--then", "smoke")
