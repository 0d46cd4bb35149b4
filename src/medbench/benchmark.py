"""The benchmark: plan a grid of training runs (dataset x model x seed) and run it into a
results store, resumably and safely from several processes at once.

    from medbench.benchmark import run_benchmark
    outcome = run_benchmark(datasets=["breastmnist"], models=["advanced_cnn"], seeds=2, epochs=5)

Each cell is one `medbench.engine.train` run in its own folder under `OUT/runs/`. The store
(`OUT/results.sqlite`, see `medbench.store`) says which cells are pending, running, finished
or failed; a rerun skips finished cells and resumes interrupted ones from their checkpoint.
At the end the report is written from the store (`medbench.report`); nothing here draws it.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from medbench import engine
from medbench.callbacks import Callback, RoundEnd
from medbench.config import TrainConfig, config_hash, format_seconds, load_config_file
from medbench.data import dataset_info, load_dataset
from medbench.ensemble import METHODS, build_ensemble
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.fsutil import atomic_write_text
from medbench.models import TIMM_PREFIX, model_options
from medbench.report import build_report
from medbench.results import RunResults, read_results
from medbench.store import DEFAULT_STALE_SECONDS, Owner, ResultsStore

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
        c = self.config
        return f"{c.dataset}/{c.model}/seed{c.seed}"

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
    ensembles: list[dict[str, Any]] = field(default_factory=list)  # with run_benchmark(ensemble=)

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
    names = [v.strip().lower() for v in values if v and v.strip()]
    if not names:
        raise MedbenchError(
            f"--{what} is empty; give a comma-separated list, e.g. --{what} {','.join(default)}"
        )
    return list(dict.fromkeys(names))


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
    TrainConfig keys applied to every cell (epochs, lr, data_dir, ...)."""
    base = dict(base or {})
    for key in ("dataset", "model", "seed", "size", "run_dir"):
        base.pop(key, None)
    cells = []
    for dataset in datasets:
        for model in models:
            for seed in seeds:
                config = TrainConfig.from_dict(
                    {**base, "dataset": dataset, "model": model, "size": size, "seed": seed}
                ).validate()
                h = config_hash(config)
                config.run_dir = str(
                    Path(out) / "runs" / f"{dataset}-{size}" / model / f"seed{seed}-{h[:8]}"
                )
                cells.append(Cell(config, h))
    return cells


# -- the live view -------------------------------------------------------------------------


class GridView:
    """Live state of the grid on stderr: a tqdm bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, *, enabled: bool = True, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total = total
        self.started = time.monotonic()
        self.cell_seconds: list[float] = []
        self.deadline: float | None = None  # monotonic time, when a total budget applies
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
            return max(0.0, self.deadline - time.monotonic())
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

    def __init__(self, cell: Cell, store: ResultsStore, owner: Owner, view: GridView) -> None:
        self.cell = cell
        self.store = store
        self.owner = owner
        self.view = view

    def on_round_end(self, event: RoundEnd) -> None:
        self.store.heartbeat(self.cell.key, self.owner)
        record = event.record
        parts = [
            f"{k} {record[k]:.4f}"
            for k in ("train_loss", "val_acc", "val_auc")
            if isinstance(record.get(k), (int, float))
        ]
        self.view.note(f"  {self.cell.label} round {record.get('round')}: {', '.join(parts)}")


class _Heartbeat:
    """Refresh a claimed cell's heartbeat every `every` seconds from a daemon thread, for as
    long as the `with` block runs (a round can take longer than the stale limit)."""

    def __init__(self, store: ResultsStore, key: str, owner: Owner, every: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(store, key, owner, every), daemon=True
        )

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self, store: ResultsStore, key: str, owner: Owner, every: float) -> None:
        while not self._stop.wait(every):
            # A busy database must not kill training; the next beat retries.
            with contextlib.suppress(Exception):
                store.heartbeat(key, owner)


def _finished_results(run_dir: Path) -> RunResults | None:
    """The run's results.json when it says the run finished (e.g. the process died after
    writing it but before the store heard of it), else None."""
    try:
        results = read_results(run_dir / "results.json")
    except MedbenchError:
        return None
    return results if results.status == "finished" else None


def _default_train_fn() -> TrainFn:
    """The engine's train, with the dataset loaded once for all the cells that use it in a
    row (the grid runs dataset by dataset)."""
    cache: dict[tuple, Any] = {}

    def train_cached(config: TrainConfig, **kwargs: Any) -> RunResults:
        key = (config.dataset, config.size, config.data_dir)
        if key not in cache:
            cache.clear()  # keep one dataset in memory at a time
            cache[key] = load_dataset(config.dataset, config.size, config.data_dir, progress=False)
        return engine.train(config, data=cache[key], **kwargs)

    return train_cached


def run_grid(
    cells: Sequence[Cell],
    out: str | Path,
    *,
    train_fn: TrainFn | None = None,
    total_time_budget_seconds: float | None = None,
    stale_seconds: float = DEFAULT_STALE_SECONDS,
    heartbeat_seconds: float = 30.0,
    poll_seconds: float = 2.0,
    wait_for_others: bool = True,
    retry_failed: bool = True,
    progress: bool | None = None,
) -> GridOutcome:
    """Run every cell of the grid that no one has finished, into `out`.

    Safe to run from several processes on the same `out`: each cell is claimed by one.
    With `wait_for_others`, a process with nothing left to claim waits while others still
    run cells (and takes over any whose owner died), so it ends when the whole grid has.
    A cell that raises is recorded as failed and the grid goes on; a MedbenchError (e.g.
    missing data) or Ctrl-C hands the cell back and stops. `total_time_budget_seconds`
    is split evenly over the cells not yet finished, at the moment each is claimed, after
    reserving for each of them the time a run spent outside training (loading, evaluation,
    speed measurement) so far, so that the last cells are not starved (see `cell_budget`).
    """
    out = Path(out)
    train_fn = train_fn or _default_train_fn()
    store = ResultsStore(out)
    if len({c.key for c in cells}) != len(cells):
        raise MedbenchError(
            "the grid lists the same cell twice; give each dataset, model and seed once"
        )
    store.add_cells((c.store_row() for c in cells), retry_failed=retry_failed)
    view = GridView(len(cells), enabled=True if progress is None else progress)
    grid = _GridRun(out, cells, store, train_fn, view, total_time_budget_seconds)
    grid.event(f"{len(cells)} runs in {out} (store {store.path.name})")
    try:
        while (row := grid.claim(stale_seconds, poll_seconds, wait_for_others)) is not None:
            grid.run_cell(grid.by_key[row["key"]], row, heartbeat_seconds)
    finally:
        grid.close()
    grid.outcome.failed = [r for r in store.rows(grid.keys) if r["status"] == "failed"]
    return grid.outcome


MIN_SHARE = 0.25  # a cell's budget never falls below this fraction of the even share


def cell_budget(
    seconds_left: float, cells_left: int, overheads: Sequence[float], even_share: float
) -> float:
    """Training budget for the next of `cells_left` cells when `seconds_left` remain.

    Each remaining cell will also spend time outside training (data loading, evaluation,
    speed measurement); the mean of what finished cells spent (`overheads`) is reserved
    for each before the rest is split evenly. The budget never falls below MIN_SHARE of
    the grid's `even_share`, so a grid that overruns finishes late rather than handing
    its last cells a budget of a second."""
    reserve = statistics.mean(overheads) if overheads else 0.0
    share = (seconds_left - reserve * cells_left) / cells_left
    return max(MIN_SHARE * even_share, share, 1.0)


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
        self.outcome = GridOutcome(out=out, cells=list(cells))
        self.total_seconds = total_time_budget_seconds
        self.deadline: float | None = None  # monotonic time by which the grid should end
        if total_time_budget_seconds:
            self.deadline = view.deadline = time.monotonic() + total_time_budget_seconds
        self.overheads: list[float] = []  # per cell trained here: wall time minus training

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
        """The cell's config, with its share of the grid's time budget when there is one."""
        config = TrainConfig.from_dict(dict(cell.config.to_dict()))
        if self.deadline is not None:
            config.time_budget_seconds = cell_budget(
                self.deadline - time.monotonic(),
                self.store.counts(self.keys)["pending"] + 1,
                self.overheads,
                self.total_seconds / len(self.keys),
            )
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
        started = time.monotonic()
        results = self.train(cell, config, heartbeat_seconds)
        if results is not None:
            self.record_trained(cell, results, started)

    def train(self, cell: Cell, config: TrainConfig, heartbeat_seconds: float) -> RunResults | None:
        """The cell's results; None when training raised a bug-like error (recorded as failed).
        A MedbenchError or Ctrl-C hands the cell back and propagates."""
        callback = GridCellCallback(cell, self.store, self.owner, self.view)
        try:
            with _Heartbeat(self.store, cell.key, self.owner, heartbeat_seconds):
                return self.train_fn(config, resume=True, callbacks=[callback], progress=False)
        except (MedbenchError, KeyboardInterrupt):
            self.store.release(cell.key, self.owner)
            raise
        except Exception as exc:
            self.record_failure(cell, exc)
            return None

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

    def record_trained(self, cell: Cell, results: RunResults, started: float) -> None:
        self.store.finish(cell.key, results, cell.run_dir / "results.json")
        self.outcome.trained.append(cell.key)
        wall = time.monotonic() - started
        self.view.cell_seconds.append(wall)
        self.overheads.append(max(0.0, wall - results.timing.train_seconds))
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


def run_benchmark(
    datasets: str | Sequence[str] | None = None,
    models: str | Sequence[str] | None = None,
    seeds: int | str | Sequence[int] = DEFAULT_SEEDS,
    *,
    size: int = 28,
    epochs: int | None = None,
    time_budget_seconds: float | None = None,
    total_time_budget_seconds: float | None = None,
    out: str | Path = DEFAULT_OUT,
    data_dir: str | Path | None = None,
    config: dict[str, Any] | str | Path | None = None,
    device: str | None = None,
    on_gpu: bool | None = None,
    train_fn: TrainFn | None = None,
    report: bool = True,
    progress: bool | None = None,
    stale_seconds: float = DEFAULT_STALE_SECONDS,
    ensemble: str | None = None,
) -> GridOutcome:
    """Plan and run the benchmark grid into `out`, then write its report there.

    Defaults reproduce the reference study (DermaMNIST and OCTMNIST x advanced_cnn,
    efficientnet, resnet18 at 28 px, 3 seeds). Run length: `epochs` or
    `time_budget_seconds` per run, or `total_time_budget_seconds` for the whole grid; with
    none of them (here or in `config`), a GPU trains the engine's default epochs and a CPU
    shares `DEFAULT_CPU_TOTAL_BUDGET_SECONDS` over the grid. `on_gpu` says which of the two
    this machine is; by default it is detected from the device (see `detect_gpu`).
    `config` is a dict or a JSON file of TrainConfig keys applied to every run; explicit
    arguments win over it. `ensemble` (a `medbench.ensemble` method: greedy, average,
    weighted) adds, per dataset, an ensemble of that dataset's finished runs, saved under
    `out/ensembles/` and shown in the report.
    """
    base = _grid_config(config, epochs, time_budget_seconds, data_dir, device)
    if base.get("time_budget_seconds") is not None and total_time_budget_seconds is not None:
        raise MedbenchError(
            "give either a per-run budget (--time-budget, or time_budget_seconds in --config) "
            "or --total-time-budget (whole grid), not both"
        )
    if total_time_budget_seconds is None:
        total_time_budget_seconds = _default_total_budget(base, on_gpu)
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
    outcome = run_grid(
        cells,
        out,
        train_fn=train_fn,
        total_time_budget_seconds=total_time_budget_seconds,
        progress=progress,
        stale_seconds=stale_seconds,
    )
    if ensemble is not None:
        outcome.ensembles = build_grid_ensembles(cells, out, ensemble, base.get("data_dir"))
    if report:
        outcome.report = build_report(out)
    return outcome


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


def _default_total_budget(base: dict[str, Any], on_gpu: bool | None) -> float | None:
    """The grid's budget when none was given: none when the runs have a length (epochs or a
    per-run budget) or train on a GPU; else the CPU default, with a warning that says so."""
    if any(base.get(k) is not None for k in ("epochs", "time_budget_seconds")):
        return None
    if detect_gpu(base.get("device", "auto")) if on_gpu is None else on_gpu:
        return None
    warnings.warn(
        f"no GPU: the grid shares a {format_seconds(DEFAULT_CPU_TOTAL_BUDGET_SECONDS)} time "
        "budget (set --epochs, --time-budget or --total-time-budget to choose)",
        MedbenchWarning,
        stacklevel=3,
    )
    return DEFAULT_CPU_TOTAL_BUDGET_SECONDS


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
