"""Tracking: each run logged to TensorBoard, MLflow or W&B shows what its run folder holds.

The MLflow tests use a local SQLite store anywhere; one more runs against a tracking
server when $MEDBENCH_TEST_MLFLOW_URI names one (.ci/run starts one on localhost).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from medbench.cli import main
from medbench.data import load_dataset
from medbench.data.synthetic import write_synthetic_like
from medbench.errors import MedbenchError
from medbench.training.callbacks import Callback
from medbench.training.config import TrainConfig
from medbench.training.engine import train
from medbench.training.tracking import (
    STATE_FILE,
    MLflowLogger,
    TensorBoardLogger,
    make_loggers,
    parse_log_names,
)

SERVER_ENV = "MEDBENCH_TEST_MLFLOW_URI"
TINY = {"width": 0.25}
# wandb is left out: timm (timm.utils.summary) imports it whenever it is installed.
TRACKER_MODULES = ("tensorboard", "mlflow", "torch.utils.tensorboard")


@pytest.fixture
def breast(tmp_path):
    write_synthetic_like(tmp_path / "data", "breastmnist", 28, n_train=64, n_val=32, n_test=32)
    return load_dataset("breastmnist", 28, tmp_path / "data", progress=False)


def config(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(
        dataset="breastmnist",
        model="efficientnet",
        epochs=2,
        batch_size=32,
        model_options=dict(TINY),
        run_dir=str(tmp_path / name),
        data_dir=str(tmp_path / "data"),
    )
    base.update(kw)
    return TrainConfig(**base)


def results_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def split_numbers(results: dict) -> dict[str, float]:
    """Every number of results.json's val and test metrics, keyed split/name."""
    return {
        f"{split}/{key}": value
        for split in ("val", "test")
        for key, value in results["metrics"][split].items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class Interrupt(Exception):
    pass


class InterruptAfterFirstRound(Callback):
    def on_round_end(self, event):
        raise Interrupt


# ----------------------------------------------------------------------------- choosing


def test_log_names_are_a_comma_separated_list_of_known_trackers():
    assert parse_log_names("tensorboard, MLflow,tensorboard") == ("tensorboard", "mlflow")
    assert parse_log_names(None) == () and parse_log_names("") == ()
    with pytest.raises(MedbenchError, match="unknown tracker 'comet'.*tensorboard, mlflow, wandb"):
        parse_log_names("mlflow,comet")


def test_an_unknown_tracker_is_refused_in_one_line_before_anything_trains(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["train", "--dataset", "breastmnist", "--model", "efficientnet"]
    code = main([*argv, "--epochs", "1", "--run-dir", str(run_dir), "--log", "comet"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown tracker 'comet'" in err and "Traceback" not in err
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- no import cost


def loaded_tracker_modules(tmp_path, *log_flags: str) -> list[str]:
    """The tracker packages loaded in a fresh interpreter after one CLI training run."""
    write_synthetic_like(tmp_path / "data", "breastmnist", 28, n_train=64, n_val=32, n_test=32)
    argv = [
        "train", "--dataset", "breastmnist", "--model", "efficientnet", "--model-option",
        "width=0.25", "--epochs", "1", "--data-dir", str(tmp_path / "data"), "--quiet",
        "--run-dir", str(tmp_path / f"run{len(log_flags)}"), *log_flags,
    ]  # fmt: skip
    code = (
        "import json, sys\n"
        "from medbench.cli import main\n"
        f"assert main({argv!r}) == 0\n"
        f"print(json.dumps([m for m in {TRACKER_MODULES!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_without_log_no_tracker_package_is_imported(tmp_path):
    assert loaded_tracker_modules(tmp_path) == []
    # ...and the check sees one when it is used:
    assert "tensorboard" in loaded_tracker_modules(tmp_path, "--log", "tensorboard")


# ----------------------------------------------------------------------------- TensorBoard


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


@pytest.mark.slow
def test_tensorboard_scalars_read_back_equal_the_history_and_the_final_metrics(tmp_path, breast):
    pytest.importorskip("tensorboard")
    train(config(tmp_path), data=breast, progress=False, callbacks=[TensorBoardLogger()])
    run_dir = tmp_path / "run"
    results = results_json(run_dir)
    scalars = read_scalars(run_dir / "tensorboard")

    history = results["history"]
    assert len(history) == 2
    for key in ("train_loss", "val_loss", "val_acc", "val_auc", "lr"):
        expected = [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in history]
        assert scalars[key] == expected, key  # event files keep float32
    last_step = results["steps_trained"]
    for key, value in split_numbers(results).items():
        assert scalars[key] == [(last_step, pytest.approx(value, rel=1e-6))], key


@pytest.mark.slow
def test_a_grid_logs_each_run_under_the_log_dir_by_its_path_in_the_grid(tmp_path):
    pytest.importorskip("tensorboard")
    write_synthetic_like(tmp_path / "data", "breastmnist", 28, n_train=64, n_val=32, n_test=32)
    code = main(
        [
            "benchmark", "--datasets", "breastmnist", "--models", "efficientnet", "--seeds", "1",
            "--epochs", "1", "--model-option", "width=0.25", "--data-dir", str(tmp_path / "data"),
            "--out", str(tmp_path / "grid"), "--no-report", "--quiet",
            "--log", "tensorboard", "--log-dir", str(tmp_path / "tb"),
        ]
    )  # fmt: skip
    assert code == 0
    (run_dir,) = (tmp_path / "grid" / "runs" / "breastmnist-28" / "efficientnet").iterdir()
    logged = tmp_path / "tb" / "breastmnist-28" / "efficientnet" / run_dir.name
    assert read_scalars(logged)["test/acc"][0][1] == pytest.approx(
        results_json(run_dir)["metrics"]["test"]["acc"], rel=1e-6
    )
    assert not (run_dir / "tensorboard").exists()


@pytest.mark.slow
def test_each_tuning_trial_logs_into_its_own_folder(tmp_path):
    pytest.importorskip("tensorboard")
    write_synthetic_like(tmp_path / "data", "breastmnist", 28, n_train=64, n_val=32, n_test=32)
    code = main(
        [
            "tune", "--dataset", "breastmnist", "--model", "efficientnet", "--trials", "2",
            "--max-epochs", "1", "--pruner", "none", "--model-option", "width=0.25",
            "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "tune"), "--quiet",
            "--log", "tensorboard",
        ]
    )  # fmt: skip
    assert code == 0
    for trial in ("trial-0000", "trial-0001"):
        run_dir = tmp_path / "tune" / "trials" / trial
        scalars = read_scalars(run_dir / "tensorboard")
        history = results_json(run_dir)["history"]
        assert [s for s, _ in scalars["val_auc"]] == [r["step"] for r in history]


# ----------------------------------------------------------------------------- MLflow


def mlflow_runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def assert_mlflow_run_is_the_run_folder(uri: str, run, run_dir: Path) -> None:
    """The MLflow run's final metrics, history, params and files are the run folder's."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    results = results_json(run_dir)
    final = split_numbers(results)
    assert {k: run.data.metrics[k] for k in final} == final  # exactly, not approximately
    for key in ("train_loss", "val_auc", "lr"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted((m.step, m.value) for m in history) == [
            (r["step"], r[key]) for r in results["history"]
        ], key
    assert run.data.params["lr"] == str(results["config"]["lr"])
    assert run.data.params["model_options.width"] == "0.25"
    assert run.data.params["dataset"] == "breastmnist" and "medbench_version" in run.data.params
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "MODEL_CARD.md", "model.pt"} <= files
    assert json.loads((run_dir / STATE_FILE).read_text())["mlflow"] == {uri: run.info.run_id}


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory) -> str:
    """One SQLite tracking store for this module's tests (its tables take seconds to make)."""
    pytest.importorskip("mlflow")
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.mark.slow
def test_a_trained_run_becomes_one_mlflow_run_whose_metrics_equal_results_json(
    tmp_path, mlflow_db, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the store's artifacts go to ./mlruns
    write_synthetic_like(tmp_path / "data", "breastmnist", 28, n_train=64, n_val=32, n_test=32)
    experiment = f"train-{uuid.uuid4().hex[:8]}"
    code = main(
        [
            "train", "--dataset", "breastmnist", "--model", "efficientnet", "--epochs", "2",
            "--model-option", "width=0.25", "--data-dir", str(tmp_path / "data"),
            "--run-dir", str(tmp_path / "run"), "--quiet",
            "--log", "mlflow", "--mlflow-uri", mlflow_db, "--log-experiment", experiment,
        ]
    )  # fmt: skip
    assert code == 0
    (run,) = mlflow_runs(mlflow_db, experiment)
    assert_mlflow_run_is_the_run_folder(mlflow_db, run, tmp_path / "run")


@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run(tmp_path, breast, mlflow_db, monkeypatch):
    monkeypatch.chdir(tmp_path)
    experiment = f"resume-{uuid.uuid4().hex[:8]}"

    def loggers():
        return make_loggers("mlflow", mlflow_uri=mlflow_db, experiment=experiment)

    with pytest.raises(Interrupt):
        callbacks = [*loggers(), InterruptAfterFirstRound()]
        train(
            config(tmp_path, keep_checkpoint=True), data=breast, progress=False, callbacks=callbacks
        )
    (started,) = mlflow_runs(mlflow_db, experiment)
    assert started.info.status == "RUNNING"

    train(config(tmp_path), data=breast, progress=False, resume=True, callbacks=loggers())
    (run,) = mlflow_runs(mlflow_db, experiment)
    assert run.info.run_id == started.info.run_id
    assert_mlflow_run_is_the_run_folder(mlflow_db, run, tmp_path / "run")


@pytest.mark.slow
def test_an_mlflow_store_that_cannot_be_opened_is_one_line_before_training(tmp_path, breast):
    pytest.importorskip("mlflow")
    (tmp_path / "a-file").write_text("not a folder")
    bad = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    with pytest.raises(MedbenchError, match="MLflow at sqlite:///.*--mlflow-uri"):
        train(config(tmp_path), data=breast, progress=False, callbacks=[MLflowLogger(bad)])
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
def test_a_run_logged_to_an_mlflow_server_has_the_metrics_of_results_json(tmp_path, breast):
    uri = os.environ.get(SERVER_ENV)
    if not uri:
        pytest.skip(f"no MLflow tracking server: set ${SERVER_ENV} (.ci/run starts one)")
    pytest.importorskip("mlflow")
    experiment = f"server-{uuid.uuid4().hex[:8]}"
    loggers = make_loggers("mlflow", mlflow_uri=uri, experiment=experiment)
    train(config(tmp_path), data=breast, progress=False, callbacks=loggers)
    (run,) = mlflow_runs(uri, experiment)
    assert_mlflow_run_is_the_run_folder(uri, run, tmp_path / "run")


# ----------------------------------------------------------------------------- W&B


def wandb_offline_summary(path: Path) -> dict:
    """The summary an offline W&B run file holds: its records, in LevelDB's log format
    (32 KiB blocks of chunks with 7-byte headers) after a 7-byte file header, are
    protobuf `Record`s (wandb 0.31 ships no Python reader of its own)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, chunks, summary = path.read_bytes(), 7, b"", {}
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or a record's last chunk
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            if record.WhichOneof("record_type") == "summary":
                summary.update({u.key: json.loads(u.value_json) for u in record.summary.update})
    return summary


@pytest.mark.slow
def test_an_offline_wandb_run_summarises_the_final_metrics(tmp_path, breast, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(config(tmp_path, epochs=1), data=breast, progress=False, callbacks=make_loggers("wandb"))
    run_dir = tmp_path / "run"
    run_id = json.loads((run_dir / STATE_FILE).read_text())["wandb"]["medbench"]
    (run_file,) = run_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    summary = wandb_offline_summary(run_file)
    final = split_numbers(results_json(run_dir))
    assert {k: summary[k] for k in final} == final
