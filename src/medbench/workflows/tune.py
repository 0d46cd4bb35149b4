"""Hyperparameter tuning: an Optuna study of training recipes for one model on one dataset.

Each trial trains one run with `medbench.training.engine.train` (data loaded once per process) and
scores it by its best validation metric. TPE samples the recipe; a median or Hyperband
pruner stops poor trials from the per-round validation metric (`PruningCallback` ->
`trial.report`).

The study lives in a database (SQLite in the output folder by default, any SQLAlchemy URL
otherwise), so a study survives a kill and several processes or machines can work on one:
`n_trials` counts finished (complete or pruned) trials of the whole study, and a trial whose
process died stops sending heartbeats, is failed and retried with the same parameters.
Sampling is seeded per trial number, so two workers never draw the same startup trial.

The study plumbing here (`StudySetup`, `work_study`, `PerTrialSeededSampler`) is shared
with `medbench.workflows.nas`; what it needs beneath Optuna's public API is in
`medbench.workflows.study_storage`.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import matplotlib
import matplotlib.pyplot as plt
import optuna
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from optuna.trial import FrozenTrial, TrialState

from medbench.data import load_dataset
from medbench.data.augment import POLICIES
from medbench.errors import DiskWriteError, MedbenchError, MedbenchWarning
from medbench.models import model_options, model_spatial_dims
from medbench.runs.results import RunResults
from medbench.training.callbacks import Callback, RoundEnd, RunInfo
from medbench.training.config import TrainConfig
from medbench.training.engine import train
from medbench.training.tracking import Tracking, stop_loggers
from medbench.utils.fsutil import atomic_savefig, atomic_write_json
from medbench.workflows.study_storage import fail_dead_trials, make_storage

PRUNERS = ("median", "hyperband", "none")
METRICS = ("auc", "acc")  # validation metrics a study can maximise
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
StudyDirectionName = Literal["minimize", "maximize"]  # what optuna.create_study takes
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
    notes: list[str] = field(default_factory=list)  # caveats, e.g. every trial collapsed


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
    intervals = results.metrics.get("test_intervals") or {}
    for name in ("acc", "auc"):  # 95% bootstrap intervals over the test images
        if intervals.get(name):
            trial.set_user_attr(f"test_{name}_interval", list(intervals[name]))
    trial.set_user_attr("train_seconds", results.timing.train_seconds)
    trial.set_user_attr("collapsed", bool(results.flags))
    trial.set_user_attr("flags", list(results.flags))
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


class TrialProgress(Callback):
    """One line when a trial starts and one per finished round: a trial trains silently
    (no progress bar), and one may take minutes."""

    def __init__(self, number: int, say: Callable[[str], None], params: dict[str, Any]) -> None:
        self.number, self.say, self.params = number, say, params

    def on_train_start(self, run: RunInfo) -> None:
        self.say(f"trial {self.number}: started with {_short(self.params) or 'the fixed recipe'}")

    def on_round_end(self, event: RoundEnd) -> None:
        r = event.record
        self.say(
            f"trial {self.number}: round {r['round']}/{event.rounds_planned} val AUC "
            f"{r['val_auc']:.4f} ACC {r['val_acc']:.4f} ({r['seconds']:.0f}s)"
        )


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
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Run trials of `study` until it has `n_trials` finished ones (all workers together).

    A worker starts a trial only while finished + running + waiting trials are fewer than
    `n_trials`; otherwise it waits for the others (a dead one's trial comes back as waiting
    after its heartbeat goes stale). A trial that raises MedbenchError is recorded as
    failed; after 3 failures in a row the error is raised, and at once for a file that could
    not be written (no later trial could write it either)."""
    log = log or _silent
    deadline = None if timeout_seconds is None else clock() + timeout_seconds
    failures = 0
    while True:
        adopted = fail_dead_trials(study)
        if adopted:
            log(
                f"trials {adopted} never sent a heartbeat (worker died at start); failing them soon"
            )
        done = count_trials(study, FINISHED)
        if done >= n_trials:
            return
        if deadline is not None and clock() > deadline:
            log(f"timeout reached with {done}/{n_trials} trials finished")
            return
        if not _slot_free(study, done, n_trials):
            sleep(poll_seconds)
            continue
        last = _run_one_trial(study, objective, n_trials)
        if last is not None and last.user_attrs.get("fatal"):  # e.g. a full disk
            raise MedbenchError(last.user_attrs["error"])
        failures = failures + 1 if _counts_as_failure(last) else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            assert last is not None  # it ran and failed: _counts_as_failure(None) is False
            raise MedbenchError(
                f"{failures} trials in a row failed; the last: {last.user_attrs.get('error')}"
            )


def _slot_free(study: optuna.Study, done: int, n_trials: int) -> bool:
    """Whether this worker may start (or take up a waiting) trial."""
    waiting = count_trials(study, (TrialState.WAITING,))
    return waiting > 0 or done + waiting + count_trials(study, (TrialState.RUNNING,)) < n_trials


def _run_one_trial(
    study: optuna.Study, objective: Callable[[optuna.Trial], Any], n_trials: int
) -> FrozenTrial | None:
    ran: list[FrozenTrial] = []

    def slotted(trial: optuna.Trial) -> Any:
        claim_slot(trial, n_trials)
        return objective(trial)

    study.optimize(
        slotted,
        n_trials=1,
        catch=(MedbenchError, _Surplus),
        callbacks=[lambda _study, trial: ran.append(trial)],
    )
    return ran[-1] if ran else None


def _counts_as_failure(trial: FrozenTrial | None) -> bool:
    return (
        trial is not None and trial.state == TrialState.FAIL and "surplus" not in trial.user_attrs
    )


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
    directions: list[StudyDirectionName] | None = None,
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


def default_storage(out_dir: str | Path, kind: str) -> str:
    """Where a `kind` ("tune" or "search") study lives unless told: SQLite in `out_dir`."""
    return f"sqlite:///{Path(out_dir).resolve() / f'{kind}.sqlite'}"


def check_study_arguments(base: TrainConfig, n_trials: int, metric: str) -> None:
    """The checks a tune and a search share: a trial count, an objective, a valid recipe."""
    if n_trials < 1:
        raise MedbenchError(f"--trials must be at least 1, not {n_trials}")
    if metric not in METRICS:
        raise MedbenchError(f"--metric must be {' or '.join(METRICS)}, not {metric!r}")
    base.validate()


def check_study_place(
    kind: str, out_dir: str | Path, storage: str | None, heartbeat_seconds: int
) -> None:
    """Where a study lives, checked before any data is loaded: an --out that is a folder
    (or can be one), a positive heartbeat, and an SQLite file that is an SQLite database."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MedbenchError(f"--out {out} is a file, not a folder; choose a folder for the {kind}")
    if heartbeat_seconds < 1:
        raise MedbenchError(f"--heartbeat must be at least 1 second, not {heartbeat_seconds}")
    given = sqlite_file(storage) if storage else None
    if given is not None and not given.parent.is_dir():  # SQLite would not say it in one line
        raise MedbenchError(f"--storage {storage}: the folder {given.parent} does not exist")
    check_sqlite_file(storage or default_storage(out, kind))


_SQLITE_HEADER = b"SQLite format 3\x00"


def sqlite_file(storage: str) -> Path | None:
    """The database file of an `sqlite:///` storage URL (None for other URLs)."""
    prefix = "sqlite:///"
    return Path(storage[len(prefix) :]) if storage.startswith(prefix) else None


def check_sqlite_file(storage: str) -> None:
    """A one-line MedbenchError where an SQLite storage file exists but is no database
    (SQLAlchemy's own error spans several lines)."""
    path = sqlite_file(storage)
    if path is None or not path.is_file():
        return
    try:
        with open(path, "rb") as fh:
            header = fh.read(len(_SQLITE_HEADER))
    except PermissionError:
        raise MedbenchError(f"study database {path} cannot be read (permission denied)") from None
    if header and header != _SQLITE_HEADER[: len(header)]:
        raise MedbenchError(
            f"study database {path} is not an SQLite database (corrupt or overwritten); "
            "move it away to start a new study, or give another --out or --storage"
        )


@dataclass
class StudySetup:
    """What a tune and a search share: the study's storage and name, the folder its trials
    train into, the data they all train on, and where progress lines go."""

    kind: str
    base: TrainConfig
    out_dir: Path
    storage: str
    study_name: str
    data: Any
    say: Callable[[str], None]
    tracking: Tracking | None = None  # trackers every trial logs to (medbench.training.tracking)

    @classmethod
    def prepare(
        cls,
        kind: str,
        base: TrainConfig,
        out_dir: str | Path,
        *,
        storage: str | None = None,
        study_name: str | None = None,
        data: Any = None,
        progress: bool = True,
        tracking: Tracking | None = None,
    ) -> StudySetup:
        """Make `out_dir`, fill in the default storage and study name, load the data once."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if data is None:
            data = load_dataset(base.dataset, base.size, base.data_dir, progress=progress)
        return cls(
            kind=kind,
            base=base,
            out_dir=out_dir,
            storage=storage or default_storage(out_dir, kind),
            study_name=study_name or f"{kind}-{base.dataset}-{base.size}-{base.model}",
            data=data,
            say=_print_line if progress else _silent,
            tracking=tracking,
        )

    def open(
        self,
        sampler: optuna.samplers.BaseSampler,
        *,
        heartbeat_seconds: int,
        attrs: dict[str, Any],
        pruner: optuna.pruners.BasePruner | None = None,
        directions: list[StudyDirectionName] | None = None,
    ) -> optuna.Study:
        """Create or join the study; `attrs` (with kind, dataset, model, size) must match
        those of a study joined."""
        # ERROR: a failed trial is said in medbench's own line, not in Optuna's traceback.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        identity = {
            "kind": self.kind,
            "dataset": self.base.dataset,
            "model": self.base.model,
            "size": self.base.size,
        }
        return open_study(
            self.storage,
            self.study_name,
            sampler,
            heartbeat_seconds=heartbeat_seconds,
            pruner=pruner,
            directions=directions,
            attrs={**identity, **attrs},
        )

    def train_trial(
        self, trial: optuna.Trial, values: dict[str, Any], callbacks: Sequence[Callback] = ()
    ) -> RunResults:
        """Train `base` with `values` over it into `out_dir/trials/trial-NNNN`; a failure is
        recorded on the trial and raised again."""
        run_dir = self.out_dir / "trials" / f"trial-{trial.number:04d}"
        config = TrainConfig.from_dict({**self.base.to_dict(), **values, "run_dir": str(run_dir)})
        loggers = self.loggers(trial)
        # The loggers before `callbacks`: the round a pruner stops at is still logged.
        shown = [TrialProgress(trial.number, self.say, trial.params), *loggers, *callbacks]
        try:
            return train(config, data=self.data, progress=False, callbacks=shown, measure=False)
        except optuna.TrialPruned as pruned:
            stop_loggers(loggers, "KILLED")
            self.say(f"trial {trial.number}: pruned at {pruned}")
            raise
        except MedbenchError as exc:
            stop_loggers(loggers, "FAILED")
            trial.set_user_attr("error", str(exc))
            trial.set_user_attr("fatal", isinstance(exc, DiskWriteError))
            self.say(f"trial {trial.number}: failed: {exc}")
            raise

    def loggers(self, trial: optuna.Trial) -> list[Callback]:
        """The trial's trackers, tagged with its study and number, named trial-NNNN."""
        if self.tracking is None:
            return []
        tags = {"study": self.study_name, "trial": str(trial.number), "kind": self.kind}
        return self.tracking.loggers(tags, name_root=self.out_dir / "trials")


def _print_line(line: str) -> None:
    print(line, flush=True)


def _silent(line: str) -> None:
    pass


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
        setup.say(f"trial {trial.number}: val {metric} {value:.4f} with {_short(trial.params)}")
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


@contextlib.contextmanager
def optuna_plot_style() -> Iterator[None]:
    """Draw one of `optuna.visualization.matplotlib`'s figures. They draw through pyplot and
    switch matplotlib to the ggplot style for the whole process: here the style holds until
    the figure is saved (matplotlib's settings are restored after), and the functions'
    ExperimentalWarning (Optuna marks them experimental) is silenced."""
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def save_optuna_plot(ax: Axes, path: Path) -> Path:
    """Write an Optuna plot's figure as a PNG, atomically, drawn by the Agg canvas (no
    display), and release it from pyplot."""
    fig = ax.get_figure(root=True)
    assert fig is not None  # an Axes made by pyplot belongs to a figure
    plt.close(fig)
    FigureCanvasAgg(fig)
    return atomic_savefig(fig, path)


def plot_history(study: optuna.Study, path: Path) -> Path:
    """Objective of each completed trial and the best so far, by trial number (Optuna's
    optimisation history). medbench adds the last reported value of each pruned trial,
    which Optuna's plot leaves out."""
    metric = f"validation {study.user_attrs.get('metric', 'metric')}"
    pruned = [
        (t.number, t.intermediate_values[step])
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if (step := t.last_step) is not None
    ]
    with optuna_plot_style():
        ax = optuna.visualization.matplotlib.plot_optimization_history(study, target_name=metric)
        if pruned:
            ax.scatter(
                [number for number, _ in pruned],
                [value for _, value in pruned],
                s=14,
                marker="x",
                color="grey",
                label="pruned (last reported)",
            )
        ax.set_title(study.study_name, fontsize=9)
        ax.legend(fontsize=8)
        return save_optuna_plot(ax, path)


def plot_importance(study: optuna.Study, path: Path) -> Path | None:
    """fANOVA parameter importances as a bar chart (Optuna's); None (with a warning) when
    the study has too few completed trials to estimate them."""
    with optuna_plot_style():
        try:
            # fANOVA named, not Optuna's default evaluator: the default changed in Optuna 5.
            ax = optuna.visualization.matplotlib.plot_param_importances(
                study,
                evaluator=optuna.importance.FanovaImportanceEvaluator(),
                target_name="importance (fANOVA, completed trials)",
            )
        except (ValueError, RuntimeError) as exc:
            warnings.warn(f"no importance plot: {exc}", MedbenchWarning, stacklevel=2)
            return None
        if not ax.patches:  # no parameter to rank
            plt.close(ax.get_figure(root=True))
            return None
        ax.set_xlabel("importance (fANOVA, completed trials)")
        ax.set_title("", loc="left")  # Optuna's generic title, in place of the study's name
        ax.set_title(study.study_name, fontsize=9)
        if (legend := ax.get_legend()) is not None:  # one objective: the axis label names it
            legend.remove()
        return save_optuna_plot(ax, path)


def _short(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
