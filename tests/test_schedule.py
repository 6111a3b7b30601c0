"""How many steps training takes, as the log explains it to the person who started it."""

from __future__ import annotations

from private_finetuning.config import TrainingConfig
from private_finetuning.schedule import fit_budget, plan


def test_a_small_dataset_is_raised_to_the_floor_and_told_why() -> None:
    p = plan(TrainingConfig(epochs=3, min_steps=150, batch_size=8), records=80, steps_per_epoch=10)
    assert p.total_steps == 150 and not p.budget_pending
    assert "80 records, 8 per step: 10 steps per epoch; 3 epochs would be 30 steps, raised to training.min_steps" \
        in p.explanation and "(15.0 epochs)" in p.explanation


def test_a_large_dataset_keeps_its_epochs_and_max_steps_overrides_everything() -> None:
    assert plan(TrainingConfig(epochs=3, min_steps=150), records=2000, steps_per_epoch=250).total_steps == 750
    exact = plan(TrainingConfig(max_steps=7, min_steps=150, time_budget_s=1), records=2000, steps_per_epoch=250)
    assert exact.total_steps == 7 and not exact.budget_pending


def test_the_time_budget_cuts_the_steps_from_the_measured_speed() -> None:
    cfg = TrainingConfig(epochs=3, min_steps=150, time_budget_s=120)
    p = plan(cfg, records=80, steps_per_epoch=10)
    assert p.budget_pending and p.probe_after() == 5
    said = fit_budget(p, cfg, steps_done=5, seconds=5.0)  # 1 s per step: 120 fit
    assert p.total_steps == 120 and not p.budget_pending
    assert said == "5 steps took 5.0s (1.00s each): cut to 120 steps to fit training.time_budget_s = 2:00"
    roomy = plan(cfg, records=80, steps_per_epoch=10)
    assert "within the time budget" in fit_budget(roomy, cfg, steps_done=5, seconds=1.0)
    assert roomy.total_steps == 150


def test_a_budget_too_small_for_anything_still_finishes_a_step_past_the_probe() -> None:
    cfg = TrainingConfig(min_steps=150, time_budget_s=1)
    p = plan(cfg, records=80, steps_per_epoch=10)
    fit_budget(p, cfg, steps_done=5, seconds=50.0)
    assert p.total_steps == 6
