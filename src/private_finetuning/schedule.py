"""How many optimizer steps a training run takes: from the data size, a floor and a time budget.

A fixed epoch count is wrong at both ends: 80 records x 3 epochs is 30 steps, too few to learn a
single fact; 20,000 records x 3 epochs does not fit a CPU's afternoon. So:

1. ``max_steps`` when set, exactly (for tests and experiments);
2. else ``epochs`` passes over the data, raised to ``min_steps`` so that a small dataset is seen
   often enough to be learned (docs/training.md has the measurements behind the defaults);
3. then, when ``time_budget_s`` is set, cut to what fits it on this machine, measured on the
   first steps of the run itself (the warm-up, whose learning rate does not depend on the total).

The plan is said in the log before training ("80 records -> 150 steps...") and the total is kept
in the checkpoint, so a resumed pod finishes the same schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from private_finetuning.config import TrainingConfig
from private_finetuning.progress import format_duration

PROBE_STEPS = 5  # steps timed before the budget is applied


@dataclass
class Plan:
    total_steps: int
    explanation: str
    budget_pending: bool  # the time budget is checked after PROBE_STEPS steps

    def probe_after(self) -> int:
        return min(PROBE_STEPS, max(1, self.total_steps - 1))


def plan(cfg: TrainingConfig, records: int, steps_per_epoch: int) -> Plan:
    """The planned total before training starts, and why, in words for the log."""
    batch = cfg.batch_size * cfg.gradient_accumulation_steps
    head = f"{records} records, {batch} per step: {steps_per_epoch} steps per epoch"
    if cfg.max_steps:
        return Plan(cfg.max_steps, f"{head}; training.max_steps = {cfg.max_steps} steps", False)
    by_epochs = cfg.epochs * steps_per_epoch
    if by_epochs >= cfg.min_steps:
        text = f"{head}; {cfg.epochs} epochs = {by_epochs} steps"
        total = by_epochs
    else:
        total = cfg.min_steps
        text = (f"{head}; {cfg.epochs} epochs would be {by_epochs} steps, raised to training.min_steps = {total} "
                f"({total / max(1, steps_per_epoch):.1f} epochs) so that a small dataset is learned")
    if cfg.time_budget_s:
        text += f"; at most what fits training.time_budget_s = {format_duration(cfg.time_budget_s)}, measured " \
                f"after {min(PROBE_STEPS, total)} steps"
    return Plan(total, text, bool(cfg.time_budget_s))


def fit_budget(p: Plan, cfg: TrainingConfig, steps_done: int, seconds: float) -> str:
    """Apply the time budget from the measured speed of the first steps; returns what was decided."""
    p.budget_pending = False
    per_step = seconds / max(1, steps_done)
    affordable = max(steps_done + 1, math.floor((cfg.time_budget_s or math.inf) / per_step)) \
        if per_step > 0 else p.total_steps
    if affordable < p.total_steps:
        p.total_steps = affordable
        return (f"{steps_done} steps took {seconds:.1f}s ({per_step:.2f}s each): cut to {affordable} steps to fit "
                f"training.time_budget_s = {format_duration(cfg.time_budget_s or 0)}")
    return (f"{steps_done} steps took {seconds:.1f}s ({per_step:.2f}s each): {p.total_steps} steps take about "
            f"{format_duration(per_step * p.total_steps)}, within the time budget")
