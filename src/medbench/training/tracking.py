"""Experiment tracking: a run logged to TensorBoard, MLflow or Weights & Biases as it trains.

    from medbench.training.tracking import make_loggers
    train(config, callbacks=make_loggers(["tensorboard", "mlflow"], mlflow_uri="http://..."))

Each tracker is a `medbench.training.callbacks.Callback`, so the engine knows nothing of them; under
torchrun they run on rank 0 only, as every callback does. They log the same things:
params (the run's TrainConfig, flattened, with the dataset, model, seed and medbench
version), each round's history record at the round's optimiser step, the final metrics
exactly as results.json holds them, and (MLflow, W&B) results.json, the model card, any
plot in the run folder and the model weights as artifacts.

A tracker's package is imported when its run starts, never before: with no tracker asked
for, `import medbench` and every command load none of tensorboard, mlflow or wandb.

A resumed run continues the MLflow run (and the W&B run) it started: their ids are kept
in the run folder's tracking.json.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from medbench import __version__
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.runs.results import RunResults, read_results
from medbench.training.callbacks import Callback, RoundEnd, RunInfo
from medbench.utils.fsutil import atomic_write_json

LOGGERS = ("tensorboard", "mlflow", "wandb")
# The package each tracker needs, and how to get it.
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_EXPERIMENT = "medbench"
STATE_FILE = "tracking.json"  # in the run folder: the MLflow and W&B run ids
TENSORBOARD_DIR = "tensorboard"  # in the run folder, unless a log folder is given
# Files of a finished run logged as artifacts, where present (plots: any PNG beside them).
ARTIFACTS = ("results.json", "MODEL_CARD.md", "model.pt")
# History entries that are not metrics: the round's number and its step (the x axis).
_NOT_METRICS = ("round", "step")
_MLFLOW_BATCH = 100  # MLflow's log_batch takes at most 100 params (1000 metrics) a call


# ----------------------------------------------------------------------------- choosing


def parse_log_names(names: str | Sequence[str] | None) -> tuple[str, ...]:
    """`"tensorboard,mlflow"` (or a list) as a tuple of tracker names; unknown ones refused."""
    if names is None:
        return ()
    items = names.split(",") if isinstance(names, str) else list(names)
    chosen = tuple(dict.fromkeys(n.strip().lower() for n in items if n.strip()))
    unknown = [n for n in chosen if n not in LOGGERS]
    if unknown:
        raise MedbenchError(
            f"unknown tracker {', '.join(map(repr, unknown))} for --log; choose from "
            f"{', '.join(LOGGERS)} (comma-separated)"
        )
    return chosen


def check_installed(names: Sequence[str]) -> None:
    """A MedbenchError naming the pip command when a tracker's package is missing (looked up
    without importing it)."""
    missing = [_PACKAGES[n] for n in names if importlib.util.find_spec(_PACKAGES[n]) is None]
    if missing:
        raise MedbenchError(
            f"--log {','.join(names)} needs {', '.join(missing)}: pip install {' '.join(missing)}"
        )


@dataclass(frozen=True)
class Tracking:
    """Which trackers every run of a command logs to, and where. Plain data (a grid sends
    it to its worker processes); `loggers()` makes fresh callbacks for one run."""

    names: tuple[str, ...]
    mlflow_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else MLflow's default
    log_dir: str | None = None  # TensorBoard: DIR/<run name>/ instead of RUN/tensorboard/
    experiment: str = DEFAULT_EXPERIMENT  # MLflow experiment, W&B project
    tags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_flags(
        cls,
        log: str | Sequence[str] | None,
        mlflow_uri: str | None = None,
        log_dir: str | None = None,
        experiment: str | None = None,
    ) -> Tracking | None:
        """The tracking `--log` asks for (None when it asks for none), every package there."""
        names = parse_log_names(log)
        if not names:
            return None
        check_installed(names)
        return cls(names, mlflow_uri or None, log_dir, experiment or DEFAULT_EXPERIMENT)

    def loggers(
        self, tags: Mapping[str, str] | None = None, name_root: str | Path | None = None
    ) -> list[Callback]:
        """Fresh callbacks for one run; `tags` say where it belongs (a grid, a study);
        `name_root`: runs are named by their folder's path below it (else the folder name)."""
        return make_loggers(
            self.names,
            mlflow_uri=self.mlflow_uri,
            log_dir=self.log_dir,
            experiment=self.experiment,
            tags={**self.tags, **(tags or {})},
            name_root=name_root,
        )


def make_loggers(
    names: str | Sequence[str] | None,
    *,
    mlflow_uri: str | None = None,
    log_dir: str | Path | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    tags: Mapping[str, str] | None = None,
    name_root: str | Path | None = None,
) -> list[Callback]:
    """One callback per tracker in `names` (see LOGGERS), for one run."""
    chosen = parse_log_names(names)
    check_installed(chosen)
    run_tags = dict(tags or {})
    made: dict[str, Callable[[], Callback]] = {
        "tensorboard": lambda: TensorBoardLogger(
            log_dir=log_dir, tags=run_tags, name_root=name_root
        ),
        "mlflow": lambda: MLflowLogger(
            mlflow_uri, experiment=experiment, tags=run_tags, name_root=name_root
        ),
        "wandb": lambda: WandbLogger(project=experiment, tags=run_tags, name_root=name_root),
    }
    return [made[name]() for name in chosen]


def stop_loggers(loggers: Sequence[Callback], status: str = "FAILED") -> None:
    """End the tracker runs of a run that stopped before it finished (a pruned trial, a
    failed grid cell): MLflow records `status` (KILLED, FAILED), W&B a failed exit. Other
    callbacks are left alone; a tracker that cannot be told warns."""
    for callback in loggers:
        stop = getattr(callback, "stop", None)
        if stop is None:
            continue
        try:
            stop(status)
        except Exception as exc:
            _warn_lost(type(callback).__name__, "that the run stopped", exc)


# ----------------------------------------------------------------------------- what is logged


def run_name(run_dir: str | Path, name_root: str | Path | None = None) -> str:
    """The run folder's path below `name_root` (a grid's runs/ folder: its folder names
    repeat across models), else the folder's own name."""
    run_dir = Path(run_dir).resolve()
    if name_root is not None:
        try:
            return run_dir.relative_to(Path(name_root).resolve()).as_posix()
        except ValueError:
            pass
    return run_dir.name


def run_params(run: RunInfo) -> dict[str, str]:
    """The run's TrainConfig flattened (model options as `model_options.KEY`), with the
    medbench version and the batch facts the engine settled, as strings."""
    config = run.config.to_dict()
    options = config.pop("model_options", None) or {}
    params = {key: _param_text(value) for key, value in config.items()}
    params.update({f"model_options.{k}": _param_text(v) for k, v in options.items()})
    params["medbench_version"] = __version__
    params["batch_size_used"] = str(run.batch_size)
    params["steps_per_epoch"] = str(run.steps_per_epoch)
    return params


def _param_text(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def round_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """A round's history record as metrics: its finite numbers but the round and step."""
    return {
        key: float(value)
        for key, value in record.items()
        if key not in _NOT_METRICS and _is_number(value) and math.isfinite(value)
    }


def final_metrics(results: RunResults) -> dict[str, float]:
    """The final metrics of results.json, flattened: `test/acc`, `val/auc`, ... (each
    split's finite numbers), `test_intervals/acc/low` and `/high`, the other numbers of
    `metrics` by their own name (`temperature`, ...), and the run's size, speed and cost."""
    out: dict[str, float] = {}
    for key, value in results.metrics.items():
        _flatten(key, value, out)
    summary = {
        "n_params": results.model.n_params,
        "gflops": results.model.gflops,
        "efficiency": results.efficiency,
        "train_seconds": results.timing.train_seconds,
        "latency_ms_per_image": results.timing.latency_ms_per_image,
        "steps_trained": results.steps,
        "best_round": results.best_round,
    }
    out.update({k: float(v) for k, v in summary.items() if _is_number(v) and math.isfinite(v)})
    return out


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}/{key}", inner, out)
    elif _is_number(value) and math.isfinite(value):
        out[prefix] = float(value)
    elif _is_bounds(value):  # a 95% interval [low, high]
        out[f"{prefix}/low"], out[f"{prefix}/high"] = float(value[0]), float(value[1])


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_bounds(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(_is_number(v) and math.isfinite(v) for v in value)
    )


def artifact_files(run_dir: str | Path) -> list[Path]:
    """The files of a finished run that trackers keep: ARTIFACTS and any plot, where present."""
    run_dir = Path(run_dir)
    files = [run_dir / name for name in ARTIFACTS]
    return [p for p in files if p.is_file()] + sorted(run_dir.glob("*.png"))


def _read_state(run_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((run_dir / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _remember(run_dir: Path, tracker: str, key: str, run_id: str) -> None:
    """Keep `run_id` in the run folder, for a resumed run to continue it."""
    state = _read_state(run_dir)
    state.setdefault(tracker, {})[key] = run_id
    atomic_write_json(run_dir / STATE_FILE, state)


def _finished(results: RunResults, run_dir: Path) -> RunResults:
    """The run's results as its results.json holds them (what the trackers must show)."""
    if (run_dir / "results.json").is_file():
        return read_results(run_dir)
    return results


def _warn_lost(tracker: str, what: str, exc: Exception) -> None:
    """A tracker that fails mid-run warns and lets training go on: the run folder stays
    the record, and losing hours of training to a tracking server's hiccup helps no one."""
    warnings.warn(
        f"{tracker}: could not log {what} ({type(exc).__name__}: {str(exc)[:200]}); "
        "training goes on and the run folder keeps everything",
        MedbenchWarning,
        stacklevel=3,
    )


# ----------------------------------------------------------------------------- TensorBoard


class TensorBoardLogger(Callback):
    """Scalars in TensorBoard event files: RUN/tensorboard/, or LOG_DIR/<run name>/ when a
    `log_dir` is given (one folder that `tensorboard --logdir` shows every run from)."""

    def __init__(
        self,
        log_dir: str | Path | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        name_root: str | Path | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.tags = dict(tags or {})
        self.name_root = name_root
        self.writer: Any = None
        self.path: Path | None = None  # where the event files go
        self.run_dir: Path | None = None

    def on_train_start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only here

        self.run_dir = run.run_dir
        name = run_name(run.run_dir, self.name_root)
        self.path = Path(self.log_dir) / name if self.log_dir else run.run_dir / TENSORBOARD_DIR
        # A resumed run hides anything an earlier process logged past its checkpoint.
        purge = run.start_step + 1 if run.start_step else None
        self.writer = SummaryWriter(log_dir=str(self.path), purge_step=purge)
        if not run.start_step:
            params = {**run_params(run), **self.tags}
            self.writer.add_text("params", _markdown_table(params), 0)

    def on_round_end(self, event: RoundEnd) -> None:
        step = int(event.record["step"])
        for key, value in round_metrics(event.record).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a round is minutes apart: show it now, not in two minutes

    def on_train_end(self, results: RunResults) -> None:
        assert self.run_dir is not None
        final = _finished(results, self.run_dir)
        for key, value in final_metrics(final).items():
            self.writer.add_scalar(key, value, final.steps)
        self.writer.close()

    def stop(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()


def _markdown_table(values: Mapping[str, str]) -> str:
    rows = [f"| {k} | {str(v).replace('|', '/')} |" for k, v in sorted(values.items())]
    return "\n".join(["| param | value |", "|---|---|", *rows])


# ----------------------------------------------------------------------------- MLflow


class MLflowLogger(Callback):
    """One MLflow run per medbench run, at `tracking_uri` (else $MLFLOW_TRACKING_URI, else
    MLflow's default), in `experiment` (made when missing). A resumed run continues its
    MLflow run. A server that cannot be reached when the run starts is a MedbenchError;
    one lost later warns and training goes on."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        experiment: str = DEFAULT_EXPERIMENT,
        tags: Mapping[str, str] | None = None,
        name_root: str | Path | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.tags = dict(tags or {})
        self.name_root = name_root
        self.client: Any = None
        self.run_id: str | None = None
        self.run_dir: Path | None = None

    def on_train_start(self, run: RunInfo) -> None:
        self.run_dir = run.run_dir
        try:
            self._start(run)
        except MedbenchError:
            raise
        except Exception as exc:  # MLflow's own errors, and a server that does not answer
            raise MedbenchError(
                f"MLflow at {self.tracking_uri or 'its default tracking URI'}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}; "
                f"check --mlflow-uri (or ${MLFLOW_URI_ENV})"
            ) from None

    def _start(self, run: RunInfo) -> None:
        import mlflow  # imported only when a run logs to MLflow
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri or mlflow.get_tracking_uri()
        self.tracking_uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = self._continued(run.run_dir) or self._create(run, uri)
        params = run_params(run)
        logged = self.client.get_run(self.run_id).data.params
        # A param keeps its first value (MLflow refuses a change): what a resumed run may
        # change (its device, its budget's rest) stays as the run started.
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        tags = [RunTag(f"medbench.{k}", str(v)) for k, v in self.tags.items()]
        for i in range(0, max(len(new), len(tags)), _MLFLOW_BATCH):
            part = slice(i, i + _MLFLOW_BATCH)
            self.client.log_batch(self.run_id, params=new[part], tags=tags[part])

    def _continued(self, run_dir: Path) -> str | None:
        """The MLflow run this run folder started at this URI, when it is still there."""
        run_id = _read_state(run_dir).get("mlflow", {}).get(self.tracking_uri)
        if not run_id:
            return None
        try:
            found = self.client.get_run(run_id)
        except Exception:  # deleted from the server since: start a new one
            return None
        if found.info.lifecycle_stage != "active":
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _create(self, run: RunInfo, uri: str) -> str:
        experiment_id = self._experiment_id()
        config = run.config
        tags = {
            "medbench.dataset": config.dataset,
            "medbench.model": config.model,
            "medbench.seed": str(config.seed),
            "medbench.run_dir": str(run.run_dir),
        }
        created = self.client.create_run(
            experiment_id, tags=tags, run_name=run_name(run.run_dir, self.name_root)
        )
        run_id = created.info.run_id
        _remember(run.run_dir, "mlflow", uri, run_id)
        return run_id

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except Exception:  # another process made it first
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def on_round_end(self, event: RoundEnd) -> None:
        try:
            self._log_metrics(round_metrics(event.record), int(event.record["step"]))
        except Exception as exc:
            _warn_lost("MLflow", f"round {event.record.get('round')}", exc)

    def _log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def on_train_end(self, results: RunResults) -> None:
        assert self.run_dir is not None
        try:
            final = _finished(results, self.run_dir)
            self._backfill(final)
            self._log_metrics(final_metrics(final), final.steps)
            for path in artifact_files(self.run_dir):
                self.client.log_artifact(self.run_id, str(path))
            self.client.set_terminated(self.run_id, "FINISHED")
        except Exception as exc:
            _warn_lost("MLflow", f"the final metrics and files of run {self.run_id}", exc)

    def stop(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)

    def _backfill(self, final: RunResults) -> None:
        """Rounds no process logged (one that ended between its checkpoint and its
        callbacks): the MLflow run's history is then the whole of results.json's."""
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "train_loss")}
        for record in final.history:
            if record.step not in logged:
                self._log_metrics(round_metrics(record.to_json()), record.step)


# ----------------------------------------------------------------------------- W&B


class WandbLogger(Callback):
    """One Weights & Biases run per medbench run, in `project`; a resumed run continues
    it. Offline with WANDB_MODE=offline (then `wandb sync` uploads it later)."""

    def __init__(
        self,
        project: str = DEFAULT_EXPERIMENT,
        *,
        tags: Mapping[str, str] | None = None,
        name_root: str | Path | None = None,
    ) -> None:
        self.project = project
        self.tags = dict(tags or {})
        self.name_root = name_root
        self.run: Any = None
        self.run_dir: Path | None = None

    def on_train_start(self, run: RunInfo) -> None:
        import wandb  # imported only when a run logs to W&B

        self.run_dir = run.run_dir
        run_id = _read_state(run.run_dir).get("wandb", {}).get(self.project)
        self.run = wandb.init(
            project=self.project,
            name=run_name(run.run_dir, self.name_root),
            id=run_id,
            resume="allow",
            dir=str(run.run_dir),
            config={**run_params(run), **{f"tag.{k}": v for k, v in self.tags.items()}},
            reinit="finish_previous",  # a grid runs its cells one after another
        )
        if run_id is None:
            _remember(run.run_dir, "wandb", self.project, self.run.id)

    def on_round_end(self, event: RoundEnd) -> None:
        self.run.log(round_metrics(event.record), step=int(event.record["step"]))

    def on_train_end(self, results: RunResults) -> None:
        import wandb

        assert self.run_dir is not None
        final = _finished(results, self.run_dir)
        self.run.summary.update(final_metrics(final))
        artifact = wandb.Artifact(f"run-{self.run.id}", type="model")
        for path in artifact_files(self.run_dir):
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)
        self.run.finish()

    def stop(self, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)
