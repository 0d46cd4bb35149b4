"""Planning a benchmark grid: what is decided before anything trains.

    from medbench.workflows.grid_plan import plan_grid, plan_cells
    cells = plan_grid(["breastmnist"], ["advanced_cnn"], [0, 1], out="medbench-results")

It holds the grid's cells (`Cell`, `plan_grid`: dataset x model x seed, each dataset with
the models of its kind, `pair_models`), the seeds the grid is given
(`parse_seeds`), the run length that is part of the grid's identity (`grid_length`), each
run's share of a total budget and the training budget it buys (`run_share`,
`training_budget`, `cell_budget`, `training_budget_after`), and the plan printed before the
work (`CellSpeed`, `CellPlan`, `GridPlan`, `plan_cells`: each run's speed, epochs and ETA,
with advice when a share buys less than one epoch). The runner is
`medbench.workflows.benchmark`; nothing here trains or writes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbench.data import dataset_info
from medbench.errors import MedbenchError
from medbench.models import model_label, model_spatial_dims
from medbench.runs.store import describe_length, round_up_duration
from medbench.training.config import TrainConfig, config_hash, format_seconds
from medbench.training.recipe import DEFAULT_EPOCHS

# Of each run's share of a total budget, this part is kept for what the run spends outside
# training (loading its data, the final evaluation, the speed measurement).
OVERHEAD_SHARE = 0.1


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
