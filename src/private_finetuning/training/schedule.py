"""How many optimizer steps a training run takes: from the data size, a floor and a time budget.

A fixed epoch count is wrong at both ends: 80 records x 3 epochs is 30 steps, too few to learn a
single fact; 20,000 records x 3 epochs does not fit a CPU's afternoon. So:

1. ``max_steps`` when set, exactly (for tests and experiments);
2. else ``epochs`` passes over the data, raised to ``min_steps`` so that a small dataset is seen
   often enough to be learned (docs/training.md has the measurements behind the defaults);
3. then, when ``time_budget_s`` is set, cut to what fits it on this machine: every few steps the
   remaining time is projected from the speed of the last few steps, so a slow start (other pods
   loading models on the same cores) is not taken for the speed of the whole run; changes under
   10% are ignored, so that noise does not move the learning-rate schedule back and forth.

The plan is said in the log before training ("80 facts -> 150 steps...") and the total is kept
in the checkpoint, so a resumed pod finishes the same schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from private_finetuning.config import TrainingConfig
from private_finetuning.telemetry.progress import format_duration

CHECK_EVERY = 5  # steps between two looks at the time budget
# Under the held-back stopping rule the plan is a cap (docs/training.md: the helpdesk set stopped at 275 of 450;
# AcmeHotels ran to the cap, its best scoring at 425): 10 epochs, at least 3 x min_steps.
HELD_BACK_EPOCHS, HELD_BACK_MIN_STEPS_FACTOR = 10, 3
SPEED_WINDOW = 10  # the speed is that of the last this many steps


@dataclass
class Plan:
    total_steps: int
    explanation: str
    budgeted: bool  # a time budget applies: look again every CHECK_EVERY steps
    planned_steps: int = 0  # before any cut: the budget never raises the total above it

    def __post_init__(self) -> None:
        self.planned_steps = self.planned_steps or self.total_steps


def plan(cfg: TrainingConfig, facts: int, steps_per_epoch: int, ranks: int = 1) -> Plan:
    """The planned total before training starts, and why, in words for the log."""
    batch = cfg.batch_size * cfg.gradient_accumulation_steps * ranks
    over = f" over {ranks} ranks" if ranks > 1 else ""
    head = f"{facts} facts, {batch} per step{over}: {steps_per_epoch} steps per epoch"
    if cfg.max_steps:
        return Plan(cfg.max_steps, f"{head}; training.max_steps = {cfg.max_steps} steps", False)
    if cfg.stops_on_held_back:
        total = max(HELD_BACK_EPOCHS * steps_per_epoch, HELD_BACK_MIN_STEPS_FACTOR * cfg.min_steps)
        text = (f"{head}; training.stopping held_back: until the held-back questions stop improving, at most {total} "
                f"steps ({HELD_BACK_EPOCHS} epochs, at least {HELD_BACK_MIN_STEPS_FACTOR} x training.min_steps)")
        if cfg.time_budget_s:
            text += f", and what fits training.time_budget_s = {format_duration(cfg.time_budget_s)} here"
        return Plan(total, text, bool(cfg.time_budget_s))
    by_epochs = cfg.epochs * steps_per_epoch
    if by_epochs >= cfg.min_steps:
        text = f"{head}; {cfg.epochs} epochs = {by_epochs} steps"
        total = by_epochs
    else:
        total = cfg.min_steps
        text = (f"{head}; {cfg.epochs} epochs would be {by_epochs} steps, raised to training.min_steps = {total} "
                f"({total / max(1, steps_per_epoch):.1f} epochs) so that a small dataset is learned")
    if cfg.time_budget_s:
        text += f"; at most what fits training.time_budget_s = {format_duration(cfg.time_budget_s)} here"
    return Plan(total, text, bool(cfg.time_budget_s))


def fit_budget(p: Plan, cfg: TrainingConfig, step: int, elapsed: float, recent_step_s: float) -> str | None:
    """Re-project the total from the time left and the recent speed; what changed, in words, or None."""
    if not p.budgeted or not cfg.time_budget_s or recent_step_s <= 0:
        return None
    left = max(0.0, cfg.time_budget_s - elapsed)
    total = min(p.planned_steps, max(step + 1, step + math.floor(left / recent_step_s)))
    if total == p.total_steps or abs(total - p.total_steps) < max(3, p.total_steps // 10):
        return None  # noise in the speed: keep the schedule steady
    before, p.total_steps = p.total_steps, total
    verb = "cut to" if total < before else "back to"
    return (f"step {step}: {elapsed:.0f}s spent, {recent_step_s:.2f}s per step lately: {verb} {total} steps (was "
            f"{before}) to end within training.time_budget_s = {format_duration(cfg.time_budget_s)}")
