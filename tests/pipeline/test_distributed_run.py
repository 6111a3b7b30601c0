"""`pft run --overlay k8s/overlays/distributed`: the TrainJob from its manifest, two ranks, an eviction, one adapter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO, train_argv, write_config
from private_finetuning.artifacts.store import open_artifact

NODES = ("model-peft-node-0-0", "model-peft-node-0-1")
RELOCATIONS = ("dataset-relocation", "model-relocation", "tokenizer-relocation")
TRAINING = {"max_steps": 30, "batch_size": 4, "checkpoint_every_steps": 100, "sample_generations": 1,
            "projector_tokens": 0, "shared_prefix": False, "log_every_s": 0.01, "warmup_steps": 2,
            "lora": {"r": 4, "alpha": 8}}


def rank_pid(rank: int, state: Path) -> int | None:
    """The process of one training node of this run (its environment names its rank and this state folder)."""
    for proc in Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"PET_NODE_RANK={rank}".encode() in env and any(str(state).encode() in e for e in env):
            return int(proc.name)
    return None


def test_the_distributed_overlay_trains_two_ranks_survives_an_eviction_and_matches_one_process(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    """The relocations and the TrainJob's two nodes from the repository's manifests, on a tiny Llama and dataset."""
    import torch
    from safetensors.torch import load_file

    from private_finetuning.stages import peft_training

    state = tmp_path / "state"
    pipeline = {"model": {"source": {"type": "hf-folder", "path": str(tiny_model_dir)}},
                "dataset": {"source": {"size": "tiny"}}}
    config = write_config(tmp_path / "p.yaml", {**pipeline, "training": TRAINING})
    runner = subprocess.Popen([sys.executable, "-m", "private_finetuning.cli", "run", "--overlay",
                               str(REPO / "k8s" / "overlays" / "distributed"), "--state-dir", str(state), "--config",
                               str(config), "--only", *RELOCATIONS, *NODES], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    assert runner.stdout is not None
    lines, evicted = [], False
    deadline = time.monotonic() + 900
    for line in runner.stdout:
        lines.append(line)
        if not evicted and line.startswith(f"[{NODES[0]}") and " step 5/30 " in line:
            pid = rank_pid(1, state)
            assert pid is not None, "rank 1's process not found"
            os.kill(pid, signal.SIGTERM)  # an eviction of the second node's pod
            evicted = True
        assert time.monotonic() < deadline, "".join(lines[-50:])
    out = "".join(lines)
    assert runner.wait(timeout=60) == 0, out[-5000:]
    assert evicted, out[-3000:]
    for node in NODES:  # both stopped at one step with a checkpoint, exit 5: new pods, not counted failures
        assert f"{node}: exit 5, a clean stop; podFailurePolicy Ignore" in out, out[-5000:]
    rank0 = (state / "logs" / f"{NODES[0]}.log").read_text()
    saved = int(rank0.split("SIGTERM at step ")[1].split()[0])
    assert f"resuming from the checkpoint at step {saved} of 30" in rank0
    volumes = state / "volumes"
    adapter = open_artifact(volumes / "fine-tuned-model", "adapter", "lora-adapter")
    assert adapter.manifest.metadata["world_size"] == 2 and adapter.manifest.metadata["steps"] == 30
    assert "data-parallel training (ddp): rank 1 of 2" in (state / "logs" / f"{NODES[1]}.log").read_text()

    # One process taking both ranks' micro-batches each step, on the same published inputs.
    single = {"datasets": volumes / "datasets", "base-model": volumes / "base-model",
              "base-tokenizer": volumes / "base-tokenizer", "fine-tuned-model": tmp_path / "single"}
    one = write_config(tmp_path / "one.yaml", {**pipeline, "training": {**TRAINING, "gradient_accumulation_steps": 2}})
    assert peft_training.main(train_argv(one, single)) == 0
    expected = load_file(open_artifact(single["fine-tuned-model"], "adapter", "lora-adapter")
                         .file("adapter_model.safetensors"))
    got = load_file(adapter.file("adapter_model.safetensors"))
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-3, atol=1e-4, msg=name)
