"""How long a run trains: a fixed number of epochs, or what a wall-clock budget buys.

Training is counted in optimiser *steps*; a *round* ends with a validation pass and a
checkpoint. With `--epochs` (or no budget) a round is one epoch. Under a time budget the
planner times the first steps, fixes the plan, and re-plans after every round from the
rounds' measured wall time. When the budget allows fewer than `MIN_ROUNDS` epochs it is cut
into up to `MIN_ROUNDS` equal rounds, so model selection and resumption still work on large
datasets (e.g. OCTMNIST on a CPU); validation may then take at most `EVAL_SHARE` of the
budget, which can mean fewer rounds.

Under a time budget the learning-rate schedule follows the elapsed share of the budget
(`schedule_fraction`), not the planned step total: re-planning changes how many steps and
rounds remain, never the rate (a re-plan that added steps used to raise it). With both
`--epochs` and a budget the run ends at whichever comes first.

Every reading of the time goes through the injected `clock` (seconds, monotonic), so the
planner is tested with a fake clock, not with wall time.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

MIN_ROUNDS = 5
EVAL_SHARE = 0.25  # most of a short budget that per-round validation may take
OVER_BUDGET = 1.05  # a run past this multiple of its budget stops at the end of the round
TARGET = 0.985  # re-plans aim to end training here: measured rounds vary by a few per cent
RECENT_ROUNDS = 3  # the rounds a re-plan estimates speed from (their median)
UNPLANNED = 10**9  # the provisional step total before the first steps are timed

Clock = Callable[[], float]


class BudgetPlanner:
    """The run's `total_steps` and `round_steps`, and the clock its wall time is read from."""

    def __init__(
        self,
        *,
        steps_per_epoch: int,
        epochs: int | None,
        budget_seconds: float | None,
        eval_images: int,
        images_per_step: int,
        default_epochs: int,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.budget = budget_seconds
        self.eval_images = eval_images  # forward-only images per round (validation, BN)
        self.images_per_step = images_per_step  # of the process that validates
        self.clock = clock
        # A budget plans (and re-plans) the length; `epochs`, given too, caps it.
        self.replans = budget_seconds is not None
        self.cap = (
            None if self.replans and not epochs else (epochs or default_epochs) * steps_per_epoch
        )
        self.planned = not self.replans
        self.round_steps = steps_per_epoch
        # Planned from the start (no budget) means a cap: the epochs, or the default ones.
        self.total_steps = self.cap if self.planned and self.cap is not None else UNPLANNED
        self._run_start = clock()
        self._calib: tuple[float, int] | None = None
        self._round_walls: list[float] = []  # wall time of each whole round
        self._eval_seconds = 0.0  # a round's validation, as first estimated
        self._round_trains: list[float] = []  # the training part of each

    # -- state kept in the checkpoint

    def state(self) -> dict[str, int | bool]:
        return {
            "total_steps": self.total_steps,
            "round_steps": self.round_steps,
            "planned": self.planned,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.total_steps = state["total_steps"]
        self.round_steps = state["round_steps"]
        self.planned = state["planned"]

    # -- time

    def start(self, train_seconds: float) -> None:
        """Start (or, resumed, continue) the run's clock at `train_seconds` already spent."""
        self._run_start = self.clock() - train_seconds

    def elapsed(self) -> float:
        return self.clock() - self._run_start

    # -- decisions

    def first_plan(self, step: int) -> tuple[int, int] | None:
        """After `step` steps of an unplanned run: the (total_steps, round_steps) to fix once
        the first steps are timed, else None."""
        if self.planned:
            return None
        if step == 1 or self._calib is None:
            self._calib = (self.clock(), step)
            return None
        if step >= min(12, self.steps_per_epoch) or (
            step >= 3 and self.elapsed() > 0.1 * self._budget_seconds()
        ):
            t0, s0 = self._calib
            step_seconds = (self.clock() - t0) / max(1, step - s0)
            # A validation pass is forward-only (about a third of a training step per image).
            self._eval_seconds = self.eval_images / self.images_per_step * step_seconds / 3
            return plan_budget(
                self._budget_seconds(),
                self.elapsed(),
                step,
                self._calib,
                self.steps_per_epoch,
                self.eval_images,
                self.images_per_step,
                self.clock(),
            )
        return None

    def _budget_seconds(self) -> float:
        """The time budget a plan is made for. Only a budgeted run starts unplanned; one
        resumed without its budget before its plan was fixed has nothing to plan for."""
        if self.budget is None:
            raise TypeError("an unplanned run needs a time budget to plan its length")
        return self.budget

    def apply(self, plan: tuple[int, int]) -> None:
        total, round_steps = plan
        if self.cap is not None and total >= self.cap:  # the epochs end it before the budget
            total, round_steps = self.cap, self.steps_per_epoch
        self.total_steps, self.round_steps, self.planned = total, round_steps, True

    def schedule_fraction(self, step: int) -> float | None:
        """How much of the run is done, for the learning-rate schedule: None (the schedule's
        own step / total) without a budget; under a budget its elapsed share, and with an
        epoch cap too, whichever of the two is further."""
        if self.budget is None:  # no budget: the schedule follows the steps
            return None
        fraction = min(1.0, self.elapsed() / self.budget)
        return max(fraction, step / self.cap) if self.cap else fraction

    def in_last_round(self, step: int) -> bool:
        """Whether `step` lies in the planned last round of a budgeted run: the one round no
        re-plan follows. Decided from step counts alone, so every process of a torchrun job
        decides alike and only then asks rank 0's clock (`deadline_reached`)."""
        return (
            self.replans
            and self.planned
            and self.total_steps - self.round_steps <= step < self.total_steps
        )

    def deadline_reached(self, step: int) -> bool:
        """Whether a budgeted run must end training now to leave its last validation time
        inside the budget. Re-plans happen at round ends, so within the last round (for a
        slow model whose budget buys one round, the whole run) only this catches a machine
        that slowed down."""
        if self.budget is None or not self.in_last_round(step):
            return False
        return self.elapsed() + self._validation_seconds() >= TARGET * self.budget

    def _validation_seconds(self) -> float:
        """A round's validation (and checkpoint) time: the median over the recent measured
        rounds, or the first steps' estimate before any round ended."""
        walls, trains = self._round_walls[-RECENT_ROUNDS:], self._round_trains[-RECENT_ROUNDS:]
        overheads = [w - t for w, t in zip(walls, trains, strict=True)]
        return statistics.median(overheads) if overheads else self._eval_seconds

    def round_ends(self, step: int) -> bool:
        return step % self.round_steps == 0 or step >= self.total_steps

    def over_budget(self, step: int) -> bool:
        """Whether a run not yet at its end has run past its budget (a slow machine)."""
        return (
            self.budget is not None
            and self.elapsed() > self.budget * OVER_BUDGET
            and step < self.total_steps
        )

    def replan(self, step: int, round_start: float, round_train_seconds: float) -> bool:
        """Re-plan after a round that started at `round_start` and trained for
        `round_train_seconds`: the first steps' timing can be 10-15% off. True when the
        total changed."""
        if self.budget is None:  # no budget: the epochs fix the plan
            return False
        now = self.clock()
        self._round_walls.append(now - round_start)
        self._round_trains.append(round_train_seconds)
        new_total = replan_budget(
            self.budget,
            now - self._run_start,
            step,
            self.total_steps,
            self.round_steps,
            self._round_walls[-RECENT_ROUNDS:],
            self._round_trains[-RECENT_ROUNDS:],
        )
        if self.cap is not None:
            new_total = min(new_total, self.cap)
        changed, self.total_steps = new_total != self.total_steps, new_total
        return changed

    def stop_at(self, step: int) -> None:
        self.total_steps = step

    def rounds_planned(self) -> int:
        return math.ceil(self.total_steps / self.round_steps)


def plan_budget(
    budget: float,
    elapsed: float,
    step: int,
    calib_start: tuple[float, int],
    steps_per_epoch: int,
    n_eval: int,
    batch_size: int,
    now: float,
) -> tuple[int, int]:
    """Fix (total_steps, round_steps) so that training plus the forward-only passes of each
    round (`n_eval` images: validation and BatchNorm recalibration) fit in `budget`, from the
    steps timed since `calib_start` (time, step) up to `now`."""
    t0, s0 = calib_start
    step_seconds = (now - t0) / max(1, step - s0)
    # A validation pass is forward-only (about a third of a training step per image).
    val_seconds = n_eval / batch_size * step_seconds / 3
    available = max(0.0, budget - elapsed)
    epoch_seconds = steps_per_epoch * step_seconds + val_seconds
    if available >= MIN_ROUNDS * epoch_seconds:
        epochs = int(available // epoch_seconds)
        return step + epochs * steps_per_epoch - step % steps_per_epoch, steps_per_epoch
    # Fewer than MIN_ROUNDS epochs fit: cut the budget into rounds, as many as validation
    # allows within EVAL_SHARE of it (at least one: the end of training).
    rounds = max(1, min(MIN_ROUNDS, int(EVAL_SHARE * available // max(val_seconds, 1e-9))))
    total = step + max(rounds, int((available - rounds * val_seconds) // step_seconds))
    return total, max(1, math.ceil(total / rounds))


def replan_budget(
    budget: float,
    elapsed: float,
    step: int,
    total_steps: int,
    round_steps: int,
    recent_round_seconds: list[float],
    recent_train_seconds: list[float],
    target: float = TARGET,
) -> int:
    """The new `total_steps` after a round ending at `step`, so that training ends at about
    `target` of the budget: as many more whole rounds as fit, then a shorter last round in
    the time left over; unchanged when the run has already reached its end.

    Speed comes from the recent rounds: the median of their training seconds per step, and
    of their overhead (a round's wall time beyond its training: validation, checkpoint).
    The median, so that one slow round (a busy machine for a moment) neither shrinks the
    plan nor makes it jump back the round after; recent rounds, so that a machine that
    really became slower is followed within two rounds."""
    if step >= total_steps or not recent_round_seconds:
        return total_steps
    step_seconds = max(statistics.median(recent_train_seconds) / round_steps, 1e-9)
    overhead = statistics.median(
        w - t for w, t in zip(recent_round_seconds, recent_train_seconds, strict=True)
    )
    per_round = round_steps * step_seconds + overhead
    remaining = max(0.0, target * budget - elapsed)
    rounds_left = int(remaining // max(per_round, 1e-9))
    leftover = remaining - rounds_left * per_round - overhead
    extra = min(round_steps - 1, max(0, int(leftover // step_seconds)))
    return step + rounds_left * round_steps + extra
