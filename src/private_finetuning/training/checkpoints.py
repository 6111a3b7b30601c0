"""Training checkpoints on the fine-tuned-model volume, so a killed pod resumes instead of restarting.

A checkpoint is an artifact like any other (atomic publish, checksummed manifest, verified before
use), stored per run under ``checkpoints/<run-id>/``. Everything is safetensors or JSON: no pickle,
not even for the optimizer state.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from private_finetuning.artifacts.store import ArtifactWriter, current_version, open_artifact
from private_finetuning.errors import ArtifactError

if TYPE_CHECKING:
    from peft import PeftModel

log = logging.getLogger(__name__)

KIND = "training-checkpoint"
ARTIFACT = "latest"
BEST_FILE = "best.safetensors"  # the best held-back scoring's weights (training/stopping.py)


@dataclass
class TrainingState:
    """Where a run is: what a checkpoint restores so a resumed pod carries on the same schedule and epoch."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    tokens_seen: int = 0
    last_loss: float | None = None
    total_steps: int = 0  # the schedule's total (after the time budget), kept for a resumed pod
    train_seconds: float = 0.0  # spent by earlier pods of this run, counted against the time budget
    # Each fact's last training loss (None: not seen yet), and a copy as it was when the epoch began:
    # loss-prioritised sampling drew the epoch from that copy, so a resumed pod draws the same epoch.
    fact_losses: list[float | None] = field(default_factory=list)
    epoch_priorities: list[float] | None = None
    stop_rule: dict[str, Any] | None = None  # training/stopping.py's StopRule, under stopping: held_back


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tensors to safetensors, the rest to JSON. The state is keyed by parameter name (``torch.distributed.
    checkpoint``'s form, the same with or without FSDP); names have dots, the state's keys none."""
    import torch

    tensors, scalars = {}, {}
    for name, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{name}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{name}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        if key.startswith("optimizer."):
            name, field_name = key.removeprefix("optimizer.").rsplit(".", 1)
            state.setdefault(name, {})[field_name] = tensor
    for key, value in meta["scalars"].items():
        name, field_name = key.rsplit(".", 1)
        state.setdefault(name, {})[field_name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save(folder: Path, *, stage: str, run_id: str, weights: dict[str, Any], optimizer: dict[str, Any],
         scheduler: Any, state: TrainingState, world_size: int = 1, best: dict[str, Any] | None = None) -> None:
    """Write a checkpoint from whole trainable weights and optimizer state keyed by parameter name
    (``distributed.trainable_state``/``optimizer_state``, gathered from every rank under FSDP); ``best``: the
    weights of the best held-back scoring (stopping: held_back), kept for the pod that resumes."""
    import torch
    from safetensors.torch import save_file

    with ArtifactWriter(folder, ARTIFACT, kind=KIND, stage=stage, keep_versions=0) as writer:
        assert writer.path is not None
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, writer.path / "adapter.safetensors")
        if best is not None:
            save_file(best, writer.path / BEST_FILE)
        opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        opt_tensors["rng.torch"] = torch.get_rng_state()
        save_file(opt_tensors, writer.path / "optimizer.safetensors")
        (writer.path / "state.json").write_text(json.dumps({
            "progress": asdict(state), "optimizer": opt_meta, "scheduler": scheduler.state_dict(),
        }, indent=1, default=float))
        writer.commit(name=f"step-{state.step}", source={"run_id": run_id, "world_size": world_size},
                      metadata=asdict(state))
    log.info("checkpoint at step %d saved to %s", state.step, folder / ARTIFACT)


def load(folder: Path, *, run_id: str, model: PeftModel, optimizer: Any, scheduler: Any,
         world_size: int = 1) -> tuple[TrainingState, dict[str, Any] | None] | None:
    """Restore the latest checkpoint of ``run_id`` into model/optimizer/scheduler; None if there is none. Returns its
    state and the best held-back scoring's weights it kept (None when it kept none).

    Every rank reads it (the volume is shared) and takes its own shard under FSDP. A checkpoint written by
    another number of ranks is not resumed: a step's batches are shared out by rank, so its position in the
    epoch would repeat or skip examples. Every rank reads the same record, so all decide alike."""
    import torch
    from safetensors.torch import load_file

    from private_finetuning.training.distributed import load_state

    manifest = current_version(folder, ARTIFACT)
    if manifest is None:
        return None
    try:
        artifact = open_artifact(folder, ARTIFACT, KIND)
    except ArtifactError as exc:
        log.warning("ignoring a checkpoint that does not verify (%s); training from the start", exc)
        return None
    if artifact.manifest.source.get("run_id") != run_id:
        return None
    written_by = int(artifact.manifest.source.get("world_size", 1))
    if written_by != world_size:
        log.warning("the checkpoint at step %s was written by %d rank(s) and this run has %d: resuming would "
                    "repeat or skip examples, so training starts over", artifact.manifest.metadata.get("step"),
                    written_by, world_size)
        return None
    state = json.loads(artifact.file("state.json").read_text())
    tensors = load_file(artifact.file("optimizer.safetensors"))
    load_state(model, optimizer, load_file(artifact.file("adapter.safetensors")),
               _unflatten_optimizer(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    best = load_file(artifact.file(BEST_FILE)) if (artifact.path / BEST_FILE).is_file() else None
    return TrainingState(**state["progress"]), best
