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

This module holds the runner: claiming cells from the store and training them
(`run_grid`), workers, ensembles and extras after the runs, `BenchmarkConfig` and
`run_benchmark`. The grid's cells, shares and plan are made in
`medbench.workflows.grid_plan`; the live progress view is `medbench.workflows.grid_progress`.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medbench.analysis.grid_analyses import GridExtras
from medbench.data import dataset_info, ensure_dataset, load_dataset
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.models import TIMM_PREFIX, model_options
from medbench.report import build_report
from medbench.runs.leases import DEFAULT_HEARTBEAT_SECONDS, Heartbeat
from medbench.runs.results import RunResults, read_results
from medbench.runs.store import (
    DEFAULT_STALE_SECONDS,
    Owner,
    ResultsStore,
    has_store,
)
from medbench.training import engine
from medbench.training.callbacks import Callback, RoundEnd
from medbench.training.config import TrainConfig, format_seconds, load_config_file
from medbench.training.progress import round_line
from medbench.training.tracking import Tracking, stop_loggers
from medbench.utils.fsutil import atomic_write_text
from medbench.workflows.ensemble import METHODS, build_ensemble
from medbench.workflows.grid_plan import (
    Cell,
    CellSpeed,
    GridPlan,
    SpeedFn,
    cell_budget,
    grid_length,
    parse_seeds,
    plan_cells,
    plan_grid,
    run_share,
    training_budget_after,
)
from medbench.workflows.grid_progress import Clock, GridView
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
TrainFn = Callable[..., RunResults]


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
