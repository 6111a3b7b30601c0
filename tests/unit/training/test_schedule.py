"""How many steps training takes, as the log explains it to the person who started it."""

from __future__ import annotations

from private_finetuning.config import TrainingConfig
from private_finetuning.training.schedule import fit_budget, plan


def test_a_small_dataset_is_raised_to_the_floor_and_told_why() -> None:
    p = plan(TrainingConfig(epochs=3, min_steps=150, batch_size=8, time_budget_s=None, stopping="plan"), facts=80,
             steps_per_epoch=10)
    assert p.total_steps == 150 and not p.budgeted
    assert "80 facts, 8 per step: 10 steps per epoch; 3 epochs would be 30 steps, raised to training.min_steps" \
        in p.explanation and "(15.0 epochs)" in p.explanation


def test_a_large_dataset_keeps_its_epochs_and_max_steps_overrides_everything() -> None:
    assert plan(TrainingConfig(epochs=3, min_steps=150), facts=2000, steps_per_epoch=250).total_steps == 750
    exact = plan(TrainingConfig(max_steps=7, min_steps=150, time_budget_s=1), facts=2000, steps_per_epoch=250)
    assert exact.total_steps == 7 and not exact.budgeted


def test_the_time_budget_follows_the_recent_speed_not_a_slow_start() -> None:
    cfg = TrainingConfig(epochs=3, min_steps=150, time_budget_s=300)
    p = plan(cfg, facts=80, steps_per_epoch=10)
    assert p.budgeted and "at most what fits training.time_budget_s = 5:00 here" in p.explanation
    # Other pods load models on the same cores: the first 5 steps take 14 s each.
    said = fit_budget(p, cfg, step=5, elapsed=70, recent_step_s=14.0)
    assert p.total_steps == 5 + 16 and said.startswith("step 5: 70s spent, 14.00s per step lately: cut to 21")
    # They are done: 2.3 s per step from then on, so the run gets its steps back (never above the plan).
    said = fit_budget(p, cfg, step=10, elapsed=82, recent_step_s=2.3)
    assert p.total_steps == 10 + 94 and "back to 104 steps (was 21)" in said
    assert fit_budget(p, cfg, step=15, elapsed=93, recent_step_s=2.3) is None  # within 5%: no churn
    roomy = plan(cfg, facts=80, steps_per_epoch=10)
    assert fit_budget(roomy, cfg, step=5, elapsed=5, recent_step_s=1.0) is None and roomy.total_steps == 150


def test_a_spent_budget_still_finishes_the_step_under_way() -> None:
    cfg = TrainingConfig(min_steps=150, time_budget_s=1)
    p = plan(cfg, facts=80, steps_per_epoch=10)
    fit_budget(p, cfg, step=5, elapsed=50.0, recent_step_s=10.0)
    assert p.total_steps == 6


def test_with_no_budget_and_no_step_count_the_held_back_rule_decides_within_a_cap() -> None:
    """A user who sets time_budget_s null gets training that ends when the facts are learnt, not after 3 epochs."""
    unbounded = TrainingConfig(time_budget_s=None, min_steps=150)
    assert unbounded.stops_on_held_back
    p = plan(unbounded, facts=80, steps_per_epoch=10)
    assert p.total_steps == 450 and not p.budgeted
    assert "until the held-back questions stop improving, at most 450 steps" in p.explanation
    assert plan(unbounded, facts=4000, steps_per_epoch=500).total_steps == 5000  # 10 epochs
    assert not TrainingConfig().stops_on_held_back  # the demo's 300 s budget: the plan
    assert not TrainingConfig(time_budget_s=None, max_steps=7).stops_on_held_back  # exactly 7 steps
    assert TrainingConfig(stopping="held_back").stops_on_held_back
    assert not TrainingConfig(time_budget_s=None, stopping="plan").stops_on_held_back


def test_forgetting_control_is_on_when_training_runs_to_the_held_back_rule() -> None:
    """Measured: at convergence the KL term kept forgetting at a tenth for 1.4x the step cost; under the demo's
    300 s budget those steps are worth more to the facts."""
    assert TrainingConfig(time_budget_s=None).kl == 1.0
    assert TrainingConfig().kl == 0.0
    assert TrainingConfig(kl_weight=0).kl == 0.0 and TrainingConfig(time_budget_s=None, kl_weight=0).kl == 0.0
    assert TrainingConfig(kl_weight=2).kl == 2.0
