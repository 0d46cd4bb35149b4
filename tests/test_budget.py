"""The budget planner: a run under a time budget ends inside it, at any speed, without
raising its learning rate when the plan changes. Timed with a fake clock, never wall time."""

from __future__ import annotations

import math

import pytest

from medbench.data import load_dataset
from medbench.data.synthetic import write_synthetic_like
from medbench.training.budget import (
    EVAL_SHARE,
    MIN_ROUNDS,
    BudgetPlanner,
    plan_budget,
    replan_budget,
)
from medbench.training.callbacks import Callback
from medbench.training.config import TrainConfig
from medbench.training.engine import train
from medbench.training.recipe import lr_factor
from support.tiny import TINY_MODEL, tiny_options


@pytest.fixture(scope="module")
def blood(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_synthetic_like(folder, "bloodmnist", 28, n_train=96, n_val=32, n_test=32, seed=1)
    return load_dataset("bloodmnist", 28, folder, progress=False)


def budget_config(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(
        dataset="bloodmnist",
        model=TINY_MODEL,
        batch_size=32,
        model_options=tiny_options(),
        run_dir=str(tmp_path / name),
    )
    return TrainConfig(**{**base, **kw})


class FakeMachine(Callback):
    """A clock that moves only when the model runs a batch (a training step, a BatchNorm
    recalibration or a validation batch): each costs `seconds * speed`, whatever the
    machine's load. From round 2 on the speed is `later` (2: a machine that became twice as
    slow). It also records every plan the engine announces."""

    def __init__(self, seconds: float, speed: float = 1.0, later: float | None = None):
        self.now, self.seconds, self.speed = 0.0, seconds, speed
        self.later = speed if later is None else later
        self.plans = []

    def __call__(self) -> float:
        return self.now

    def on_train_start(self, run):
        run.model.register_forward_pre_hook(self._batch)

    def _batch(self, module, args):
        self.now += self.seconds * self.speed

    def on_plan(self, total_steps):
        self.plans.append(total_steps)

    def on_round_end(self, event):
        self.speed = self.later


def run_on(machine: FakeMachine, tmp_path, blood, **kw):
    return train(
        budget_config(tmp_path, **kw),
        data=blood,
        progress=False,
        measure=False,  # no latency timing with a fake clock
        clock=machine,
        callbacks=[machine],
    )


@pytest.mark.slow
@pytest.mark.parametrize("speed", [0.5, 1.0, 2.0])
def test_a_budgeted_run_ends_inside_its_budget_and_never_raises_its_learning_rate(
    tmp_path, blood, speed
):
    # A round (3 steps, then 3 recalibration + 1 validation batches) is 2-6% of the budget.
    machine, budget = FakeMachine(0.05, speed), 12.0
    r = run_on(machine, tmp_path, blood, time_budget_seconds=budget)
    assert 0.95 * budget <= r.timing.train_seconds <= 1.02 * budget
    assert not r.over_budget
    # At a steady speed the plan settles: after the first timing, at most one correction.
    assert len(set(machine.plans)) <= 2, machine.plans
    warm = [h.lr for h in r.history if h.step > 3]  # after the 1-epoch warm-up
    assert all(a >= b for a, b in zip(warm, warm[1:], strict=False)), warm
    assert warm[-1] < 0.05 * r.config["lr"]  # the schedule ran to its end


@pytest.mark.slow
@pytest.mark.parametrize("later", [2.0, 0.5])
def test_a_run_whose_speed_changes_after_its_plan_still_fills_its_budget(tmp_path, blood, later):
    machine, budget = FakeMachine(0.05, later=later), 3.0
    r = run_on(machine, tmp_path, blood, time_budget_seconds=budget)
    assert not r.over_budget  # slower: the plan shrank in time, no emergency stop
    assert r.timing.train_seconds <= 1.02 * budget
    assert r.history[-1].lr < r.config["lr"] * 0.2  # the schedule still ran out
    if later < 1:  # faster: the spare time was spent training; less than a round is left
        assert budget - r.timing.train_seconds < 7 * 0.05 * later


@pytest.mark.slow
def test_epochs_and_a_budget_end_at_whichever_comes_first(tmp_path, blood):
    by_epochs = run_on(FakeMachine(0.05), tmp_path, blood, epochs=2, time_budget_seconds=100.0)
    assert by_epochs.epochs_trained == 2.0 and by_epochs.timing.train_seconds < 2.0
    by_budget = run_on(
        FakeMachine(0.05), tmp_path, blood, name="b", epochs=500, time_budget_seconds=3.0
    )
    assert by_budget.epochs_trained < 500 and by_budget.timing.train_seconds <= 3.0 * 1.02


def test_a_budget_with_room_for_many_epochs_plans_whole_epochs():
    # 10 steps timed at 0.1 s each.
    total, per_round = plan_budget(60.0, 1.0, 10, (100.0, 0), 20, 256, 32, now=101.0)
    assert per_round == 20 and total % 20 == 0
    assert total * 0.1 + (total // 20) * (256 / 32 * 0.1 / 3) <= 60.0


def test_when_validation_is_costly_the_budget_keeps_most_time_for_training():
    # A huge validation split (OCTMNIST-like) and a short budget: 1 s steps, a validation
    # pass costing 40 s, 120 s left. Five rounds would spend 200 s validating.
    calib, now = (100.0, 0), 110.0  # 10 steps timed at 1 s each
    total, per_round = plan_budget(130.0, 10.0, 10, calib, 10_000, 3840, 32, now)
    rounds = math.ceil(total / per_round)
    assert rounds == 1  # not even one pass fits in its quarter (30 s): validate once, at the end
    assert total - 10 == 80  # training gets the 120 s left minus that one 40 s pass
    # With a cheaper validation (4 s), several rounds fit within the validation share.
    total, per_round = plan_budget(130.0, 10.0, 10, calib, 10_000, 384, 32, now)
    rounds = math.ceil(total / per_round)
    assert 2 <= rounds <= MIN_ROUNDS and rounds * 4.0 <= EVAL_SHARE * 120.0


def test_a_re_plan_follows_the_measured_rounds():
    # 100 s budget, rounds of 10 steps, 40 s gone after 4 rounds; each round 8 s of training
    # (0.8 s a step) and 2 s of validation. The plan aims at 98.5 s.
    def replan(walls, trains):
        return replan_budget(100.0, 40.0, 40, 100, 10, walls, trains)

    steady = replan([10.0] * 3, [8.0] * 3)
    assert steady == 40 + 5 * 10 + 8  # 5 whole rounds, then 8 steps and a validation
    assert replan([15.0] * 3, [12.0] * 3) < steady  # slower rounds: fewer steps
    assert replan([6.0] * 3, [5.0] * 3) > steady  # faster: the spare time trains more
    # One slow round among three (a busy moment) does not move the plan: the median does not.
    assert replan([10.0, 30.0, 10.0], [8.0, 28.0, 8.0]) == steady


def test_a_re_plan_stops_a_run_with_no_time_left_and_keeps_a_finished_one():
    assert replan_budget(100.0, 99.0, 40, 100, 10, [10.0], [8.0]) == 40  # nothing fits: stop
    assert replan_budget(100.0, 10.0, 100, 100, 10, [1.0], [0.8]) == 100  # finished stays


def test_time_left_over_after_the_last_whole_round_trains_a_shorter_round():
    # Rounds of 10 steps take 60 s: 40 s training (4 s a step) + 20 s validation/checkpoint.
    # 48.5 s are left to the target: no whole round fits, but 7 steps (28 s) and a validation.
    assert replan_budget(100.0, 50.0, 10, 20, 10, [60.0], [40.0]) == 10 + 7
    # Less time left than the validation itself: stop.
    assert replan_budget(100.0, 85.0, 10, 20, 10, [60.0], [40.0]) == 10


def _budget_planner(clock, eval_images: int = 0) -> BudgetPlanner:
    """A 100 s budget, 10 steps an epoch, 32 images a step, timed by `clock`."""
    return BudgetPlanner(
        steps_per_epoch=10,
        epochs=None,
        budget_seconds=100.0,
        eval_images=eval_images,
        images_per_step=32,
        default_epochs=40,
        clock=clock,
    )


def test_under_a_budget_the_schedule_follows_the_elapsed_share_of_it():
    clock = FakeMachine(0.0)
    planner = _budget_planner(clock)
    planner.start(0.0)
    clock.now = 25.0
    assert planner.schedule_fraction(step=50) == pytest.approx(0.25)
    cfg = TrainConfig(dataset="x", model="y", warmup_epochs=0)
    # The rate at a given time does not depend on how many steps are planned.
    assert lr_factor(cfg, 50, 200, 10, 0.25) == lr_factor(cfg, 50, 400, 10, 0.25)
    assert lr_factor(cfg, 50, 200, 10, 0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    no_budget = BudgetPlanner(
        steps_per_epoch=10,
        epochs=3,
        budget_seconds=None,
        eval_images=0,
        images_per_step=32,
        default_epochs=40,
        clock=clock,
    )
    assert no_budget.schedule_fraction(step=5) is None and no_budget.total_steps == 30


@pytest.mark.slow
def test_a_steps_speed_is_measured_on_the_clock_after_a_warm_up_step(tmp_path, blood):
    from medbench.training.engine import measure_step_seconds, steps_per_epoch

    class Ticks:  # each call moves the clock by one more second: 1, 2, 3, ... apart
        def __init__(self):
            self.now, self.step = 0.0, 0.0

        def __call__(self):
            self.step += 1.0
            self.now += self.step
            return self.now

    cfg = budget_config(tmp_path, epochs=1)
    # Two readings (start, end): 1 then 3 seconds in -> (3 - 1) / 2 steps = 1 s a step.
    assert measure_step_seconds(cfg, blood, steps=2, clock=Ticks()) == pytest.approx(1.0)
    assert not (tmp_path / "run").exists()  # a throw-away folder, not the run's
    assert steps_per_epoch(cfg, 96) == 3


def test_within_a_long_round_training_stops_in_time_for_its_validation():
    # A slow model whose budget buys one round cannot be re-planned before that round ends:
    # the planner's deadline ends training where the round's validation still fits.
    clock = FakeMachine(0.0)
    planner = BudgetPlanner(
        steps_per_epoch=100,
        epochs=None,
        budget_seconds=100.0,
        eval_images=1152,
        images_per_step=32,  # 36 batches, forward only: estimated as 12 steps, 12 s
        default_epochs=40,
        clock=clock,
    )
    planner.start(0.0)
    for step in range(1, 13):  # 12 steps timed at 1 s each, then the plan
        clock.now = float(step)
        plan = planner.first_plan(step)
    planner.apply(plan)
    assert math.ceil(planner.total_steps / planner.round_steps) == 1  # one round
    clock.now = 50.0  # the machine slowed down: step 30 of the plan comes at 50 s, not 30 s
    assert not planner.deadline_reached(30)
    clock.now = 87.0  # 87 s + the 12 s validation would pass 98.5% of the budget
    assert planner.deadline_reached(31)
    assert not planner.deadline_reached(planner.total_steps)  # the end needs no deadline


def test_the_deadline_is_asked_only_in_the_last_planned_round():
    # Earlier rounds end in a re-plan, which catches a slow machine; asking rank 0's clock
    # on every step would cost a torchrun job one collective per step.
    clock = FakeMachine(0.0)
    planner = _budget_planner(clock, eval_images=32)
    planner.start(0.0)
    planner.apply((50, 10))  # five rounds of ten steps
    clock.now = 99.0  # long past the deadline
    assert not planner.in_last_round(39) and not planner.deadline_reached(39)
    assert planner.in_last_round(40) and planner.deadline_reached(40)
    assert not planner.in_last_round(50)  # the end itself needs no deadline
