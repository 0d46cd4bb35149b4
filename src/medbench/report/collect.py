"""Read finished runs (from the results store, or from results.json files) and aggregate
them over seeds. Numbers come from each run's results.json; nothing is recomputed here
except means and standard deviations."""

from __future__ import annotations

import json
import math
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError, MedbenchWarning
from medbench.models.user import model_label
from medbench.runs.results import FLAT_FIELDS, RunResults, read_results
from medbench.runs.store import STORE_NAME, ResultsStore, has_store
from medbench.training.config import TrainConfig, config_hash

# The run's RunResults.flat_row field that kept its column name when schema 2 renamed epochs
# to rounds.
_FLAT_NAME = {"epochs_completed": "rounds_completed"}
_CSV_NAME = {flat: csv for csv, flat in _FLAT_NAME.items()}
_WHERE = ("run_dir", "results_path", "error")  # from the store row (or where results.json lies)
_WHICH = (*FLAT_FIELDS[:4], "config_hash", "status")  # dataset, size, model, seed, ...

# Columns of results.csv / results.json, in order: which run, its flat fields, where it is.
RUN_FIELDS = (
    *_WHICH,
    *(_CSV_NAME.get(f, f) for f in FLAT_FIELDS if f not in _WHICH),
    *_WHERE,
)
# Columns that say which run a row is; every other column comes from its RunResults.
_ROW_COLUMNS = (*_WHICH, *_WHERE)


@dataclass
class Run:
    """One run: its flat fields (RUN_FIELDS) and its full results (None unless finished)."""

    fields: dict[str, Any]
    results: RunResults | None = None
    cell: dict[str, Any] = field(default_factory=dict)  # the results store's row, if any

    def __getitem__(self, name: str) -> Any:
        return self.fields.get(name)

    @property
    def finished(self) -> bool:
        return self.fields.get("status") == "finished" and self.results is not None

    @property
    def run_dir(self) -> Path | None:
        return Path(self.fields["run_dir"]) if self.fields.get("run_dir") else None

    @property
    def config(self) -> dict[str, Any]:
        """The run's training config (from its results, else as the grid planned it)."""
        if self.results is not None:
            return self.results.config
        return dict(self.cell.get("config") or {})

    @property
    def reason(self) -> str:
        """Why a cell is not finished, in words a user can act on."""
        status = self.fields.get("status")
        if status == "failed":
            return str(self.fields.get("error") or "failed without an error message")
        if status == "running":
            host, pid = self.cell.get("claimed_host"), self.cell.get("claimed_pid")
            return f"running (claimed by {host} pid {pid}); the report was made before it finished"
        if status == "finished":
            return "finished, but its results.json is missing or unreadable; re-run the cell"
        return "not started yet; re-run the same 'medbench benchmark' command to train it"


@dataclass
class Stat:
    """Mean, sample standard deviation (None with one value) and count of a metric."""

    mean: float | None
    std: float | None
    n: int
    values: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: list[Any]) -> Stat:
        vals = [
            float(v) for v in values if isinstance(v, (int, float)) and not math.isnan(float(v))
        ]
        if not vals:
            return cls(None, None, 0, [])
        std = statistics.stdev(vals) if len(vals) > 1 else None
        return cls(statistics.fmean(vals), std, len(vals), vals)

    def required_mean(self) -> float:
        """The mean of a metric every finished run records (test accuracy); a TypeError,
        as arithmetic on the missing mean raises, when no run recorded a value."""
        if self.mean is None:
            raise TypeError("no run recorded a value of this metric, so it has no mean")
        return self.mean


@dataclass
class Group:
    """The runs of one (dataset, size, model, config) over seeds."""

    dataset: str
    size: int
    model: str
    config_hash: str
    runs: list[Run]
    label: str = ""  # model name, with the config hash when one model has several configs

    def stat(self, name: str) -> Stat:
        return Stat.of([r[name] for r in self.runs])

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def collapsed_runs(self) -> list[Run]:
        return [r for r in self.runs if r["collapsed"]]


def _flatten(row: dict[str, Any], results: RunResults | None) -> dict[str, Any]:
    """One run's flat fields: from its results when there are some, else the store row."""
    f: dict[str, Any] = {k: row.get(k) for k in RUN_FIELDS}
    f["flags"] = list(row.get("flags") or [])
    if results is not None:
        flat = results.flat_row()
        f.update({k: flat[_FLAT_NAME.get(k, k)] for k in RUN_FIELDS if k not in _ROW_COLUMNS})
    model = f.get("model")
    if isinstance(model, str):
        f["model"] = model_label(model)  # a file model as my_net:build, not its path
    return f


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_results(path: str | Path | None) -> RunResults | None:
    """A run's results, or None when the file is missing or is not a results file."""
    if not path:
        return None
    try:
        return read_results(path)
    except MedbenchError:
        return None


def load_ensembles(folder: str | Path) -> list[dict[str, Any]]:
    """Results of the ensembles saved under `folder/ensembles/` (`medbench benchmark
    --ensemble`), in the schema of `medbench.workflows.ensemble.build_ensemble`'s results."""
    found = []
    for path in sorted(Path(folder).glob("ensembles/*/ensemble.json")):
        data = _read_json(path)
        if data and isinstance(data.get("results"), dict):
            found.append(data["results"])
    return found


def load_runs(folder: str | Path, storage: str | None = None) -> list[Run]:
    """All runs of a benchmark folder (its results store: the folder's SQLite file, or the
    database `storage` names or the folder records), or, without a store, every
    `results.json` found under `folder` (e.g. runs of `medbench train`).

    A recorded database server that cannot be opened (no password in the environment,
    server down) is one warning, and the report falls back to the results.json files:
    cells that failed are then missing from it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MedbenchError(
            f"{folder} is not a folder; give the --out folder of 'medbench benchmark'"
        )
    if storage is not None or (folder / STORE_NAME).exists():
        return _runs_in_store(ResultsStore(folder, create=False, url=storage))
    if has_store(folder):  # a server the folder records, opened without a given URL
        try:
            return _runs_in_store(ResultsStore(folder, create=False))
        except MedbenchError as exc:
            warnings.warn(
                f"cannot read the results store of {folder} ({exc}); the report reads the "
                "runs' results.json files, so failed cells are missing: pass --storage URL",
                MedbenchWarning,
                stacklevel=2,
            )
    runs = _runs_in_files(folder)
    if not runs:
        raise MedbenchError(
            f"no results in {folder}: no {STORE_NAME} and no finished results.json; run 'medbench benchmark --out {folder}'"
        )
    return runs


def _runs_in_store(store: ResultsStore) -> list[Run]:
    runs = []
    for row in store.rows():
        finished = row["status"] == "finished"
        results = _read_results(row.get("results_path")) if finished else None
        runs.append(Run(_flatten(row, results), results, row))
    return runs


def _runs_in_files(folder: Path) -> list[Run]:
    runs = []
    for path in sorted(folder.rglob("results.json")):
        results = _read_results(path)
        if results is None or results.status != "finished":
            continue
        cfg = results.config
        row = {
            "dataset": cfg.get("dataset"),
            "size": cfg.get("size"),
            "model": cfg.get("model"),
            "seed": cfg.get("seed"),
            "config_hash": _hash(cfg),
            "status": "finished",
            "run_dir": str(path.parent),
            "results_path": str(path),
        }
        runs.append(Run(_flatten(row, results), results))
    return runs


def _hash(config: dict[str, Any]) -> str:
    try:
        return config_hash(TrainConfig.from_dict(config))
    except (MedbenchError, TypeError):
        return "unknown"


def group_runs(runs: list[Run]) -> list[Group]:
    """Finished runs grouped over seeds, ordered by dataset (first appearance) then model."""
    groups: dict[tuple, Group] = {}
    for run in (r for r in runs if r.finished):
        key = (run["dataset"], run["size"], run["model"], run["config_hash"])
        if key not in groups:
            groups[key] = Group(
                run["dataset"], int(run["size"] or 28), run["model"], run["config_hash"], []
            )
        groups[key].runs.append(run)
    for g in groups.values():
        g.runs.sort(key=lambda r: r["seed"] if r["seed"] is not None else 0)
    _label(list(groups.values()))
    dataset_order = list(dict.fromkeys(g.dataset for g in groups.values()))
    return sorted(groups.values(), key=lambda g: (dataset_order.index(g.dataset), g.size, g.label))


def _label(groups: list[Group]) -> None:
    """Label each group by its model, and by its config hash too when one model was trained
    with several configs on one dataset and size."""
    configs = Counter((g.dataset, g.size, g.model) for g in groups)
    for g in groups:
        many = configs[(g.dataset, g.size, g.model)] > 1
        g.label = f"{g.model} [{g.config_hash[:6]}]" if many else g.model
        g.label += pretrained_mark(g.runs[0].config if g.runs else {})


def pretrained_mark(config: dict[str, Any]) -> str:
    """' (pretrained: SOURCE[, linear probe])' for a run that started from pretrained
    weights (timm's hub, a weights file or a medbench run, named by its file or folder),
    else ''; the report's rows say so wherever the model's label appears."""
    source = config.get("pretrained")
    if not source:
        return ""
    name = "timm hub" if source == "hub" else Path(str(source)).name or str(source)
    probe = ", linear probe" if config.get("finetune") == "linear-probe" else ""
    return f" (pretrained: {name}{probe})"
