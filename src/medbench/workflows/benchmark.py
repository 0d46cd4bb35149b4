"""The benchmark: plan a grid of training runs (dataset x model x seed) and run it into a
results store, resumably and safely from several processes at once.

    from medbench.workflows.benchmark import BenchmarkConfig, run_benchmark
    config = BenchmarkConfig(datasets=["breastmnist"], models=["advanced_cnn"], seeds=2, epochs=5)
    outcome = run_benchmark(config)

Each cell is one `medbench.training.engine.train` run in its own folder under `OUT/runs/`. The store
(`OUT/results.sqlite`, or a PostgreSQL database given by URL; see `medbench.runs.store`) says
which cells are pending, running, finished or failed; a rerun skips finished cells and
resumes interrupted ones from their checkpoint. `workers=N` runs N processes on the grid
at once, each with its share of the CPU cores (`medbench.workflows.workers`).
At the end the report is written from the store (`medbench.report`); nothing here draws it.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from medbench.analysis.grid_analyses import GridExtras
from medbench.data import dataset_info, ensure_dataset, load_dataset
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.models import TIMM_PREFIX, model_label, model_options, model_spatial_dims
from medbench.report import build_report
from medbench.runs.leases import DEFAULT_HEARTBEAT_SECONDS, Heartbeat
from medbench.runs.results import RunResults, read_results
from medbench.runs.store import (
    DEFAULT_STALE_SECONDS,
    Owner,
    ResultsStore,
    describe_length,
    has_store,
    round_up_duration,
)
from medbench.training import engine
from medbench.training.callbacks import Callback, RoundEnd
from medbench.training.config import TrainConfig, config_hash, format_seconds, load_config_file
from medbench.training.progress import round_line
from medbench.training.recipe import DEFAULT_EPOCHS
from medbench.training.tracking import Tracking, stop_loggers
from medbench.utils.fsutil import atomic_write_text
from medbench.workflows.ensemble import METHODS, build_ensemble
from medbench.workflows.workers import check_workers, run_workers

# The reference study: DermaMNIST and OCTMNIST at 28 px, its two models and the published
# baseline architecture (ResNet-18).
DEFAULT_DATASETS = ("dermamnist", "octmnist")
DEFAULT_MODELS = ("advanced_cnn", "efficientnet", "resnet18")
DEFAULT_SEEDS = 3
DEFAULT_OUT = "medbench-results"
# Without a GPU and without --epochs/--time-budget, the whole grid shares this wall-clock
# budget, so the default grid ends in about an hour on a laptop CPU.
DEFAULT_CPU_TOTAL_BUDGET_SECONDS = 3600.0
# Of each run's share of a total budget, this part is kept for what the run spends outside
# training (loading its data, the final evaluation, the speed measurement).
OVERHEAD_SHARE = 0.1
TrainFn = Callable[..., RunResults]
Clock = Callable[[], float]


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a TrainConfig with its identity in the store."""

    config: TrainConfig
    config_hash: str

    @property
    def key(self) -> str:
        c = self.config
        return f"{c.dataset}|{c.size}|{c.model}|{c.seed}|{self.config_hash}"

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir or ".")

    def store_row(self) -> dict[str, Any]:
        c = self.config
        return {
            "key": self.key,
            "dataset": c.dataset,
            "size": c.size,
            "model": c.model,
            "seed": c.seed,
            "config_hash": self.config_hash,
            "config": c.to_dict(),
            "run_dir": str(self.run_dir),
        }


@dataclass
class GridOutcome:
    """What a `run_grid` call did and where the grid stands now."""

    out: Path
    cells: list[Cell]
    trained: list[str] = field(default_factory=list)  # keys this process trained (or resumed)
    failed: list[dict[str, Any]] = field(default_factory=list)  # store rows of failed cells
    counts: dict[str, int] = field(default_factory=dict)
    report: Any = None  # medbench.report.ReportFiles when a report was written
    ensembles: list[dict[str, Any]] = field(default_factory=list)  # with BenchmarkConfig.ensemble
    plan: GridPlan | None = None  # what run_benchmark planned before the work
    extras: list[Path] = field(default_factory=list)  # robustness/explain folders written

    @property
    def ok(self) -> bool:
        return not self.failed and self.counts.get("finished", 0) == len(self.cells)


# -- planning --------------------------------------------------------------------------------


def parse_seeds(seeds: int | str | Sequence[int]) -> list[int]:
    """`3` -> [0, 1, 2]; `"0,5,7"` -> [0, 5, 7]; a list is taken as it is."""
    if isinstance(seeds, str):
        values = _seeds_from_text(seeds)
    elif isinstance(seeds, int):
        values = _first_seeds(seeds)
    else:
        values = [int(s) for s in seeds]
    if not values or len(set(values)) != len(values):
        raise MedbenchError(f"--seeds must list distinct seeds, not {seeds!r}")
    return values


def _first_seeds(count: int) -> list[int]:
    if count < 1:
        raise MedbenchError(f"--seeds must be at least 1, not {count}")
    return list(range(count))


def _seeds_from_text(text: str) -> list[int]:
    """'3' is a count, '0,5,7' a list."""
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        count = int(text)
    except ValueError:
        raise MedbenchError(
            f"--seeds {text!r} is neither a count nor a comma-separated list; write e.g. 3 or 0,1,2"
        ) from None
    return _first_seeds(count)


def _names(values: str | Sequence[str] | None, default: Sequence[str], what: str) -> list[str]:
    if values is None:
        return list(default)
    if isinstance(values, str):
        values = [v.strip() for v in values.split(",")]
    # A user's model (file.py:fn, module:fn) keeps its case: a path is case-sensitive.
    names = [
        v.strip() if _is_user_spec(v) else v.strip().lower() for v in values if v and v.strip()
    ]
    if not names:
        raise MedbenchError(
            f"--{what} is empty; give a comma-separated list, e.g. --{what} {','.join(default)}"
        )
    return list(dict.fromkeys(names))


def _is_user_spec(name: str) -> bool:
    return ":" in name and not name.strip().lower().startswith(TIMM_PREFIX)


def plan_grid(
    datasets: Sequence[str],
    models: Sequence[str],
    seeds: Sequence[int],
    *,
    out: str | Path,
    size: int = 28,
    base: dict[str, Any] | None = None,
) -> list[Cell]:
    """The grid as cells in run order (dataset, then model, then seed). `base` holds
    TrainConfig keys applied to every cell (epochs, lr, data_dir, ...). A grid may mix 2D
    and 3D datasets: each dataset trains the models of its kind (`pair_models`)."""
    base = dict(base or {})
    for key in ("dataset", "model", "seed", "size", "run_dir", "model_source_hash"):
        base.pop(key, None)
    cells = []
    paired = pair_models(datasets, models)
    for dataset in datasets:
        for model in paired[dataset]:
            for seed in seeds:
                config = TrainConfig.from_dict(
                    {**base, "dataset": dataset, "model": model, "size": size, "seed": seed}
                ).validate()
                h = config_hash(config)
                folder = model_label(config.model)  # a file model: my_net:build, not its path
                config.run_dir = str(
                    Path(out) / "runs" / f"{dataset}-{size}" / folder / f"seed{seed}-{h[:8]}"
                )
                cells.append(Cell(config, h))
    return cells


def pair_models(datasets: Sequence[str], models: Sequence[str]) -> dict[str, list[str]]:
    """{dataset: the models of `models` for its kind of sample}: 2D models for 2D images,
    3D models for volumes, so one grid can hold both (`--datasets breastmnist,organmnist3d
    --models resnet18,resnet18_acs`). A name medbench does not know is kept everywhere (the
    name check reports it); a known model that fits no dataset of the grid, or a dataset
    left with no model, is a one-line error."""
    model_dims = {m: _known_dims(model_spatial_dims, m) for m in models}
    data_dims = {d: _known_dims(_dataset_dims, d) for d in datasets}
    paired = {
        d: [m for m in models if None in (dims, model_dims[m]) or model_dims[m] == dims]
        for d, dims in data_dims.items()
    }
    kind = {2: "2D images", 3: "3D volumes"}
    for m, dims in model_dims.items():
        if dims is not None and not any(m in ms for ms in paired.values()):
            raise MedbenchError(
                f"model {m} is for {kind[dims]} but no dataset of the grid holds "
                f"{kind[dims]}; add such a dataset or drop the model"
            )
    for d, ms in paired.items():
        dims = data_dims[d]
        if ms:
            continue
        if dims is None:  # a dataset of unknown kind keeps every model: `models` is empty
            raise MedbenchError("the grid has no model; give at least one")
        raise MedbenchError(
            f"{d} holds {kind[dims]} but no model of the grid is for them; add a "
            f"{dims}D model (see 'medbench models --dataset {d}')"
        )
    return paired


def _dataset_dims(name: str) -> int:
    return dataset_info(name).spatial_dims


def _known_dims(dims_of: Callable[[str], int], name: str) -> int | None:
    """The spatial dimensions `dims_of(name)` gives, None for a name medbench does not know."""
    try:
        return dims_of(name)
    except MedbenchError:  # an unknown name: reported by the name check
        return None


# -- run length and the plan --------------------------------------------------------------


def grid_length(base: dict[str, Any], total_time_budget_seconds: float | None) -> dict[str, Any]:
    """What decides how long the grid's runs train: part of the grid's identity in the
    store (see `ResultsStore.register_grid`)."""
    return {
        "epochs": base.get("epochs"),
        "time_budget_seconds": base.get("time_budget_seconds"),
        "total_time_budget_seconds": total_time_budget_seconds,
    }


def run_share(total_seconds: float, n_cells: int) -> float:
    """Each run's wall-clock share of a grid's total budget, fixed when the grid is planned:
    an even split, so a late run does not inherit what early ones left or overspent."""
    return total_seconds / n_cells


def training_budget(share_seconds: float) -> float:
    """The training budget (`time_budget_seconds`) that a run's wall share buys, after
    keeping OVERHEAD_SHARE of it for what the run does outside training."""
    return share_seconds * (1.0 - OVERHEAD_SHARE)


MIN_SHARE = 0.25  # a run is never trained on less than this fraction of its planned share


def cell_budget(share: float, seconds_left: float, cells_left: int) -> float:
    """The wall share of the next of `cells_left` runs when `seconds_left` of the grid's
    total remain: its planned `share`, or less where the grid spent more than planned
    (what is left, split evenly), so that the grid spends only what is left; never under
    MIN_SHARE of the share, so that every run of the grid is trained (a grid that far
    behind says so, and ends somewhat over its budget rather than with untrained runs)."""
    return max(MIN_SHARE * share, min(share, max(0.0, seconds_left) / max(1, cells_left)))


def training_budget_after(share_seconds: float, overheads: Sequence[float]) -> float:
    """A run's training budget from its wall share: the share less what a run spends outside
    training, which is OVERHEAD_SHARE of it or, once runs of this grid have been measured
    (loading, final evaluation, speed timing, files), the median of what they spent, if
    more; never under MIN_SHARE of the share."""
    overhead = OVERHEAD_SHARE * share_seconds
    if overheads:
        overhead = max(overhead, statistics.median(overheads))
    return max(MIN_SHARE * share_seconds, share_seconds - overhead)


@dataclass(frozen=True)
class CellSpeed:
    """A run's measured speed: wall seconds per optimiser step, and steps per epoch."""

    step_seconds: float
    steps_per_epoch: int

    @property
    def epoch_seconds(self) -> float:
        return self.step_seconds * self.steps_per_epoch


SpeedFn = Callable[[TrainConfig], "CellSpeed | None"]


@dataclass(frozen=True)
class CellPlan:
    """What one run of the grid is planned to do."""

    cell: Cell
    status: str  # the store's: pending, running, finished, failed ("pending" when new)
    speed: CellSpeed | None
    budget_seconds: float | None  # training budget, when a budget sets the length
    epochs: float | None  # the epochs it trains, or (under a budget) its budget buys
    eta_seconds: float | None  # wall time, with OVERHEAD_SHARE for the rest

    @property
    def short(self) -> bool:
        """Its budget buys less than one epoch."""
        return self.budget_seconds is not None and self.epochs is not None and self.epochs < 1

    def line(self) -> str:
        c = self.cell.label
        if self.status == "finished":
            return f"  {c}: finished"
        if self.speed is None:
            epochs = (
                f"{self.epochs:g} epoch(s)" if self.epochs is not None else "speed not measured"
            )
        else:
            sp = self.speed
            epochs = (
                f"{sp.step_seconds:.3g} s/step x {sp.steps_per_epoch} steps/epoch, "
                f"{self.epochs:.3g} epochs"
            )
        if self.budget_seconds is not None:
            epochs += f" in {format_seconds(self.budget_seconds)} of training"
        eta = f", ETA {format_seconds(self.eta_seconds)}" if self.eta_seconds is not None else ""
        warn = " (LESS THAN ONE EPOCH)" if self.short else ""
        return f"  {c}: {epochs}{eta}{warn}"


@dataclass
class GridPlan:
    """The grid before its work: each run's speed, the epochs its share buys and the ETA."""

    out: Path
    cells: list[CellPlan]
    length: dict[str, Any]
    spent_seconds: float = 0.0  # what the grid's runs have spent so far (from the store)
    recipe_epochs: int = DEFAULT_EPOCHS

    @property
    def todo(self) -> list[CellPlan]:
        return [p for p in self.cells if p.status != "finished"]

    @property
    def total_seconds(self) -> float | None:
        return self.length.get("total_time_budget_seconds")

    @property
    def seconds_left(self) -> float | None:
        """What is left of a total budget (None without one)."""
        total = self.total_seconds
        return None if total is None else max(0.0, total - self.spent_seconds)

    @property
    def eta_seconds(self) -> float | None:
        if self.seconds_left is not None:
            return self.seconds_left if self.todo else 0.0
        etas = [p.eta_seconds for p in self.todo]
        return None if None in etas else sum(etas)  # type: ignore[arg-type]

    def advice(self) -> str | None:
        """For runs whose share buys less than one epoch: the budget that buys the recipe's
        epochs for every run of the grid."""
        short = [p for p in self.todo if p.short and p.speed is not None]
        if not short:
            return None
        slowest = max(p.speed.epoch_seconds for p in self.todo if p.speed is not None)
        per_run = math.ceil(slowest * self.recipe_epochs / (1.0 - OVERHEAD_SHARE))
        names = ", ".join(p.cell.label for p in short[:3]) + (" ..." if len(short) > 3 else "")
        if self.total_seconds is not None:
            flag = f"--total-time-budget {round_up_duration(per_run * len(self.cells))}"
        else:
            flag = f"--time-budget {round_up_duration(per_run)}"
        return (
            f"{len(short)} run(s) get less than one epoch ({names}); {flag} would buy the "
            f"recipe's {self.recipe_epochs} epochs for every run (in a new --out), or use "
            "--epochs N"
        )

    def lines(self) -> list[str]:
        head = f"plan: {len(self.cells)} runs in {self.out}, {describe_length(self.length)}"
        if self.total_seconds is not None:
            share = run_share(self.total_seconds, len(self.cells))
            head += (
                f"; {format_seconds(self.spent_seconds)} spent, "
                f"{format_seconds(self.seconds_left or 0.0)} left; each run's share "
                f"{format_seconds(share)}"
            )
        done = len(self.cells) - len(self.todo)
        head += f"; {done} finished, {len(self.todo)} to run"
        if self.eta_seconds is not None:
            head += f", ETA {format_seconds(self.eta_seconds)}"
        advice = self.advice()
        return [head, *(p.line() for p in self.todo), *([f"  NOTE: {advice}"] if advice else [])]


def plan_cells(
    cells: Sequence[Cell],
    length: dict[str, Any],
    *,
    out: Path,
    statuses: dict[str, str] | None = None,
    spent_seconds: float = 0.0,
    speed_fn: SpeedFn | None = None,
) -> GridPlan:
    """The plan of a grid of `cells` run with `length`: each run not yet finished (per
    `statuses`, the store's) is measured once per recipe (`speed_fn`; seeds share it)."""
    statuses = statuses or {}
    speeds: dict[tuple, CellSpeed | None] = {}
    plans = []
    for cell in cells:
        status = statuses.get(cell.key, "pending")
        speed = None
        if status != "finished" and speed_fn is not None:
            recipe = (cell.config.dataset, cell.config.size, cell.config.model, cell.config_hash)
            if recipe not in speeds:
                speeds[recipe] = speed_fn(cell.config)
            speed = speeds[recipe]
        plans.append(_cell_plan(cell, status, speed, length, len(cells)))
    return GridPlan(out, plans, dict(length), spent_seconds)


def _cell_plan(
    cell: Cell, status: str, speed: CellSpeed | None, length: dict[str, Any], n_cells: int
) -> CellPlan:
    total = length.get("total_time_budget_seconds")
    budget = length.get("time_budget_seconds")
    if total is not None:
        budget = training_budget(run_share(total, n_cells))
    if budget is not None:
        epochs = budget / speed.epoch_seconds if speed is not None else None
        return CellPlan(cell, status, speed, budget, epochs, budget / (1.0 - OVERHEAD_SHARE))
    epochs = length.get("epochs") or DEFAULT_EPOCHS
    eta = epochs * speed.epoch_seconds / (1.0 - OVERHEAD_SHARE) if speed is not None else None
    return CellPlan(cell, status, speed, None, float(epochs), eta)


# -- the live view -------------------------------------------------------------------------


class GridView:
    """Live state of the grid on stderr: a tqdm bar on a terminal, plain lines otherwise."""

    def __init__(
        self, total: int, *, enabled: bool = True, stream=None, clock: Clock = time.monotonic
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total = total
        self.clock = clock
        self.cell_seconds: list[float] = []
        self.deadline: float | None = None  # clock time, when a total budget applies
        self._bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            self._bar = tqdm(
                total=total,
                desc="benchmark",
                unit="run",
                file=self.stream,
                dynamic_ncols=True,
                leave=True,
            )

    def _eta_seconds(self, counts: dict[str, int]) -> float | None:
        left = counts["pending"] + counts["running"]
        if left == 0:
            return 0.0
        if self.deadline is not None:
            return max(0.0, self.deadline - self.clock())
        if not self.cell_seconds:
            return None
        workers = max(1, counts["running"])
        return sum(self.cell_seconds) / len(self.cell_seconds) * math.ceil(left / workers)

    def status(self, counts: dict[str, int]) -> str:
        done = counts["finished"] + counts["failed"]
        eta = self._eta_seconds(counts)
        text = (
            f"{done}/{self.total} done ({counts['failed']} failed), {counts['running']} running, "
            f"{counts['pending']} left"
        )
        return text + (f", ETA {format_seconds(eta)}" if eta is not None else "")

    def update(self, counts: dict[str, int], event: str | None = None) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.n = counts["finished"] + counts["failed"]
            self._bar.set_postfix_str(self.status(counts).split(", ", 1)[1], refresh=False)
            if event:
                self._bar.write(event, file=self.stream)
            self._bar.refresh()
        else:
            line = f"[benchmark] {self.status(counts)}" + (f": {event}" if event else "")
            print(line, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A line under the bar (per-round news) that does not change the counts."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# -- running ---------------------------------------------------------------------------------


class GridCellCallback(Callback):
    """What a grid cell's run reports each round: it refreshes the cell's heartbeat in the
    store (the cell is still being worked on) and notes the round's numbers in the view."""

    def __init__(
        self,
        cell: Cell,
        store: ResultsStore,
        owner: Owner,
        view: GridView,
        elapsed: Callable[[], float] | None = None,
    ) -> None:
        self.cell = cell
        self.store = store
        self.owner = owner
        self.view = view
        self.elapsed = elapsed  # the attempt's wall seconds so far, kept in the store

    def on_round_end(self, event: RoundEnd) -> None:
        spent = None if self.elapsed is None else self.elapsed()
        self.store.heartbeat(self.cell.key, self.owner, attempt_seconds=spent)
        self.view.note("  " + round_line(self.cell.label, event.record, event.rounds_planned))


def _finished_results(run_dir: Path) -> RunResults | None:
    """The run's results.json when it says the run finished (e.g. the process died after
    writing it but before the store heard of it), else None."""
    try:
        results = read_results(run_dir / "results.json")
    except MedbenchError:
        return None
    return results if results.status == "finished" else None


class _DataCache:
    """The dataset of the cells in hand, loaded once for all of them in a row (the grid runs
    dataset by dataset); one dataset is kept in memory at a time."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._data: Any = None

    def __call__(self, config: TrainConfig) -> Any:
        key = (config.dataset, config.size, config.data_dir)
        if key != self._key:
            self._key, self._data = None, None
            self._data = load_dataset(config.dataset, config.size, config.data_dir, progress=False)
            self._key = key
        return self._data


def _default_train_fn(data: _DataCache | None = None) -> TrainFn:
    """The engine's train, on data from `data` (a `_DataCache`)."""
    data = data or _DataCache()

    def train_cached(config: TrainConfig, **kwargs: Any) -> RunResults:
        return engine.train(config, data=data(config), **kwargs)

    return train_cached


def engine_speed_fn(data: _DataCache | None = None, *, steps: int = 3) -> SpeedFn:
    """A run's speed as the engine measures it (`engine.measure_step_seconds`: a few
    optimiser steps after a warm-up one, in a throw-away folder)."""
    data = data or _DataCache()

    def speed(config: TrainConfig) -> CellSpeed:
        loaded = data(config)
        seconds = engine.measure_step_seconds(config, loaded, steps=steps)
        return CellSpeed(float(seconds), engine.steps_per_epoch(config, len(loaded.train)))

    return speed


def run_grid(
    cells: Sequence[Cell],
    out: str | Path,
    *,
    train_fn: TrainFn | None = None,
    total_time_budget_seconds: float | None = None,
    length: dict[str, Any] | None = None,
    storage: str | None = None,
    stale_seconds: float = DEFAULT_STALE_SECONDS,
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
    poll_seconds: float = 2.0,
    wait_for_others: bool = True,
    retry_failed: bool = True,
    progress: bool | None = None,
    clock: Clock = time.monotonic,
    on_start: Callable[[GridView], None] | None = None,
    tracking: Tracking | None = None,
) -> GridOutcome:
    """Run every cell of the grid that no one has finished, into `out`.

    Safe to run from several processes on the same `out` (on several machines, with the
    same `storage`, a database URL; see `medbench.runs.store`): each cell is claimed by one.
    With `wait_for_others`, a process with nothing left to claim waits while others still
    run cells (and takes over any whose owner died), so it ends when the whole grid has.
    A cell that raises is recorded as failed and the grid goes on; a MedbenchError (e.g.
    missing data) or Ctrl-C hands the cell back and stops.

    The grid is registered in the store with its run `length` (by default the cells'
    epochs and per-run budget, and `total_time_budget_seconds`); another length for a
    started grid is refused (`ResultsStore.register_grid`). A total budget is counted in
    run-seconds and kept with the time spent in the store: each run gets its share, fixed
    at planning (`run_share`, `training_budget`), and a resumed grid spends only what is
    left (`cell_budget`). `clock` times the attempts; `on_start` gets the view once the
    grid is registered (the benchmark prints its plan there).
    """
    out = Path(out)
    train_fn = train_fn or _default_train_fn()
    if len({c.key for c in cells}) != len(cells):
        raise MedbenchError(
            "the grid lists the same cell twice; give each dataset, model and seed once"
        )
    if length is None:
        base = cells[0].config.to_dict() if cells else {}
        length = grid_length(base, total_time_budget_seconds)
    store = ResultsStore(out, url=storage)
    store.register_grid([c.store_row() for c in cells], length, retry_failed=retry_failed)
    view = GridView(len(cells), enabled=True if progress is None else progress, clock=clock)
    grid = _GridRun(out, cells, store, train_fn, view, length.get("total_time_budget_seconds"))
    grid.tracking = tracking
    grid.event(f"{len(cells)} runs in {out} (store {store.name})")
    if on_start is not None:
        on_start(view)
    try:
        while (row := grid.claim(stale_seconds, poll_seconds, wait_for_others)) is not None:
            grid.run_cell(grid.by_key[row["key"]], row, heartbeat_seconds)
    finally:
        grid.close()
    grid.outcome.failed = [r for r in store.rows(grid.keys) if r["status"] == "failed"]
    return grid.outcome


class _GridRun:
    """One process's pass over a grid: it claims cells from the store one at a time, trains
    each (or records it, when its results are already on disk) and keeps the view current."""

    def __init__(
        self,
        out: Path,
        cells: Sequence[Cell],
        store: ResultsStore,
        train_fn: TrainFn,
        view: GridView,
        total_time_budget_seconds: float | None,
    ) -> None:
        self.keys = [c.key for c in cells]
        self.by_key = {c.key: c for c in cells}
        self.store = store
        self.owner = Owner.current()
        self.train_fn = train_fn
        self.view = view
        self.clock = view.clock
        self.outcome = GridOutcome(out=out, cells=list(cells))
        self.total_seconds = total_time_budget_seconds
        self.overheads: list[float] = []  # wall seconds runs spent beyond their training budget
        self.tracking: Tracking | None = (
            None  # trackers each run logs to (medbench.training.tracking)
        )
        if total_time_budget_seconds:
            left = total_time_budget_seconds - store.seconds_spent(self.keys)
            view.deadline = self.clock() + max(0.0, left)

    def event(self, text: str) -> None:
        self.view.update(self.store.counts(self.keys), text)

    def claim(self, stale_seconds: float, poll_seconds: float, wait: bool) -> dict | None:
        """The store row of the next cell this process claims; None when there is none (and,
        with `wait`, no other process is running one either)."""
        while True:
            row = self.store.claim(self.keys, self.owner, stale_seconds=stale_seconds)
            if row is not None or not (wait and self.store.counts(self.keys)["running"]):
                return row
            time.sleep(poll_seconds)

    def cell_config(self, cell: Cell) -> TrainConfig:
        """The cell's config, with its share of the grid's total budget when there is one."""
        config = TrainConfig.from_dict(dict(cell.config.to_dict()))
        if self.total_seconds:
            share = run_share(self.total_seconds, len(self.keys))
            counts = self.store.counts(self.keys)
            left = self.total_seconds - self.store.seconds_spent(self.keys)
            share_now = cell_budget(share, left, counts["pending"] + counts["running"])
            if share_now < share:
                self.event(
                    f"{cell.label}: the grid is behind its plan ({format_seconds(left)} left "
                    f"for {counts['pending'] + counts['running']} runs): this run gets "
                    f"{format_seconds(share_now)} of its {format_seconds(share)} share"
                )
            config.time_budget_seconds = training_budget_after(share_now, self.overheads)
        return config

    def run_cell(self, cell: Cell, row: dict[str, Any], heartbeat_seconds: float) -> None:
        """Train (or record) one claimed cell."""
        config = self.cell_config(cell)
        done = _finished_results(cell.run_dir)
        if done is not None:
            self.store.finish(cell.key, done, cell.run_dir / "results.json")
            self.event(f"{cell.label}: already finished on disk, recorded")
            return
        how = "resuming" if (cell.run_dir / "checkpoint.pt").exists() else "starting"
        budget = config.time_budget_seconds
        budget_note = f" (budget {format_seconds(budget)})" if budget else ""
        self.event(f"{cell.label}: {how}{budget_note}, attempt {row['attempts']}")
        started = self.clock()
        try:
            results = self.train(cell, config, heartbeat_seconds, started)
        finally:
            self.store.spend(cell.key, self.clock() - started)
        if results is not None and budget:
            self.overheads.append(max(0.0, self.clock() - started - budget))
        if results is not None:
            self.record_trained(cell, results, self.clock() - started)

    def train(
        self, cell: Cell, config: TrainConfig, heartbeat_seconds: float, started: float
    ) -> RunResults | None:
        """The cell's results; None when training raised a bug-like error (recorded as failed).
        A MedbenchError or Ctrl-C hands the cell back and propagates."""

        def elapsed() -> float:
            return self.clock() - started

        callback = GridCellCallback(cell, self.store, self.owner, self.view, elapsed)
        loggers = self.loggers(cell)
        try:
            with Heartbeat(
                lambda: self.store.heartbeat(cell.key, self.owner, attempt_seconds=elapsed()),
                heartbeat_seconds,
            ):
                return self.train_fn(
                    config, resume=True, callbacks=[callback, *loggers], progress=False
                )
        except (MedbenchError, KeyboardInterrupt):
            self.store.release(cell.key, self.owner)
            raise
        except Exception as exc:
            stop_loggers(loggers, "FAILED")
            self.record_failure(cell, exc)
            return None

    def loggers(self, cell: Cell) -> list[Callback]:
        """The cell's trackers: tagged with the grid and the cell, named by the run folder
        below the grid's runs/ (its folder names repeat across models)."""
        if self.tracking is None:
            return []
        tags = {"grid": str(self.outcome.out), "cell": cell.key, "config_hash": cell.config_hash}
        return self.tracking.loggers(tags, name_root=self.outcome.out / "runs")

    def record_failure(self, cell: Cell, exc: Exception) -> None:
        """Called while `exc` is being handled, so that its traceback goes to error.log."""
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        self.store.fail(cell.key, message)
        with contextlib.suppress(MedbenchError):
            atomic_write_text(cell.run_dir / "error.log", traceback.format_exc())
        warnings.warn(
            f"{cell.label} failed ({message}); the grid goes on", MedbenchWarning, stacklevel=4
        )
        self.event(f"{cell.label}: FAILED: {message}")

    def record_trained(self, cell: Cell, results: RunResults, wall: float) -> None:
        self.store.finish(cell.key, results, cell.run_dir / "results.json")
        self.outcome.trained.append(cell.key)
        self.view.cell_seconds.append(wall)
        acc = results.test.get("acc")
        summary = f"test acc {acc:.4f}" if isinstance(acc, (int, float)) else "finished"
        if results.collapsed:
            summary += " (COLLAPSED)"
        self.event(f"{cell.label}: {summary}")

    def close(self) -> None:
        counts = self.outcome.counts = self.store.counts(self.keys)
        over = not counts["pending"] and not counts["running"]
        self.view.update(counts, "grid finished" if over else "stopped")
        self.view.close()


# -- the whole benchmark ------------------------------------------------------------------------


def detect_gpu(device: str) -> bool:
    """Whether runs on `device` ("auto", "cuda", "cpu", ...) train on a GPU."""
    if device == "cuda":
        return True
    return device == "auto" and torch.cuda.is_available()


@dataclass
class BenchmarkConfig:
    """What a benchmark grid is: its cells, how long each run trains, where it is kept and
    what is done after the runs (`run_benchmark`; the CLI's `medbench benchmark` builds one).

    Defaults reproduce the reference study (DermaMNIST and OCTMNIST x advanced_cnn,
    efficientnet, resnet18 at 28 px, 3 seeds). Run length: `epochs` or
    `time_budget_seconds` per run, or `total_time_budget_seconds` for the whole grid; with
    none of them (here or in `train_config`), a GPU trains the engine's default epochs and
    a CPU shares `DEFAULT_CPU_TOTAL_BUDGET_SECONDS` over the grid. `on_gpu` says which of
    the two this machine is; by default it is detected from the device (see `detect_gpu`).
    The length is part of the grid's identity: an `out` whose grid started with another one
    is refused. `train_config` is a dict or a JSON file of TrainConfig keys applied to
    every run; the fields here win over it. `ensemble` (greedy, average, weighted) adds one
    ensemble per dataset (`out/ensembles/`); `extras` the runs' robustness and explanations
    (`medbench.analysis.grid_analyses`); the report shows both. `plan=True` stops after the
    plan: nothing is trained or written. `storage` (a database URL) puts the store on a
    server that several machines share; `workers` runs that many processes here."""

    datasets: str | Sequence[str] | None = None
    models: str | Sequence[str] | None = None
    seeds: int | str | Sequence[int] = DEFAULT_SEEDS
    size: int = 28
    epochs: int | None = None
    time_budget_seconds: float | None = None
    total_time_budget_seconds: float | None = None
    out: str | Path = DEFAULT_OUT
    data_dir: str | Path | None = None
    train_config: dict[str, Any] | str | Path | None = None
    device: str | None = None
    on_gpu: bool | None = None
    plan: bool = False
    report: bool = True
    progress: bool | None = None
    stale_seconds: float = DEFAULT_STALE_SECONDS
    ensemble: str | None = None
    storage: str | None = None
    workers: int = 1
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    tracking: Tracking | None = None  # trackers every run logs to (medbench.training.tracking)
    extras: GridExtras | None = None  # robustness, explanations after the runs


def run_benchmark(
    config: BenchmarkConfig,
    *,
    train_fn: TrainFn | None = None,
    speed_fn: SpeedFn | None = None,
    prepare_data: Callable[[str, int, str | None], object] | None = None,
    clock: Clock = time.monotonic,
) -> GridOutcome:
    """Plan and run the benchmark grid `config` describes into `config.out`, then write its
    report there.

        outcome = run_benchmark(BenchmarkConfig("breastmnist", "advanced_cnn", seeds=2, epochs=5))

    Before any cell is registered, every dataset with runs to do is made available
    (`prepare_data(name, size, data_dir)`, by default `medbench.data.ensure_dataset`, which
    downloads) and each recipe's speed is measured (`speed_fn`, by default the engine's);
    the plan (`GridOutcome.plan`) is printed with the progress. A stand-in `train_fn` (the
    engine's `train` by default) gets neither default: its data and speed are its own; with
    `workers` > 1 it must be a module-level function (`run_grid_workers`). `clock` times the
    grid's progress."""
    c = config
    check_workers(c.workers)
    grid = _prepare_grid(
        c.datasets,
        c.models,
        c.seeds,
        size=c.size,
        out=c.out,
        ensemble=c.ensemble,
        train_fn=train_fn,
        base=_grid_config(c.train_config, c.epochs, c.time_budget_seconds, c.data_dir, c.device),
        total_time_budget_seconds=c.total_time_budget_seconds,
        on_gpu=c.on_gpu,
        storage=c.storage,
    )
    extras = c.extras or GridExtras()
    _check_extras(extras, grid)  # before anything trains
    own_train_fn, cache = train_fn, _DataCache()
    if train_fn is None:
        train_fn = _default_train_fn(cache)
        speed_fn = speed_fn or engine_speed_fn(cache)
        prepare_data = prepare_data or _ensure_data
    grid_plan = grid.plan(speed_fn, prepare_data)
    if c.plan:
        return GridOutcome(out=grid.out, cells=grid.cells, counts=grid.counts(), plan=grid_plan)
    job = WorkerGrid(
        grid.cells,
        grid.out,
        own_train_fn,
        grid.length,
        c.storage,
        c.stale_seconds,
        c.heartbeat_seconds,
        c.progress,
        c.tracking,
    )
    outcome = _run_planned(job, grid_plan, c.workers, train_fn=train_fn, clock=clock)
    outcome.plan = grid_plan
    if c.ensemble is not None:
        outcome.ensembles = build_grid_ensembles(
            grid.cells, grid.out, c.ensemble, grid.base.get("data_dir")
        )
    outcome.extras = _run_extras(extras, grid, quiet=c.progress is False)
    if c.report:
        outcome.report = build_report(grid.out, storage=c.storage)  # a server store too
    return outcome


def _check_extras(extras: GridExtras, grid: _Grid) -> None:
    extras.check([c.config.dataset for c in grid.cells], [c.config.model for c in grid.cells])


def _run_extras(extras: GridExtras, grid: _Grid, quiet: bool) -> list[Path]:
    """Robustness and explanations of the grid's finished runs, before its report."""
    if not extras.any:
        return []

    def log(line: str) -> None:
        if not quiet:
            print(f"[benchmark] {line}", file=sys.stderr, flush=True)

    device = grid.base.get("device") or "auto"
    return extras.run(grid.out, data_dir=grid.base.get("data_dir"), device=device, log=log)


def _ensure_data(name: str, size: int, data_dir: str | None) -> object:
    return ensure_dataset(name, size, data_dir, progress=True)


@dataclass
class _Grid:
    """A benchmark grid whose arguments were checked, before anything was written."""

    out: Path
    cells: list[Cell]
    base: dict[str, Any]
    length: dict[str, Any]
    default_budget: bool  # the length is the CPU default, not the user's choice
    storage: str | None = None  # the store's database URL, when it is on a server

    def store(self) -> ResultsStore | None:
        """The grid's store, when it has one (opening it writes nothing new)."""
        if self.storage is not None:
            return ResultsStore(self.out, create=False, url=self.storage)
        return ResultsStore(self.out) if has_store(self.out) else None

    def counts(self) -> dict[str, int]:
        store = self.store()
        if store is None:
            return {"pending": len(self.cells), "running": 0, "finished": 0, "failed": 0}
        return store.counts([c.key for c in self.cells])

    def plan(
        self,
        speed_fn: SpeedFn | None,
        prepare_data: Callable[[str, int, str | None], object] | None,
    ) -> GridPlan:
        """Check the grid against the folder's store, make its data available and measure
        its speeds: everything that can fail or take a while before a cell is registered."""
        store = self.store()
        statuses: dict[str, str] = {}
        spent = 0.0
        if store is not None:
            store.check_grid([c.store_row() for c in self.cells], self.length)
            rows = store.rows([c.key for c in self.cells])
            statuses = {r["key"]: r["status"] for r in rows}
            spent = store.seconds_spent([c.key for c in self.cells])
        todo = [c for c in self.cells if statuses.get(c.key) != "finished"]
        if todo and self.default_budget:
            warnings.warn(
                f"no GPU: the grid shares a {format_seconds(DEFAULT_CPU_TOTAL_BUDGET_SECONDS)} "
                "time budget (set --epochs, --time-budget or --total-time-budget to choose)",
                MedbenchWarning,
                stacklevel=4,
            )
        if prepare_data is not None:
            for dataset, size in dict.fromkeys((c.config.dataset, c.config.size) for c in todo):
                prepare_data(dataset, size, self.base.get("data_dir"))
        grid_plan = plan_cells(
            self.cells,
            self.length,
            out=self.out,
            statuses=statuses,
            spent_seconds=spent,
            speed_fn=speed_fn,
        )
        advice = grid_plan.advice()
        if advice is not None:
            warnings.warn(advice, MedbenchWarning, stacklevel=4)
        return grid_plan


def _prepare_grid(
    datasets: str | Sequence[str] | None,
    models: str | Sequence[str] | None,
    seeds: int | str | Sequence[int],
    *,
    size: int,
    out: str | Path,
    ensemble: str | None,
    train_fn: TrainFn | None,
    base: dict[str, Any],
    total_time_budget_seconds: float | None,
    on_gpu: bool | None,
    storage: str | None = None,
) -> _Grid:
    """The grid's cells and length from the arguments, every argument checked."""
    if base.get("time_budget_seconds") is not None and total_time_budget_seconds is not None:
        raise MedbenchError(
            "give either a per-run budget (--time-budget, or time_budget_seconds in --config) "
            "or --total-time-budget (whole grid), not both"
        )
    out = Path(out).resolve()
    cells = plan_grid(
        _names(datasets, DEFAULT_DATASETS, "datasets"),
        _names(models, DEFAULT_MODELS, "models"),
        parse_seeds(seeds),
        out=out,
        size=size,
        base=base,
    )
    if ensemble is not None and ensemble not in METHODS:
        raise MedbenchError(
            f"unknown ensemble method {ensemble!r}; choose from {', '.join(METHODS)}"
        )
    if train_fn is None:  # the engine's names; a stand-in train function may use its own
        _check_names(cells)
    default = total_time_budget_seconds is None and _cpu_default_applies(base, on_gpu)
    if default:
        total_time_budget_seconds = DEFAULT_CPU_TOTAL_BUDGET_SECONDS
    length = grid_length(base, total_time_budget_seconds)
    return _Grid(out, cells, base, length, default, storage)


def _grid_config(
    config: dict[str, Any] | str | Path | None,
    epochs: int | None,
    time_budget_seconds: float | None,
    data_dir: str | Path | None,
    device: str | None,
) -> dict[str, Any]:
    """The TrainConfig keys every cell shares: `config` (a dict or a JSON file), then the
    arguments that were given."""
    base: dict[str, Any] = {}
    if config is not None:
        base = dict(config) if isinstance(config, dict) else load_config_file(config)
    given = {
        "epochs": epochs,
        "time_budget_seconds": time_budget_seconds,
        "data_dir": None if data_dir is None else str(data_dir),
        "device": device,
    }
    base.update({k: v for k, v in given.items() if v is not None})
    return base


def _cpu_default_applies(base: dict[str, Any], on_gpu: bool | None) -> bool:
    """Whether the grid gets the CPU's default total budget: its runs have no length
    (epochs or a per-run budget) and do not train on a GPU."""
    if any(base.get(k) is not None for k in ("epochs", "time_budget_seconds")):
        return False
    return not (detect_gpu(base.get("device", "auto")) if on_gpu is None else on_gpu)


def build_grid_ensembles(
    cells: Sequence[Cell], out: Path, method: str, data_dir: str | None = None
) -> list[dict[str, Any]]:
    """One ensemble per (dataset, size) over its finished runs (all models and seeds), saved
    to `out/ensembles/<dataset>-<size>-<method>/` where `medbench predict` can load it.
    Datasets with fewer than two finished runs get none."""
    by_dataset: dict[tuple[str, int], list[Path]] = {}
    for cell in cells:
        if _finished_results(cell.run_dir) is not None:
            by_dataset.setdefault((cell.config.dataset, cell.config.size), []).append(cell.run_dir)
    built = []
    for (dataset, size), dirs in by_dataset.items():
        if len(dirs) < 2:
            continue
        target = out / "ensembles" / f"{dataset}-{size}-{method}"
        built.append(build_ensemble(dirs, method, target, data_dir=data_dir))
    return built


def _check_names(cells: Sequence[Cell]) -> None:
    """Fail early, before any training, on an unknown dataset or model name."""
    for name in dict.fromkeys(c.config.dataset for c in cells):
        dataset_info(name)  # raises MedbenchError naming the known datasets
    for name in dict.fromkeys(c.config.model for c in cells):
        if not name.startswith(TIMM_PREFIX):
            model_options(name)  # raises MedbenchError naming the known models


# -- several workers on one machine ------------------------------------------------------


@dataclass(frozen=True)
class WorkerGrid:
    """What each worker process of `run_grid_workers` runs: plain data, sent to a fresh
    interpreter (`train_fn` None: the engine's own, built in the worker)."""

    cells: list[Cell]
    out: Path
    train_fn: TrainFn | None
    length: dict[str, Any]
    storage: str | None = None
    stale_seconds: float = DEFAULT_STALE_SECONDS
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    progress: bool | None = None
    tracking: Tracking | None = None


def _grid_worker(index: int, job: WorkerGrid) -> None:
    """One worker: claim and run cells until the grid is done (the grid was registered,
    and its failed cells put back once, before the workers started)."""
    run_grid(
        job.cells,
        job.out,
        train_fn=job.train_fn,
        length=job.length,
        storage=job.storage,
        stale_seconds=job.stale_seconds,
        heartbeat_seconds=job.heartbeat_seconds,
        retry_failed=False,
        progress=job.progress,
        tracking=job.tracking,
    )


def run_grid_workers(
    job: WorkerGrid, workers: int, *, plan_lines: Sequence[str] = ()
) -> GridOutcome:
    """Run the grid with `workers` processes on this machine, each with cores // workers
    torch threads (`medbench.workflows.workers`), all claiming from the one store; wait for them.

    A worker that dies leaves its cell to the others (its pid is gone, so the cell is
    reclaimed at once). When workers stopped and the grid is not done, MedbenchError
    names them; rerunning the command resumes."""
    keys = [c.key for c in job.cells]
    store = ResultsStore(job.out, url=job.storage)
    store.register_grid([c.store_row() for c in job.cells], job.length, retry_failed=True)
    before = {r["key"] for r in store.rows(keys) if r["status"] == "finished"}
    view = GridView(len(keys), enabled=job.progress is not False)
    for line in plan_lines:
        view.note(line)
    view.note(f"{workers} workers on {len(keys)} runs in {job.out} (store {store.name})")
    exits = run_workers(_grid_worker, job, workers)
    outcome = _workers_outcome(job, store, before, exits, view)
    view.close()
    return outcome


def _run_planned(
    job: WorkerGrid, grid_plan: GridPlan, workers: int, *, train_fn: TrainFn, clock: Clock
) -> GridOutcome:
    """Run the planned grid: in this process, or in `workers` processes."""
    if workers > 1:
        return run_grid_workers(job, workers, plan_lines=grid_plan.lines())

    def note_plan(view: GridView) -> None:
        for line in grid_plan.lines():
            view.note(line)

    return run_grid(
        job.cells,
        job.out,
        train_fn=train_fn,
        length=job.length,
        storage=job.storage,
        progress=job.progress,
        stale_seconds=job.stale_seconds,
        heartbeat_seconds=job.heartbeat_seconds,
        clock=clock,
        tracking=job.tracking,
        on_start=note_plan,
    )


def _workers_outcome(
    job: WorkerGrid, store: ResultsStore, before: set[str], exits: list, view: GridView
) -> GridOutcome:
    """Where the grid stands after its workers ended; MedbenchError naming the workers
    that stopped when the grid is not done."""
    keys = [c.key for c in job.cells]
    rows = store.rows(keys)
    outcome = GridOutcome(out=job.out, cells=list(job.cells), counts=store.counts(keys))
    outcome.trained = [
        r["key"] for r in rows if r["status"] == "finished" and r["key"] not in before
    ]
    outcome.failed = [r for r in rows if r["status"] == "failed"]
    lost = [e.describe() for e in exits if not e.ok]
    if lost and outcome.counts["finished"] + outcome.counts["failed"] < len(keys):
        raise MedbenchError(
            f"{'; '.join(lost)}; the grid stopped with {outcome.counts['finished']}/"
            f"{len(keys)} runs finished: rerun the same command to resume it"
        )
    for text in lost:
        view.note(f"{text}; the other workers finished its runs")
    return outcome
