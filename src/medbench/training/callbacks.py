"""Callbacks: how code outside the engine sees a run as it trains.

The engine calls every callback at fixed points and hands it what it needs, the model
included (as Lightning's `Callback.on_validation_epoch_end(trainer, pl_module)` does), so
a progress bar, a tuner's pruner, a grid's heartbeat or a benchmark that scores every round
on the test split never has to patch medbench. Under torchrun the callbacks run on rank 0
only. A callback may raise to stop the run (a pruned tuning trial); the exception reaches
`train`'s caller unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the engine imports this module
    import torch.nn as nn

    from medbench.runs.results import RunResults
    from medbench.training.config import TrainConfig
    from medbench.utils.runtime import Runtime


@dataclass(frozen=True)
class RunInfo:
    """The fixed facts of a run, given to `on_train_start`."""

    config: TrainConfig
    run_dir: Path
    steps_per_epoch: int
    batch_size: int
    total_steps: int  # planned; 0 while a time budget has not been planned yet
    start_step: int  # > 0 when resumed
    model: nn.Module | None = None  # the module whose weights train (not for training it)


@dataclass(frozen=True)
class RoundEnd:
    """The end of one round: its history record and the model that was just validated.

    `model` is in eval mode with the weights this round's validation scored (the EMA
    weights when EMA is on), BatchNorm statistics recalibrated; a callback may run it on
    other data but must not train it."""

    run: RunInfo
    record: dict[str, Any]  # the history record: round, step, losses, val metrics, lr, ...
    model: nn.Module
    runtime: Runtime
    total_steps: int  # the plan after this round
    is_best: bool  # whether this round's weights are now the selected ones
    rounds_planned: int = 0  # the plan after this round, in rounds


class Callback:
    """Override what you need; every method does nothing by default."""

    def on_train_start(self, run: RunInfo) -> None:
        """Once, before the first step (also when resuming)."""

    def on_step(self, step: int, loss: float) -> None:
        """After each optimiser step whose loss has been read (one step late)."""

    def on_plan(self, total_steps: int) -> None:
        """When a time budget fixes or revises the number of steps."""

    def on_round_end(self, event: RoundEnd) -> None:
        """After each round's validation, selection and checkpoint."""

    def on_train_end(self, results: RunResults) -> None:
        """Once, with the run's final results (the record written to results.json)."""


class RecordCallback(Callback):
    """Call `fn(record)` with each round's history record (the older `on_epoch` hook)."""

    def __init__(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.fn = fn

    def on_round_end(self, event: RoundEnd) -> None:
        self.fn(event.record)


class CallbackList(Callback):
    """Several callbacks called in order, as one."""

    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_train_start(self, run: RunInfo) -> None:
        for cb in self.callbacks:
            cb.on_train_start(run)

    def on_step(self, step: int, loss: float) -> None:
        for cb in self.callbacks:
            cb.on_step(step, loss)

    def on_plan(self, total_steps: int) -> None:
        for cb in self.callbacks:
            cb.on_plan(total_steps)

    def on_round_end(self, event: RoundEnd) -> None:
        for cb in self.callbacks:
            cb.on_round_end(event)

    def on_train_end(self, results: RunResults) -> None:
        for cb in self.callbacks:
            cb.on_train_end(results)
