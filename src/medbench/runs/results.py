"""A run's results as types: one dataclass per record, one serialiser, one flat row.

`results.json` in a run folder is `RunResults.to_json()`; every reader (the results store,
the report, tuning, the CLI, model cards, ensembles) goes through `RunResults.from_json` or
`read_results`, so the file's shape is defined here alone. Files written before schema 2
(rounds were called "epochs": `epochs_completed`, `best_epoch`, records keyed "epoch") still
load.

Names: a *round* ends with a validation pass and a checkpoint. It is one epoch, except
under a short time budget, where the budget is cut into a few equal rounds; so training
length is counted in optimiser steps (`steps`), in epochs as a fraction
(`epochs_trained = steps / steps_per_epoch`) and in rounds.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medbench.errors import MedbenchError

SCHEMA_VERSION = 2

# Columns of the flat row (results.csv, the results store, tune summaries), in order.
FLAT_FIELDS = (
    "dataset",
    "size",
    "model",
    "seed",
    "status",
    "test_acc",
    "test_auc",
    "val_acc",
    "val_auc",
    "test_balanced_acc",
    "test_macro_f1",
    "test_ece",
    "n_params",
    "gflops",
    "efficiency",
    "train_seconds",
    "steps",
    "epochs_trained",
    "rounds_completed",
    "collapsed",
    "flags",
    "data_official",
    "data_md5_matches",
    "license",
)


@dataclass
class RoundRecord:
    """One round of training as the history records it."""

    round: int  # 1-based
    step: int  # optimiser steps done at the end of the round
    train_loss: float
    val_loss: float
    val_acc: float
    val_auc: float
    lr: float
    seconds: float  # training wall time of the round
    train_images_per_second: float
    epochs: float | None = None  # step / steps_per_epoch (None in files before schema 2)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RoundRecord:
        d = dict(d)
        if "round" not in d and "epoch" in d:  # schema 1
            d["round"] = d.pop("epoch")
        values: dict[str, Any] = {f.name: d.get(f.name) for f in dataclasses.fields(cls)}
        return cls(**values)


@dataclass
class ModelInfo:
    name: str
    n_params: int
    flops: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def params_m(self) -> float:
        return self.n_params / 1e6

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_params": self.n_params,
            "params_m": self.params_m,
            "flops": self.flops,
            "gflops": self.gflops,
            "options": self.options,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelInfo:
        return cls(d["name"], int(d["n_params"]), int(d.get("flops") or 0), d.get("options") or {})


@dataclass
class Timing:
    train_seconds: float
    eval_seconds: float | None = None
    latency_ms_per_image: float | None = None
    throughput_images_per_second: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Timing:
        values: dict[str, Any] = {f.name: d.get(f.name) for f in dataclasses.fields(cls)}
        return cls(**values)


@dataclass
class RunResults:
    """Everything a finished run reports. `metrics` holds `val` and `test` (the dicts of
    `medbench.scoring.metrics.evaluate`: plain floats for `acc` and `auc`), `temperature` and the
    calibrated ECEs."""

    run_dir: str
    config: dict[str, Any]
    dataset: dict[str, Any]  # the data's provenance (medbench.data.MedMNISTData.provenance)
    model: ModelInfo
    metrics: dict[str, Any]
    timing: Timing
    steps: int
    steps_per_epoch: int
    rounds_planned: int
    rounds_completed: int
    best_round: int
    stopped_early: bool = False
    over_budget: bool = False
    selection_val_images: int = 0
    history: list[RoundRecord] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    efficiency: float | None = None  # test accuracy (%) per million parameters
    environment: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    distributed: dict[str, Any] | None = None
    batch_size: int | None = None  # images per optimiser step (the global batch)
    pretrained_weights: dict[str, str] | None = None  # {"source", "sha256"} of --pretrained
    status: str = "finished"
    schema_version: int = SCHEMA_VERSION

    @property
    def collapsed(self) -> bool:
        return bool(self.flags)

    @property
    def epochs_trained(self) -> float:
        return self.steps / max(1, self.steps_per_epoch)

    @property
    def images_seen(self) -> int | None:
        return None if self.batch_size is None else self.steps * self.batch_size

    @property
    def budget_seconds(self) -> float | None:
        return self.config.get("time_budget_seconds")

    @property
    def over_budget_seconds(self) -> float | None:
        """How far training ran past its time budget (0 inside it; None without one)."""
        if self.budget_seconds is None:
            return None
        return max(0.0, self.timing.train_seconds - self.budget_seconds)

    @property
    def test(self) -> dict[str, Any]:
        return self.metrics.get("test") or {}

    @property
    def val(self) -> dict[str, Any]:
        return self.metrics.get("val") or {}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "status": self.status,
            "run_dir": self.run_dir,
            "config": self.config,
            "dataset": self.dataset,
            "model": self.model.to_json(),
            # What the run really trained (never the planned length):
            "steps_trained": self.steps,
            "epochs_trained": self.epochs_trained,
            "images_seen": self.images_seen,
            "train_seconds": self.timing.train_seconds,
            "budget_seconds": self.budget_seconds,
            "over_budget_seconds": self.over_budget_seconds,
            "steps_per_epoch": self.steps_per_epoch,
            "batch_size": self.batch_size,
            "rounds_planned": self.rounds_planned,
            "rounds_completed": self.rounds_completed,
            "best_round": self.best_round,
            "stopped_early": self.stopped_early,
            "over_budget": self.over_budget,
            "selection_val_images": self.selection_val_images,
            "history": [r.to_json() for r in self.history],
            "metrics": self.metrics,
            "flags": list(self.flags),
            "collapsed": self.collapsed,
            "timing": self.timing.to_json(),
            "efficiency": self.efficiency,
            "environment": self.environment,
            "files": self.files,
        }
        if self.distributed:
            out["distributed"] = self.distributed
        if self.pretrained_weights:
            out["pretrained_weights"] = self.pretrained_weights
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str | Path = "results") -> RunResults:
        """Read a results dict of any schema; a wrong shape is one MedbenchError."""
        try:
            _check_shape(d)
            return cls._from_json(d)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MedbenchError(
                f"{source} is not a medbench results file ({type(exc).__name__}: {exc}); "
                "re-run the run or remove the file"
            ) from None

    @classmethod
    def _from_json(cls, d: dict[str, Any]) -> RunResults:
        old = int(d.get("schema_version") or 1) < 2

        def renamed(new: str, was: str) -> int:  # a field schema 1 called by its old name
            return int(d[was] if old else d[new])

        return cls(
            run_dir=str(d.get("run_dir") or ""),
            config=dict(d["config"]),
            dataset=dict(d.get("dataset") or {}),
            model=ModelInfo.from_json(d["model"]),
            metrics=dict(d["metrics"]),
            timing=Timing.from_json(d.get("timing") or {}),
            steps=int(d.get("steps_trained", d.get("steps")) or 0),
            steps_per_epoch=int(d.get("steps_per_epoch") or 1),
            rounds_planned=renamed("rounds_planned", "epochs_planned"),
            rounds_completed=renamed("rounds_completed", "epochs_completed"),
            best_round=renamed("best_round", "best_epoch"),
            stopped_early=bool(d.get("stopped_early")),
            over_budget=bool(d.get("over_budget")),
            selection_val_images=int(d.get("selection_val_images") or 0),
            history=[RoundRecord.from_json(r) for r in d.get("history") or []],
            flags=list(d.get("flags") or []),
            efficiency=d.get("efficiency"),
            environment=dict(d.get("environment") or {}),
            files=dict(d.get("files") or {}),
            distributed=d.get("distributed"),
            batch_size=d.get("batch_size"),
            pretrained_weights=d.get("pretrained_weights"),
            status=str(d.get("status") or "finished"),
        )

    def flat_row(self) -> dict[str, Any]:
        """One flat record of the fields tables are made of (see FLAT_FIELDS)."""
        test, val = self.test, self.val
        return {
            "dataset": self.config.get("dataset"),
            "size": self.config.get("size"),
            "model": self.model.name,
            "seed": self.config.get("seed"),
            "status": self.status,
            "test_acc": test.get("acc"),
            "test_auc": test.get("auc"),
            "val_acc": val.get("acc"),
            "val_auc": val.get("auc"),
            "test_balanced_acc": test.get("balanced_acc"),
            "test_macro_f1": test.get("macro_f1"),
            "test_ece": test.get("ece"),
            "n_params": self.model.n_params,
            "gflops": self.model.gflops,
            "efficiency": self.efficiency,
            "train_seconds": self.timing.train_seconds,
            "steps": self.steps,
            "epochs_trained": self.epochs_trained,
            "rounds_completed": self.rounds_completed,
            "collapsed": self.collapsed,
            "flags": list(self.flags),
            "data_official": self.dataset.get("official"),
            "data_md5_matches": self.dataset.get("md5_matches"),
            "license": self.dataset.get("license"),
        }


# The entries every reader indexes into, and the JSON type each must have.
_SHAPE: tuple[tuple[str, type], ...] = (
    ("config", dict),
    ("dataset", dict),
    ("model", dict),
    ("metrics", dict),
    ("timing", dict),
    ("history", list),
    ("flags", list),
    ("environment", dict),
    ("files", dict),
)
_JSON_TYPE_NAMES: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}


def _check_shape(d: Any) -> None:
    """A TypeError naming the first entry of a results dict with the wrong JSON type (a
    split's metrics that are not an object, flags that are not a list of strings...)."""

    def expect(where: str, value: Any, kind: type) -> None:
        if not isinstance(value, kind):
            raise TypeError(f"{where} must be {_JSON_TYPE_NAMES[kind]}, not {repr(value)[:40]}")

    expect("the file", d, dict)
    for key, kind in _SHAPE:
        if d.get(key) is not None:
            expect(f"'{key}'", d[key], kind)
    expect("'model'", d.get("model", {}), dict)
    expect("'model.name'", d.get("model", {}).get("name", ""), str)
    if d["model"].get("options") is not None:
        expect("'model.options'", d["model"]["options"], dict)
    for split in ("val", "test"):
        if d.get("metrics", {}).get(split) is not None:
            expect(f"'metrics.{split}'", d["metrics"][split], dict)
    for i, record in enumerate(d.get("history") or []):
        expect(f"'history[{i}]'", record, dict)
    for flag in d.get("flags") or []:
        expect("each of 'flags'", flag, str)


def read_results(path: str | Path) -> RunResults:
    """Read a run's results.json (a run folder or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MedbenchError(f"{path} does not exist; is this a finished medbench run?") from None
    except PermissionError:
        raise MedbenchError(f"{path} cannot be read (permission denied)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedbenchError(f"{path} is not valid JSON ({exc}); re-run the run") from None
    if not isinstance(data, dict):
        raise MedbenchError(f"{path} is not a medbench results file (not a JSON object)")
    return RunResults.from_json(data, path)


def recorded_data_dir(model_path: str | os.PathLike[str]) -> str | None:
    """The data folder the run holding `model_path` (its folder, or a model file in it) was
    trained from, as its results.json records it, if that folder still exists; else None
    (no results beside the model, unreadable ones, or a folder since moved)."""
    path = Path(model_path)
    try:
        recorded = read_results(path if path.is_dir() else path.parent).config.get("data_dir")
    except MedbenchError:
        return None
    return recorded if recorded and Path(recorded).is_dir() else None


def find_run_folders(paths: Sequence[str | Path]) -> list[tuple[Path, bool]]:
    """(folder, given) for every run folder among `paths`: a folder holding results.json
    is a run given by name; any other folder is searched for them, as is a benchmark's
    output (it holds runs/, and its report's results.json is no run's)."""
    found: list[tuple[Path, bool]] = []
    for p in map(Path, paths):
        if (p / "results.json").is_file() and not (p / "runs").is_dir():
            found.append((p, True))
        elif p.is_dir():
            found.extend(
                (f.parent, False) for f in sorted(p.rglob("results.json")) if f.parent != p
            )
        else:
            raise MedbenchError(
                f"{p} is not a run folder (no results.json) nor a folder of runs; give run or "
                "benchmark folders"
            )
    return list(dict.fromkeys(found))


def read_predictions(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Every array of a run's predictions.npz (no pickled objects); one line if unreadable."""
    path = Path(run_dir) / "predictions.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise MedbenchError(f"cannot read {path}: {str(exc)[:160]}") from None
