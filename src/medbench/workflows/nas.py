"""Architecture search: a multi-objective Optuna study over a model family's options.

Two objectives: the validation metric (maximised) and the cost, parameters or FLOPs
(minimised). NSGA-II (Deb et al. 2002) samples architectures from the family's space in
`SPACES`; every trial trains with the same recipe (the base TrainConfig, e.g. a tuned
`best_config.json`). The Pareto front goes to `pareto.json`, `pareto.csv` and
`pareto.png`; `export_architecture` saves any trial as a `--config` file
(`{"model": family, "model_options": {...}}`).

A user's model (`file.py:fn`, `module:fn`, a plugin) brings its own space: a callable
attribute `search_space` on the builder, taking an `optuna.Trial` and returning the
builder's keyword options to try (docs/own-model.md).

The study shares tuning's plumbing (`medbench.workflows.studies`): SQLite (or any SQLAlchemy
URL) storage, resumable, many workers per study, per-trial seeding, dead trials retried. The
Pareto-front figure is `medbench.workflows.study_plots.plot_front`.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from medbench.data import DatasetInfo
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.models import build_model, count_flops, count_parameters, model_spatial_dims
from medbench.models import user as user_models
from medbench.training.config import TrainConfig
from medbench.training.tracking import Tracking
from medbench.utils.fsutil import atomic_write_json, atomic_write_text
from medbench.workflows.studies import (
    PerTrialSeededSampler,
    StudySetup,
    check_sqlite_file,
    check_study_arguments,
    check_study_place,
    count_trials,
    record_trial_result,
    sqlite_file,
    work_study,
)
from medbench.workflows.study_plots import plot_front
from medbench.workflows.study_storage import make_storage

COSTS = ("params", "flops")


def _advanced_cnn_space(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "width": trial.suggest_categorical("width", [0.25, 0.375, 0.5, 0.75, 1.0, 1.25]),
        "depths": [trial.suggest_int(f"depth_{i + 1}", 1, 3) for i in range(4)],
        "attention": trial.suggest_categorical("attention", [True, False]),
    }


def _efficientnet_space(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "width": trial.suggest_categorical("width", [0.25, 0.5, 0.75, 1.0]),
        "depth": trial.suggest_categorical("depth", [0.5, 0.75, 1.0, 1.25]),
        "se_ratio": trial.suggest_categorical("se_ratio", [0.0, 0.125, 0.25]),
        "expand_ratio": trial.suggest_categorical("expand_ratio", [3, 4, 6]),
        "kernel_sizes": [trial.suggest_categorical(f"kernel_{i + 1}", [3, 5]) for i in range(7)],
    }


# family -> function sampling its documented options (medbench.models.model_options).
SPACES: dict[str, Callable[[optuna.Trial], dict[str, Any]]] = {
    "advanced_cnn": _advanced_cnn_space,
    "efficientnet": _efficientnet_space,
}


@dataclass
class SearchResult:
    study_name: str
    n_finished: int
    front: list[dict[str, Any]]
    files: list[Path]


def search_space(family: str) -> Callable[[optuna.Trial], dict[str, Any]]:
    """The function sampling `family`'s architecture options: medbench's own for its
    families, the builder's `search_space` attribute for a user's model."""
    if family in SPACES:
        return SPACES[family]
    if user_models.is_user_model(family):
        model = user_models.resolve(family)
        space = getattr(model.builder, "search_space", None)
        if not callable(space):
            raise MedbenchError(
                f"model {model.label} has no architecture space: give its builder a "
                "`search_space(trial)` attribute returning the options to try (docs/own-model.md)"
            )
        return _checked_space(model, space)
    raise MedbenchError(
        f"no architecture space for model {family!r}; searchable families: {', '.join(SPACES)}, "
        "or a user's model whose builder has a `search_space` attribute"
    )


def _checked_space(
    model: user_models.UserModel, space: Callable[[optuna.Trial], Any]
) -> Callable[[optuna.Trial], dict[str, Any]]:
    def sample(trial: optuna.Trial) -> dict[str, Any]:
        options = space(trial)
        if not isinstance(options, dict):
            raise MedbenchError(
                f"model {model.label}: search_space(trial) must return a dict of options, "
                f"not {type(options).__name__}"
            )
        user_models.check_options(model.label, options, model.options())
        return options

    return sample


def search(
    base: TrainConfig,
    out_dir: str | Path,
    n_trials: int,
    *,
    cost: str = "params",
    metric: str = "auc",
    storage: str | None = None,
    study_name: str | None = None,
    population_size: int = 20,
    heartbeat_seconds: int = 60,
    timeout_seconds: float | None = None,
    data: Any = None,
    progress: bool = True,
    tracking: Tracking | None = None,
) -> SearchResult:
    """Search `base.model`'s architecture space until the study has `n_trials` finished
    trials, training each with `base`'s recipe; write the Pareto front to `out_dir`."""
    space = search_space(base.model)
    if cost not in COSTS:
        raise MedbenchError(f"--cost must be one of {', '.join(COSTS)}, not {cost!r}")
    check_study_arguments(base, n_trials, metric)
    check_study_place("search", out_dir, storage, heartbeat_seconds)
    if population_size < 2:
        raise MedbenchError(f"--population must be at least 2, not {population_size}")
    setup = StudySetup.prepare(
        "search",
        base,
        out_dir,
        storage=storage,
        study_name=study_name,
        data=data,
        progress=progress,
        tracking=tracking,
    )
    sampler = PerTrialSeededSampler(
        lambda s: optuna.samplers.NSGAIISampler(seed=s, population_size=population_size),
        base.seed,
    )
    study = setup.open(
        sampler,
        heartbeat_seconds=heartbeat_seconds,
        directions=["maximize", "minimize"],
        attrs={"metric": metric, "cost": cost},
    )

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        options = {**base.model_options, **space(trial)}
        n_params, flops = record_architecture(trial, base, setup.data.info, options)
        results = setup.train_trial(trial, {"model_options": options})
        value = record_trial_result(trial, results, metric)
        setup.say(
            f"trial {trial.number}: val {metric} {value:.4f}, {n_params / 1e6:.3f}M params, "
            f"{flops / 1e9:.4f} GFLOPs, {options}"
        )
        return value, float(n_params if cost == "params" else flops)

    work_study(study, objective, n_trials, timeout_seconds=timeout_seconds, log=setup.say)
    front, files = write_front(study, setup.out_dir)
    return SearchResult(study.study_name, count_trials(study, (TrialState.COMPLETE,)), front, files)


def record_architecture(
    trial: optuna.Trial, base: TrainConfig, info: DatasetInfo, options: dict[str, Any]
) -> tuple[int, int]:
    """Store a trial's architecture and its size on it; return (parameters, FLOPs)."""
    model = build_model(base.model, info.n_channels, info.n_classes, base.size, **options)
    n_params = count_parameters(model)
    spatial = (base.size,) * model_spatial_dims(base.model)
    flops = count_flops(model, (info.n_channels, *spatial))
    trial.set_user_attr("model_options", options)
    trial.set_user_attr("n_params", n_params)
    trial.set_user_attr("flops", flops)
    return n_params, flops


def _row(trial: optuna.trial.FrozenTrial, metric: str) -> dict[str, Any]:
    return {
        "trial": trial.number,
        f"val_{metric}": trial.values[0],
        "n_params": trial.user_attrs.get("n_params"),
        "flops": trial.user_attrs.get("flops"),
        "test_acc": trial.user_attrs.get("test_acc"),
        "test_auc": trial.user_attrs.get("test_auc"),
        "model_options": trial.user_attrs.get("model_options"),
    }


def write_front(study: optuna.Study, out_dir: Path) -> tuple[list[dict[str, Any]], list[Path]]:
    """pareto.json, pareto.csv and pareto.png of a search study in `out_dir`."""
    metric = study.user_attrs.get("metric", "auc")
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise MedbenchError(
            f"study {study.study_name} has no completed trial yet; run more --trials"
        )
    front = sorted((_row(t, metric) for t in study.best_trials), key=lambda r: r["n_params"])
    json_path = atomic_write_json(
        out_dir / "pareto.json",
        {
            "study": study.study_name,
            "model": study.user_attrs.get("model"),
            "dataset": study.user_attrs.get("dataset"),
            "objectives": [f"val_{metric} (max)", f"{study.user_attrs.get('cost')} (min)"],
            "front": front,
            "all_trials": [_row(t, metric) for t in done],
        },
    )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(front[0]))
    writer.writeheader()
    for row in front:
        writer.writerow({**row, "model_options": _json(row["model_options"])})
    csv_path = atomic_write_text(out_dir / "pareto.csv", buf.getvalue())
    return front, [json_path, csv_path, plot_front(study, out_dir / "pareto.png")]


def export_architecture(
    storage: str, study_name: str | None, trial_number: int, path: str | Path
) -> dict[str, Any]:
    """Save trial `trial_number`'s architecture as a `--config` JSON file
    (`{"model": family, "model_options": {...}}`); warn when it is not on the front.
    `study_name` None: the one study in `storage`."""
    study = _load_search_study(storage, study_name)
    trials = study.get_trials(deepcopy=False)
    if not 0 <= trial_number < len(trials) or trials[trial_number].state != TrialState.COMPLETE:
        done = [t.number for t in study.best_trials]
        raise MedbenchError(
            f"trial {trial_number} is not a completed trial of {study.study_name}; "
            f"the Pareto front is trials {done}"
        )
    trial = trials[trial_number]
    if trial_number not in {t.number for t in study.best_trials}:
        warnings.warn(
            f"trial {trial_number} is not on the Pareto front", MedbenchWarning, stacklevel=2
        )
    arch = {"model": study.user_attrs["model"], "model_options": trial.user_attrs["model_options"]}
    atomic_write_json(path, arch)
    return arch


def _load_search_study(url: str, study_name: str | None) -> optuna.Study:
    path = sqlite_file(url)
    if path is not None and not path.is_file():  # opening it would create an empty study
        raise MedbenchError(
            f"no search study in {path.parent} (no {path.name}); check --out, or --storage "
            "and --study"
        )
    check_sqlite_file(url)
    storage = make_storage(url)
    if study_name is None:
        names = optuna.get_all_study_names(storage)
        if len(names) != 1:
            raise MedbenchError(f"{url} holds studies {names}; pick one with --study")
        study_name = names[0]
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise MedbenchError(
            f"no study {study_name!r} in {url}; check --out/--storage and --study"
        ) from None


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
