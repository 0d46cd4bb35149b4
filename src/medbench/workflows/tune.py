"""Hyperparameter tuning: an Optuna study of training recipes for one model on one dataset.

Holds the tuning search space (`suggest_recipe`, `recipe_from_params`), the pruning hook and
`tune` with the files it writes (best_config.json, tune_summary.json). Each trial trains one
run with `medbench.training.engine.train` (data loaded once per process) and scores it by its
best validation metric. TPE samples the recipe; a median or Hyperband pruner stops poor
trials from the per-round validation metric (`PruningCallback` -> `trial.report`).

The study plumbing (storage, workers, per-trial seeding, dead trials retried) is
`medbench.workflows.studies`, shared with `medbench.workflows.nas`; the figures are
`medbench.workflows.study_plots`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from medbench.data.augment import POLICIES
from medbench.errors import MedbenchError
from medbench.models import model_options, model_spatial_dims
from medbench.training.callbacks import Callback, RoundEnd
from medbench.training.config import TrainConfig
from medbench.training.tracking import Tracking
from medbench.utils.fsutil import atomic_write_json
from medbench.workflows.studies import (
    FINISHED,
    PerTrialSeededSampler,
    StudySetup,
    check_study_arguments,
    check_study_place,
    count_trials,
    format_params,
    record_trial_result,
    work_study,
)
from medbench.workflows.study_plots import plot_history, plot_importance

PRUNERS = ("median", "hyperband", "none")
# The recipe keys a study searches; values given by the user are held fixed instead.
TUNABLE = (
    "lr",
    "weight_decay",
    "batch_size",
    "label_smoothing",
    "augment",
    "mixup",
    "cutmix",
    "dropout",
    "drop_path",
    "epochs",
)


@dataclass
class TuneResult:
    study_name: str
    storage: str
    n_finished: int
    best_trial: int
    best_value: float
    best_config: dict[str, Any]
    best_config_path: Path
    plots: list[Path]
    notes: list[str] = field(default_factory=list)  # caveats, e.g. every trial collapsed


# ----------------------------------------------------------------------------- pruning


def make_pruner(
    name: str | optuna.pruners.BasePruner, max_epochs: int
) -> optuna.pruners.BasePruner:
    if isinstance(name, optuna.pruners.BasePruner):
        return name
    if name == "median":  # prune below the median of earlier trials at the same epoch
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(1, max_epochs), reduction_factor=3
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise MedbenchError(f"unknown pruner {name!r}; use one of {', '.join(PRUNERS)}")


class PruningCallback(Callback):
    """Report each round's validation metric to the trial and prune when Optuna says so."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_round_end(self, event: RoundEnd) -> None:
        record = event.record
        value = record[f"val_{self.metric}"]
        if not math.isfinite(value):  # AUC undefined (one class in val)
            value = record["val_acc"]
        self.trial.report(value, record["round"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"round {record['round']}: val {self.metric} {value:.4f}")


# ----------------------------------------------------------------------------- the recipe

# How a trial samples each recipe value that needs no other (in this order: the sampler's
# random stream depends on it).
_SIMPLE_SPACE: dict[str, Callable[[optuna.Trial], Any]] = {
    "lr": lambda trial: trial.suggest_float("lr", 1e-4, 1e-2, log=True),
    "weight_decay": lambda trial: trial.suggest_float("weight_decay", 1e-5, 0.3, log=True),
    "batch_size": lambda trial: trial.suggest_categorical("batch_size", [32, 64, 128, 256]),
    "label_smoothing": lambda trial: trial.suggest_float("label_smoothing", 0.0, 0.2),
    "augment": lambda trial: trial.suggest_categorical(
        "augment", [p for p in POLICIES if p not in ("auto", "intensity")]
    ),
}
# Volumes take only these (`medbench.data.augment.VOLUME_POLICIES` less `auto` and the official
# 3D recipe's `intensity`).
_VOLUME_AUGMENT = ("none", "basic")
# Regularisers a model may not take: sampled only where its options include them.
_MODEL_REGULARISERS = {"dropout": 0.5, "drop_path": 0.3}  # name -> largest value tried


def suggest_recipe(
    trial: optuna.Trial,
    fixed: dict[str, Any],
    *,
    min_epochs: int,
    max_epochs: int,
    model_options: dict[str, Any] | None,
    spatial_dims: int = 2,
) -> dict[str, Any]:
    """Sample the TrainConfig values of a recipe; keys in `fixed` are not sampled.
    `model_options` (None for timm models) says whether dropout/drop_path apply;
    `spatial_dims` 3 (a model of volumes) samples only the augmentations volumes take."""
    space = dict(_SIMPLE_SPACE)
    if spatial_dims == 3:
        space["augment"] = lambda t: t.suggest_categorical("augment", list(_VOLUME_AUGMENT))
    values = {key: suggest(trial) for key, suggest in space.items() if key not in fixed}
    if "mixup" not in fixed and "cutmix" not in fixed:
        values.update(_suggest_mix(trial))
    for key, high in _MODEL_REGULARISERS.items():
        if key not in fixed and (model_options is None or key in model_options):
            values[key] = trial.suggest_float(key, 0.0, high)
    if "epochs" not in fixed:
        values["epochs"] = (
            trial.suggest_int("epochs", min_epochs, max_epochs)
            if min_epochs < max_epochs
            else max_epochs
        )
    return values


def _suggest_mix(trial: optuna.Trial) -> dict[str, float]:
    """One of no mixing, MixUp or CutMix, and its strength."""
    mix = trial.suggest_categorical("mix", ["none", "mixup", "cutmix"])
    values = {"mixup": 0.0, "cutmix": 0.0}
    if mix != "none":
        values[mix] = trial.suggest_float(f"{mix}_alpha", 0.1, 1.0)
    return values


def recipe_from_params(
    params: dict[str, Any], fixed: dict[str, Any], max_epochs: int
) -> dict[str, Any]:
    """The TrainConfig values a finished trial's parameters stand for (its recipe)."""
    values = {k: v for k, v in params.items() if k in TUNABLE}
    if "mix" in params:
        values["mixup"] = params.get("mixup_alpha", 0.0)
        values["cutmix"] = params.get("cutmix_alpha", 0.0)
    values.setdefault("epochs", max_epochs)
    return {**values, **fixed}


# ----------------------------------------------------------------------------- tune


def check_epoch_range(min_epochs: int | None, max_epochs: int) -> int:
    """The shortest trial's epochs (default a quarter of the longest); refuses a bad range."""
    if max_epochs < 1:
        raise MedbenchError(f"--max-epochs must be at least 1, not {max_epochs}")
    min_epochs = min_epochs or max(1, max_epochs // 4)
    if not 1 <= min_epochs <= max_epochs:
        raise MedbenchError(f"--min-epochs must be between 1 and --max-epochs ({max_epochs})")
    return min_epochs


def tune(
    base: TrainConfig,
    out_dir: str | Path,
    n_trials: int,
    *,
    fixed: dict[str, Any] | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    pruner: str | optuna.pruners.BasePruner = "median",
    metric: str = "auc",
    min_epochs: int | None = None,
    max_epochs: int = 20,
    heartbeat_seconds: int = 60,
    timeout_seconds: float | None = None,
    data: Any = None,
    progress: bool = True,
    tracking: Tracking | None = None,
) -> TuneResult:
    """Tune the recipe of `base` (its dataset, model, size, seed, model options) until the
    study has `n_trials` finished trials; write `best_config.json` and plots to `out_dir`.

    `fixed` holds TrainConfig values not to search (e.g. those the user gave). Trials train
    into `out_dir/trials/trial-NNNN`. Pass `data` to reuse a loaded dataset."""
    check_study_arguments(base, n_trials, metric)
    check_study_place("tune", out_dir, storage, heartbeat_seconds)
    min_epochs = check_epoch_range(min_epochs, max_epochs)
    fixed = {k: v for k, v in (fixed or {}).items() if k in TUNABLE}
    options = None if base.model.startswith("timm:") else model_options(base.model)
    setup = StudySetup.prepare(
        "tune",
        base,
        out_dir,
        storage=storage,
        study_name=study_name,
        data=data,
        progress=progress,
        tracking=tracking,
    )
    sampler = PerTrialSeededSampler(
        lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=5), base.seed
    )
    study = setup.open(
        sampler,
        heartbeat_seconds=heartbeat_seconds,
        pruner=make_pruner(pruner, max_epochs),
        attrs={"metric": metric, "max_epochs": max_epochs, "fixed": fixed},
    )

    def objective(trial: optuna.Trial) -> float:
        recipe = suggest_recipe(
            trial,
            fixed,
            min_epochs=min_epochs,
            max_epochs=max_epochs,
            model_options=options,
            spatial_dims=model_spatial_dims(base.model),
        )
        results = setup.train_trial(
            trial, {**fixed, **recipe}, callbacks=[PruningCallback(trial, metric)]
        )
        value = record_trial_result(trial, results, metric)
        setup.say(
            f"trial {trial.number}: val {metric} {value:.4f} with {format_params(trial.params)}"
        )
        return value

    work_study(study, objective, n_trials, timeout_seconds=timeout_seconds, log=setup.say)
    return write_tune_outputs(
        study, base, setup.out_dir, storage=setup.storage, fixed=fixed, max_epochs=max_epochs
    )


def write_tune_outputs(
    study: optuna.Study,
    base: TrainConfig,
    out_dir: str | Path,
    *,
    storage: str,
    fixed: dict[str, Any],
    max_epochs: int,
) -> TuneResult:
    """best_config.json, tune_summary.json, history.png and importance.png in `out_dir`."""
    out_dir = Path(out_dir)
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise MedbenchError(
            f"study {study.study_name} has no completed trial yet (all pruned or failed); "
            "run more --trials or use --pruner none"
        )
    best, notes = pick_best_trial(completed)
    best_config = trial_config(base, recipe_from_params(best.params, fixed, max_epochs))
    path = atomic_write_json(
        out_dir / "best_config.json",
        {
            "config": best_config,  # what `--config` reads (medbench.training.config.load_config_file)
            "trial": best.number,
            "value": best.value,
            "metric": study.user_attrs.get("metric"),
            "notes": notes,
        },
    )
    summary = _summary(study, base, best, best_config)
    atomic_write_json(out_dir / "tune_summary.json", {**summary, "notes": notes})
    plots = [plot_history(study, out_dir / "history.png")]
    importance = plot_importance(study, out_dir / "importance.png")
    if importance is not None:
        plots.append(importance)
    return TuneResult(
        study_name=study.study_name,
        storage=storage,
        n_finished=count_trials(study, FINISHED),
        best_trial=best.number,
        best_value=float(completed_value(best)),
        best_config=best_config,
        best_config_path=path,
        plots=plots,
        notes=notes,
    )


def completed_value(trial: FrozenTrial) -> float:
    """The objective value of a completed trial of a single-objective study (optuna records
    one for each); a TypeError, as comparing a missing value raises, for a trial without."""
    if trial.value is None:
        raise TypeError(f"trial {trial.number} has no objective value")
    return trial.value


def pick_best_trial(completed: list[FrozenTrial]) -> tuple[FrozenTrial, list[str]]:
    """The best completed trial the collapse guard did not flag (where there is one), and
    notes on what a user of its recipe should know."""
    top = max(completed, key=completed_value)
    usable = [t for t in completed if not t.user_attrs.get("collapsed")]
    if not usable:
        flags = "; ".join(top.user_attrs.get("flags") or []) or "flagged"
        return top, [
            f"every completed trial ({len(completed)}) collapsed, the best one too ({flags}): "
            "its recipe is not a usable model; run more --trials, longer ones (--max-epochs) "
            "or check the data"
        ]
    best = max(usable, key=completed_value)
    if best is top:
        return best, []
    return best, [
        f"trial {top.number} scored higher (val {top.value:.4f}) but collapsed "
        f"({'; '.join(top.user_attrs.get('flags') or [])}); trial {best.number}, the best "
        "that did not, is the one saved"
    ]


# Config keys that say where and on what machine a trial ran, not what it learnt: left out
# of best_config.json so that it trains again anywhere.
_MACHINE_KEYS = ("data_dir", "run_dir", "device", "num_workers")


def trial_config(base: TrainConfig, recipe: dict[str, Any]) -> dict[str, Any]:
    """Everything a trial trained with (but where and on what): the dataset, model, size,
    seed and model options of `base`, its other options that differ from the defaults,
    and `recipe` over them."""
    defaults = TrainConfig(dataset=base.dataset, model=base.model).to_dict()
    values = base.to_dict()
    identity = {k: values[k] for k in ("dataset", "model", "size", "seed", "model_options")}
    changed = {k: v for k, v in values.items() if k not in _MACHINE_KEYS and v != defaults[k]}
    return {**identity, **changed, **recipe}


def _summary(
    study: optuna.Study, base: TrainConfig, best: FrozenTrial, best_config: dict[str, Any]
) -> dict[str, Any]:
    """tune_summary.json: the study, its best trial and every trial's numbers."""
    return {
        "study": study.study_name,
        "dataset": base.dataset,
        "model": base.model,
        "size": base.size,
        "metric": study.user_attrs.get("metric"),
        "best_trial": best.number,
        "best_value": best.value,
        "best_config": best_config,
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "epochs_reported": len(t.intermediate_values),
                **t.user_attrs,
            }
            for t in study.get_trials(deepcopy=False)
        ],
    }
