"""Study plumbing shared by tuning (`medbench.workflows.tune`) and architecture search
(`medbench.workflows.nas`): opening or joining an Optuna study on its storage, checking where
it lives, running trials in worker processes until the study has enough, per-trial seeded
sampling, and each trial's bookkeeping (its results and progress lines).

The study lives in a database (SQLite in the output folder by default, any SQLAlchemy URL
otherwise), so a study survives a kill and several processes or machines can work on one:
`n_trials` counts finished (complete or pruned) trials of the whole study, and a trial whose
process died stops sending heartbeats, is failed and retried with the same parameters.
Sampling is seeded per trial number, so two workers never draw the same startup trial.
What it needs beneath Optuna's public API is in `medbench.workflows.study_storage`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from medbench.data import load_dataset
from medbench.errors import DiskWriteError, MedbenchError
from medbench.runs.results import RunResults
from medbench.training.callbacks import Callback, RoundEnd, RunInfo
from medbench.training.config import TrainConfig
from medbench.training.engine import train
from medbench.training.tracking import Tracking, stop_loggers
from medbench.workflows.study_storage import fail_dead_trials, make_storage

METRICS = ("auc", "acc")  # validation metrics a study can maximise
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
StudyDirectionName = Literal["minimize", "maximize"]  # what optuna.create_study takes
MAX_CONSECUTIVE_FAILURES = 3


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


class TrialProgress(Callback):
    """One line when a trial starts and one per finished round: a trial trains silently
    (no progress bar), and one may take minutes."""

    def __init__(self, number: int, say: Callable[[str], None], params: dict[str, Any]) -> None:
        self.number, self.say, self.params = number, say, params

    def on_train_start(self, run: RunInfo) -> None:
        self.say(
            f"trial {self.number}: started with {format_params(self.params) or 'the fixed recipe'}"
        )

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


def format_params(params: dict[str, Any]) -> str:
    """A trial's parameters as one line: `lr=0.002, augment=basic`."""
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
