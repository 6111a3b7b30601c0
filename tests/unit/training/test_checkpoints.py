"""Checkpoints remember how many ranks wrote them: another number of ranks starts over instead of resuming at a
position in the epoch whose batches were shared out differently (repeating or skipping examples silently)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from private_finetuning.training import checkpoints
from private_finetuning.training.checkpoints import TrainingState


class Scheduler:
    def state_dict(self) -> dict:
        return {"last_epoch": 3}


def test_a_checkpoint_of_another_world_size_is_not_resumed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import torch

    checkpoints.save(tmp_path, stage="test", run_id="r" * 64, weights={"w": torch.zeros(2)},
                     optimizer={"state": {}, "param_groups": []}, scheduler=Scheduler(), state=TrainingState(step=3),
                     world_size=2)
    with caplog.at_level(logging.WARNING):
        assert checkpoints.load(tmp_path, run_id="r" * 64, model=None, optimizer=None, scheduler=None,
                                world_size=1) is None
    assert "written by 2 rank(s) and this run has 1" in caplog.text and "starts over" in caplog.text
