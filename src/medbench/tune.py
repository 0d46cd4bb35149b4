"""Hyperparameter tuning: an Optuna study of training recipes for one model on one dataset.

Each trial trains one run with `medbench.engine.train` (data loaded once per process) and
scores it by its best validation metric. TPE samples the recipe; a median or Hyperband
pruner stops poor trials from the per-epoch validation metric (`on_epoch` -> `trial.report`).

The study lives in a database (SQLite in the output folder by default, any SQLAlchemy URL
otherwise), so a study survives a kill and several processes or machines can work on one:
`n_trials` counts finished (complete or pruned) trials of the whole study, and a trial whose
process died stops sending heartbeats, is failed and retried with the same parameters.
Sampling is seeded per trial number, so two workers never draw the same startup trial.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from medbench.augment import POLICIES
from medbench.callbacks import Callback, RoundEnd
from medbench.config import TrainConfig
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.fsutil import atomic_savefig, atomic_write_json
from medbench.results import RunResults

PRUNERS = ("median", "hyperband", "none")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
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
MAX_CONSECUTIVE_FAILURES = 3


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


# ----------------------------------------------------------------------------- study plumbing


class PerTrialSeededSampler(optuna.samplers.BaseSampler):
    """Wrap a sampler so that trial `k` is sampled by a fresh copy seeded with (seed, k).

    A study shared by several processes then samples the same as one process would for
    the same history, and no two workers draw the same random startup trial."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._by_trial: dict[int, optuna.samplers.BaseSampler] = {}

    def _for(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number not in self._by_trial:
            self._by_trial[trial.number] = self._make(self._seed * 100_003 + trial.number)
        return self._by_trial[trial.number]

    def infer_relative_search_space(self, study, trial):  # noqa: ANN001, ANN201
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):  # noqa: ANN001, ANN201
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: ANN001, ANN201
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:  # noqa: ANN001
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001
        self._by_trial.pop(trial.number, self._make(0)).after_trial(study, trial, state, values)


def _schema_race(exc: Exception) -> bool:
    text = str(exc)
    return "UNIQUE constraint failed: alembic_version" in text or "already exists" in text


def make_storage(url: str, heartbeat_seconds: int = 60) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats: a RUNNING trial silent for 2 heartbeats is failed
    and re-queued (WAITING) with its parameters, up to 3 times."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    last_error: Exception | None = None
    # Workers started together race to create the schema (optuna/alembic); the loser sees
    # an IntegrityError or "table already exists" and succeeds when it tries again.
    for attempt in range(5):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_seconds,
                    grace_period=2 * heartbeat_seconds,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=3
                    ),
                )
            except Exception as exc:  # SQLAlchemy raises many types for a bad URL or server
                last_error = exc
                if not _schema_race(exc):
                    break
                time.sleep(0.2 * (attempt + 1))
    raise MedbenchError(
        f"cannot open study storage {url}: {last_error}; check --storage (an SQLAlchemy URL)"
    ) from None


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


def record_trial_result(trial: optuna.Trial, results: RunResults, metric: str) -> float:
    """Store a finished trial's numbers on it; return its objective (validation `metric`,
    or validation accuracy where AUC is undefined)."""
    value = results.val[metric]
    if not math.isfinite(value):
        value = results.val["acc"]
    trial.set_user_attr("val_acc", results.val["acc"])
    trial.set_user_attr("test_acc", results.test["acc"])
    trial.set_user_attr("test_auc", results.test["auc"])
    trial.set_user_attr("train_seconds", results.timing.train_seconds)
    return value


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


def adopt_trials_without_heartbeat(study: optuna.Study) -> list[int]:
    """Give a heartbeat to RUNNING trials that never sent one and are older than the grace
    period, so that they go stale like any other dead trial; returns their numbers.

    optuna fails only trials whose heartbeat went stale. A worker killed between creating
    its trial and its heartbeat thread's first beat leaves a RUNNING trial with no heartbeat
    row, which would block the study's last slots forever. A live trial beats within
    milliseconds of its start, so one adopted by mistake just keeps beating."""
    # optuna offers no public way to list heartbeats: reach the RDBStorage behind the cache.
    storage = getattr(study._storage, "_backend", study._storage)
    interval = getattr(storage, "heartbeat_interval", None)
    if not interval or not hasattr(storage, "engine"):
        return []
    grace = storage.grace_period or 2 * interval
    now = datetime.now()  # optuna stamps datetime_start with local, naive time
    old = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace
    ]
    if not old:
        return []
    with storage.engine.connect() as conn:
        beating = {
            row[0] for row in conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats"))
        }
    silent = [t for t in old if t._trial_id not in beating]
    for t in silent:
        storage.record_heartbeat(t._trial_id)
    return [t.number for t in silent]


def count_trials(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def work_study(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    n_trials: int,
    *,
    timeout_seconds: float | None = None,
    poll_seconds: float = 1.0,
    log: Callable[[str], None] | None = None,
) -> None:
    """Run trials of `study` until it has `n_trials` finished ones (all workers together).

    A worker starts a trial only while finished + running + waiting trials are fewer than
    `n_trials`; otherwise it waits for the others (a dead one's trial comes back as waiting
    after its heartbeat goes stale). A trial that raises MedbenchError is recorded as
    failed; after 3 failures in a row the error is raised."""
    start = time.monotonic()
    failures = 0
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            adopted = adopt_trials_without_heartbeat(study)
            optuna.storages.fail_stale_trials(study)
        if adopted and log:
            log(
                f"trials {adopted} never sent a heartbeat (worker died at start); failing them soon"
            )
        done = count_trials(study, FINISHED)
        if done >= n_trials:
            return
        if timeout_seconds is not None and time.monotonic() - start > timeout_seconds:
            if log:
                log(f"timeout reached with {done}/{n_trials} trials finished")
            return
        pending = count_trials(study, (TrialState.RUNNING, TrialState.WAITING))
        if done + pending >= n_trials and count_trials(study, (TrialState.WAITING,)) == 0:
            time.sleep(poll_seconds)
            continue
        started: list[int] = []

        def tracked(trial: optuna.Trial, started: list[int] = started) -> Any:
            started.append(trial.number)
            return objective(trial)

        study.optimize(tracked, n_trials=1, catch=(MedbenchError, _Surplus))
        last = study.get_trials(deepcopy=False)[started[-1]] if started else None
        if last is not None and last.state == TrialState.FAIL and "surplus" not in last.user_attrs:
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise MedbenchError(
                    f"{failures} trials in a row failed; the last: {last.user_attrs.get('error')}"
                )
        else:
            failures = 0


class _Surplus(Exception):
    """A trial started by a worker that lost a race for the last of the n_trials slots."""


def claim_slot(trial: optuna.Trial, n_trials: int) -> None:
    """Give up this trial (as failed, marked 'surplus') if trials numbered before it
    already fill the study's `n_trials`: two workers may start the last one at once."""
    ahead = [
        t
        for t in trial.study.get_trials(
            deepcopy=False, states=FINISHED + (TrialState.RUNNING, TrialState.WAITING)
        )
        if t.number < trial.number
    ]
    if len(ahead) >= n_trials:
        trial.set_user_attr("surplus", True)
        raise _Surplus(f"trial {trial.number}: the study already has {n_trials} trials")


def open_study(
    storage: str,
    study_name: str,
    sampler: optuna.samplers.BaseSampler,
    *,
    heartbeat_seconds: int,
    pruner: optuna.pruners.BasePruner | None = None,
    directions: list[str] | None = None,
    attrs: dict[str, Any] | None = None,
) -> optuna.Study:
    """Create the study or join it; refuse to join a study made for something else."""
    study = optuna.create_study(
        storage=make_storage(storage, heartbeat_seconds),
        study_name=study_name,
        sampler=sampler,
        pruner=pruner,
        directions=directions or ["maximize"],
        load_if_exists=True,
    )
    for key, value in (attrs or {}).items():
        existing = study.user_attrs.get(key)
        if existing is None:
            study.set_user_attr(key, value)
        elif existing != value:
            raise MedbenchError(
                f"study {study_name} in {storage} was made with {key}={existing!r}, not "
                f"{value!r}; use another --study name or the original settings"
            )
    return study


def default_storage(out_dir: str | Path, filename: str) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / filename}"


# ----------------------------------------------------------------------------- the recipe


def suggest_recipe(
    trial: optuna.Trial,
    fixed: dict[str, Any],
    *,
    min_epochs: int,
    max_epochs: int,
    model_options: dict[str, Any] | None,
) -> dict[str, Any]:
    """Sample the TrainConfig values of a recipe; keys in `fixed` are not sampled.
    `model_options` (None for timm models) says whether dropout/drop_path apply."""
    values: dict[str, Any] = {}

    def want(key: str) -> bool:
        return key not in fixed

    if want("lr"):
        values["lr"] = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    if want("weight_decay"):
        values["weight_decay"] = trial.suggest_float("weight_decay", 1e-5, 0.3, log=True)
    if want("batch_size"):
        values["batch_size"] = trial.suggest_categorical("batch_size", [32, 64, 128, 256])
    if want("label_smoothing"):
        values["label_smoothing"] = trial.suggest_float("label_smoothing", 0.0, 0.2)
    if want("augment"):
        values["augment"] = trial.suggest_categorical(
            "augment", [p for p in POLICIES if p != "auto"]
        )
    if want("mixup") and want("cutmix"):
        mix = trial.suggest_categorical("mix", ["none", "mixup", "cutmix"])
        values["mixup"] = values["cutmix"] = 0.0
        if mix != "none":
            values[mix] = trial.suggest_float(f"{mix}_alpha", 0.1, 1.0)
    if want("dropout") and (model_options is None or "dropout" in model_options):
        values["dropout"] = trial.suggest_float("dropout", 0.0, 0.5)
    if want("drop_path") and (model_options is None or "drop_path" in model_options):
        values["drop_path"] = trial.suggest_float("drop_path", 0.0, 0.3)
    if want("epochs") and min_epochs < max_epochs:
        values["epochs"] = trial.suggest_int("epochs", min_epochs, max_epochs)
    elif want("epochs"):
        values["epochs"] = max_epochs
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
) -> TuneResult:
    """Tune the recipe of `base` (its dataset, model, size, seed, model options) until the
    study has `n_trials` finished trials; write `best_config.json` and plots to `out_dir`.

    `fixed` holds TrainConfig values not to search (e.g. those the user gave). Trials train
    into `out_dir/trials/trial-NNNN`. Pass `data` to reuse a loaded dataset."""
    from medbench.data import load_dataset
    from medbench.engine import train
    from medbench.models import model_options

    if n_trials < 1:
        raise MedbenchError(f"--trials must be at least 1, not {n_trials}")
    if metric not in ("auc", "acc"):
        raise MedbenchError(f"--metric must be auc or acc, not {metric!r}")
    if max_epochs < 1:
        raise MedbenchError(f"--max-epochs must be at least 1, not {max_epochs}")
    min_epochs = min_epochs or max(1, max_epochs // 4)
    if not 1 <= min_epochs <= max_epochs:
        raise MedbenchError(f"--min-epochs must be between 1 and --max-epochs ({max_epochs})")
    fixed = {k: v for k, v in (fixed or {}).items() if k in TUNABLE}
    base.validate()
    options = None if base.model.startswith("timm:") else model_options(base.model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(out_dir, "tune.sqlite")
    study_name = study_name or f"tune-{base.dataset}-{base.size}-{base.model}"
    say = (lambda line: print(line, flush=True)) if progress else (lambda line: None)
    if data is None:
        data = load_dataset(base.dataset, base.size, base.data_dir, progress=progress)

    sampler = PerTrialSeededSampler(
        lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=5), base.seed
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(
        storage,
        study_name,
        sampler,
        heartbeat_seconds=heartbeat_seconds,
        pruner=make_pruner(pruner, max_epochs),
        attrs={
            "kind": "tune",
            "dataset": base.dataset,
            "model": base.model,
            "size": base.size,
            "metric": metric,
            "max_epochs": max_epochs,
            "fixed": fixed,
        },
    )

    def objective(trial: optuna.Trial) -> float:
        claim_slot(trial, n_trials)
        recipe = suggest_recipe(
            trial, fixed, min_epochs=min_epochs, max_epochs=max_epochs, model_options=options
        )
        config = TrainConfig.from_dict(
            {
                **base.to_dict(),
                **fixed,
                **recipe,
                "run_dir": str(out_dir / "trials" / f"trial-{trial.number:04d}"),
            }
        )
        try:
            results = train(
                config,
                data=data,
                progress=False,
                callbacks=[PruningCallback(trial, metric)],
                measure=False,
            )
        except optuna.TrialPruned as pruned:
            say(f"trial {trial.number}: pruned at {pruned}")
            raise
        except MedbenchError as exc:
            trial.set_user_attr("error", str(exc))
            say(f"trial {trial.number}: failed: {exc}")
            raise
        value = record_trial_result(trial, results, metric)
        say(f"trial {trial.number}: val {metric} {value:.4f} with {_short(trial.params)}")
        return value

    work_study(study, objective, n_trials, timeout_seconds=timeout_seconds, log=say)
    return write_tune_outputs(
        study, base, out_dir, storage=storage, fixed=fixed, max_epochs=max_epochs
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
    best = max(completed, key=lambda t: t.value)
    recipe = recipe_from_params(best.params, fixed, max_epochs)
    best_config = {"model_options": dict(base.model_options), **recipe}
    path = atomic_write_json(out_dir / "best_config.json", best_config)
    trials = study.get_trials(deepcopy=False)
    atomic_write_json(
        out_dir / "tune_summary.json",
        {
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
                for t in trials
            ],
        },
    )
    plots = [plot_history(study, out_dir / "history.png")]
    importance = plot_importance(study, out_dir / "importance.png")
    if importance is not None:
        plots.append(importance)
    return TuneResult(
        study_name=study.study_name,
        storage=storage,
        n_finished=count_trials(study, FINISHED),
        best_trial=best.number,
        best_value=float(best.value),
        best_config=best_config,
        best_config_path=path,
        plots=plots,
    )


def plot_history(study: optuna.Study, path: Path) -> Path:
    """Objective of each completed trial and the best so far, by trial number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number
    )
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([t.number for t in done], [t.value for t in done], s=18, label="completed")
    running_best, best = [], -math.inf
    for t in done:
        best = max(best, t.value)
        running_best.append(best)
    ax.step([t.number for t in done], running_best, where="post", color="C3", label="best so far")
    pruned = [t for t in pruned if t.last_step is not None]
    if pruned:
        ax.scatter(
            [t.number for t in pruned],
            [t.intermediate_values[t.last_step] for t in pruned],
            s=14,
            marker="x",
            color="grey",
            label="pruned (last reported)",
        )
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {study.user_attrs.get('metric', 'metric')}")
    ax.set_title(study.study_name, fontsize=9)
    ax.legend(fontsize=8)
    atomic_savefig(fig, path)
    plt.close(fig)
    return path


def plot_importance(study: optuna.Study, path: Path) -> Path | None:
    """fANOVA parameter importances as a bar chart; None (with a warning) when the study
    has too few completed trials to estimate them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as exc:
        warnings.warn(f"no importance plot: {exc}", MedbenchWarning, stacklevel=2)
        return None
    if not importances:
        return None
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1.2))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA, completed trials)")
    atomic_savefig(fig, path)
    plt.close(fig)
    return path


def _short(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
