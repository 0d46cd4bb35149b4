"""Every error a user can cause is one line on stderr and exit code 2, never a traceback.

The table below runs each command with malformed flags and files; add a case whenever a
new user error is found, so that it stays one line."""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from medbench.cli import main
from medbench.errors import MedbenchError
from medbench.models import build_model
from medbench.training import checkpoint as ckpt
from medbench.training.config import TrainConfig, load_config_file
from support.another_user import as_another_user

FIXTURES = Path(__file__).parent / "fixtures"
TRAIN = ["train", "--dataset", "breastmnist", "--model", "advanced_cnn", "--epochs", "1"]
TUNE = ["tune", "--dataset", "breastmnist", "--model", "advanced_cnn", "--trials", "1"]
SEARCH = ["search", "--dataset", "breastmnist", "--model", "advanced_cnn", "--trials", "1"]

Writer = Callable[[Path], object]


# ----------------------------------------------------------------------------- tiny files


def text(content: str) -> Writer:
    return lambda path: path.write_text(content)


def config(**values: object) -> Writer:
    return text(json.dumps({"dataset": "breastmnist", "model": "advanced_cnn", **values}))


@functools.cache
def _state_dict(model: str, num_classes: int, **options: object) -> dict[str, torch.Tensor]:
    return build_model(model, 1, num_classes, image_size=28, **options).state_dict()


def model_file(model: str = "efficientnet", drop: tuple[str, ...] = (), **overrides) -> Writer:
    """A model.pt as training writes it (breastmnist, 28 px), less `drop`, with `overrides`."""

    def write(path: Path) -> None:
        obj = {
            "format": ckpt.MODEL_FORMAT,
            "format_version": ckpt.FORMAT_VERSION,
            "model": model,
            "model_options": {},
            "in_channels": 1,
            "num_classes": 2,
            "image_size": 28,
            "task": "binary-class",
            "label_names": ["malignant", "normal, benign"],
            "dataset": "breastmnist",
            "normalization": {"mean": 0.5, "std": 0.5},
            "temperature": 1.0,
            "seed": 0,
            **overrides,
        }
        obj.setdefault("state_dict", _state_dict(model, 2))
        torch.save({k: v for k, v in obj.items() if k not in drop}, path)

    return write


def png(path: Path) -> None:
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(path)


def results(mutate: Callable[[dict], object] | None = None) -> Writer:
    """A finished run's results.json (the schema-1 fixture), changed by `mutate`."""

    def write(path: Path) -> None:
        data = copy.deepcopy(json.loads((FIXTURES / "results_v1.json").read_text()))
        if mutate is not None:
            mutate(data)
        path.write_text(json.dumps(data))

    return write


def predictions(path: Path) -> None:
    logits, labels = np.zeros((4, 2), np.float32), np.zeros((4, 1), np.int64)
    np.savez(path, val_logits=logits, val_labels=labels, test_logits=logits,
             test_labels=labels, test_probs=logits, temperature=np.float64(1.0))  # fmt: skip


def symlink_loop(path: Path) -> None:
    path.symlink_to(path.name)


def folder(path: Path) -> None:
    path.mkdir()


def _set(keys: str, value: object) -> Callable[[dict], None]:
    *parents, last = keys.split(".")

    def mutate(data: dict) -> None:
        for key in parents:
            data = data[key]
        data[last] = value

    return mutate


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    argv: list[str]  # "{tmp}" stands for the test's folder
    says: str  # a part of the one error line
    files: dict[str, Writer] = field(default_factory=dict)  # path under {tmp}: its writer
    env: dict[str, str] = field(default_factory=dict)


CASES = {
    # --- data and downloads
    "mirror-local-path": Case(["download", "breastmnist", "--mirror", "{tmp}/files"], "--mirror"),
    "mirror-malformed-url": Case(["download", "breastmnist", "--mirror", "http//x"], "not a mirror URL"),
    "mirror-env-local-path": Case(
        ["download", "breastmnist"], "$MEDBENCH_MIRROR", env={"MEDBENCH_MIRROR": "/srv/files"}
    ),
    "retries-negative": Case(["download", "breastmnist", "--retries", "-1"], "--retries must not be negative"),
    "data-dir-symlink-loop": Case(
        ["download", "breastmnist", "--data-dir", "{tmp}/loop"], "symbolic link loop",
        files={"loop": symlink_loop},
    ),
    "unknown-dataset": Case(["train", "--dataset", "nosuch", "--model", "advanced_cnn"], "unknown dataset"),
    "bad-size": Case([*TRAIN, "--size", "30"], "invalid choice: 30"),
    "download-nothing": Case(["download"], "name at least one dataset"),
    # --- training flags and --config files
    "negative-lr": Case([*TRAIN, "--lr", "-1"], "--lr must be positive"),
    "no-model": Case(["train", "--dataset", "breastmnist"], "say which model"),
    "resume-without-run-dir": Case([*TRAIN, "--resume"], "--run-dir"),
    "seed-too-large": Case([*TRAIN, "--seed", "99999999999999999999"], "--seed must be between 0 and"),
    "seed-negative": Case([*TRAIN, "--seed", "-1"], "--seed must be between 0 and"),
    "config-string-epochs": Case(
        ["train", "--config", "{tmp}/c.json"], "config key epochs must be an integer or null, not 'ten'",
        files={"c.json": config(epochs="ten")},
    ),
    "config-string-lr": Case(
        ["train", "--config", "{tmp}/c.json"], "config key lr must be a number",
        files={"c.json": config(lr="fast")},
    ),
    "config-list-model-options": Case(
        ["train", "--config", "{tmp}/c.json"], "config key model_options must be a JSON object",
        files={"c.json": config(model_options=[1, 2])},
    ),
    "config-number-model": Case(
        ["train", "--config", "{tmp}/c.json"], "config key model must be a string, not 5",
        files={"c.json": config(model=5)},
    ),
    "config-unknown-key": Case(
        ["train", "--config", "{tmp}/c.json"], "unknown keys: speed", files={"c.json": config(speed=1)}
    ),
    "benchmark-config-string-lr": Case(
        ["benchmark", "--datasets", "breastmnist", "--models", "advanced_cnn", "--out", "{tmp}/b",
         "--config", "{tmp}/c.json"], "config key lr must be a number",
        files={"c.json": config(lr="fast")},
    ),
    "tune-config-list-model-options": Case(
        [*TUNE, "--out", "{tmp}/o", "--config", "{tmp}/c.json"], "config key model_options",
        files={"c.json": config(model_options=[1])},
    ),
    "tune-seed-too-large": Case([*TUNE, "--out", "{tmp}/o", "--seed", str(2**32)], "--seed must be"),
    "config-missing": Case(["train", "--config", "{tmp}/none.json"], "does not exist"),
    # --- run folders and their files
    "card-missing-run": Case(["card", "{tmp}/none"], "has no results.json"),
    "card-results-not-an-object": Case(
        ["card", "{tmp}/run"], "not a medbench results file",
        files={"run": folder, "run/results.json": text("[1]"), "run/predictions.npz": predictions},
    ),
    "card-results-metrics-of-wrong-shape": Case(
        ["card", "{tmp}/run"], "'metrics.test' must be an object",
        files={"run": folder, "run/results.json": results(_set("metrics.test", "x")),
               "run/predictions.npz": predictions},
    ),  # fmt: skip
    "ensemble-results-not-an-object": Case(
        ["ensemble", "{tmp}/run"], "not a medbench results file",
        files={"run": folder, "run/results.json": text("[1]"), "run/predictions.npz": predictions},
    ),
    "ensemble-results-without-dataset": Case(
        ["ensemble", "{tmp}/run"], "not a medbench results file",
        files={"run": folder, "run/results.json": text('{"status": "finished"}'),
               "run/predictions.npz": predictions},
    ),  # fmt: skip
    "transfer-reused-results-of-wrong-shape": Case(
        ["transfer", "--pretrain-on", "pneumoniamnist", "--dataset", "breastmnist", "--model",
         "advanced_cnn", "--out", "{tmp}/t"], "'metrics.test' must be an object",
        files={"t": folder, "t/pretrain-0-pneumoniamnist": folder,
               "t/pretrain-0-pneumoniamnist/results.json": results(_set("metrics.test", 5)),
               "t/full-breastmnist": folder, "t/full-breastmnist/results.json": results()},
    ),  # fmt: skip
    "evaluate-missing-run": Case(["evaluate", "{tmp}/none"], "does not exist"),
    "report-missing-folder": Case(["report", "{tmp}/none"], "is not a folder"),
    # --- predict
    "predict-model-without-its-keys": Case(
        ["predict", "{tmp}/model.pt", "{tmp}/a.png"], "without model, model_options",
        files={"model.pt": model_file(drop=("model", "model_options")), "a.png": png},
    ),
    "predict-model-state-dict-mismatch": Case(
        ["predict", "{tmp}/model.pt", "{tmp}/a.png"], "does not match the efficientnet",
        files={"model.pt": model_file(state_dict=_state_dict("efficientnet", 5)), "a.png": png},
    ),
    "predict-csv-is-a-folder": Case(
        ["predict", "{tmp}/model.pt", "{tmp}/a.png", "--csv", "{tmp}"], "is a folder",
        files={"model.pt": model_file(), "a.png": png},
    ),
    "predict-negative-workers": Case(
        ["predict", "{tmp}/model.pt", "{tmp}/a.png", "--workers", "-2"], "--workers must not be negative",
        files={"model.pt": model_file(), "a.png": png},
    ),
    "predict-missing-model": Case(["predict", "{tmp}/none", "{tmp}/a.png"], "does not exist"),
    # --- tune and search
    "tune-zero-trials": Case([*TUNE[:-1], "0", "--out", "{tmp}/o"], "--trials must be at least 1"),
    "tune-out-is-a-file": Case(
        [*TUNE, "--out", "{tmp}/o"], "is a file, not a folder", files={"o": text("x")}
    ),
    "tune-zero-heartbeat": Case([*TUNE, "--out", "{tmp}/o", "--heartbeat", "0"], "--heartbeat must be at least 1"),
    "tune-corrupt-sqlite": Case(
        [*TUNE, "--out", "{tmp}/o"], "is not an SQLite database",
        files={"o": folder, "o/tune.sqlite": text("this is no database " * 10)},
    ),
    "tune-sqlite-storage-in-a-missing-folder": Case(
        [*TUNE, "--out", "{tmp}/o", "--storage", "sqlite:///{tmp}/none/t.sqlite"], "the folder"
    ),
    "search-zero-population": Case([*SEARCH, "--out", "{tmp}/o", "--population", "0"], "--population must be at least 2"),
    "search-unknown-family": Case(["search", "--dataset", "breastmnist", "--model", "nosuch", "--trials", "1"], "no architecture space"),
    "search-without-dataset": Case(["search", "--model", "advanced_cnn", "--trials", "2"], "a search needs --dataset"),
    "export-trial-missing-out": Case(
        ["search", "--export-trial", "0", "--name", "a", "--out", "{tmp}/none"], "no search study in"
    ),
    "export-trial-bogus-storage": Case(
        ["search", "--export-trial", "0", "--name", "a", "--storage", "bogus", "--study", "s"],
        "cannot open study storage bogus",
    ),
    "export-trial-without-name": Case(["search", "--export-trial", "0", "--out", "{tmp}"], "--export-trial needs --name"),
}  # fmt: skip


def _argv(case: Case, tmp: Path) -> list[str]:
    for name, write in case.files.items():
        write(tmp / name)
    return [arg.replace("{tmp}", str(tmp)) for arg in case.argv]


def _assert_one_error_line(code: int, err: str, says: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("medbench: error: "), err
    assert says in err, err


@pytest.mark.parametrize("name", list(CASES))
def test_a_malformed_flag_or_file_is_one_error_line_and_exit_2(name, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    monkeypatch.chdir(tmp_path)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    argv = _argv(case, tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    _assert_one_error_line(code, capsys.readouterr().err, case.says)


# A few cases again in a process of their own: what reaches the terminal is the one line.
IN_A_PROCESS = (
    "mirror-local-path",
    "config-string-lr",
    "predict-model-without-its-keys",
)


@pytest.mark.slow
@pytest.mark.parametrize("name", IN_A_PROCESS)
def test_no_traceback_reaches_the_terminal(name, tmp_path):
    case = CASES[name]
    argv = _argv(case, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "medbench", *argv], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, **case.env}, timeout=120,
    )  # fmt: skip
    _assert_one_error_line(done.returncode, done.stderr, case.says)


# ----------------------------------------------------------------------------- one behaviour each


def test_exporting_from_a_folder_without_a_study_creates_no_database(tmp_path, capsys):
    argv = ["search", "--export-trial", "0", "--name", "a", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "no search study in" in capsys.readouterr().err
    assert not (tmp_path / "search.sqlite").exists()


def test_a_state_dict_mismatch_names_the_options_the_file_was_built_with(tmp_path, capsys):
    model_file("advanced_cnn", model_options={"width": 0.5},
               state_dict=_state_dict("advanced_cnn", 2))(tmp_path / "model.pt")  # fmt: skip
    png(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "model.pt"), str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "advanced_cnn (width=0.5)" in err, err


def _others_can_read_medbench() -> bool:
    """Whether a user other than this one can reach the installed medbench (the forked
    child imports the command's lazily imported parts from there)."""
    import stat

    import medbench

    return all(p.stat().st_mode & stat.S_IXOTH for p in Path(medbench.__file__).resolve().parents)


@pytest.mark.skipif(
    os.geteuid() == 0 and not _others_can_read_medbench(),
    reason="running as root with medbench installed where another user cannot read it",
)
def test_an_unreadable_model_file_is_called_unreadable_not_corrupt():
    import medbench.cli.commands.predict  # noqa: F401 - imported here: the other user may not

    root = Path(tempfile.mkdtemp(prefix="medbench-unreadable-"))  # one any user can reach
    try:
        root.chmod(0o755)
        path = root / "model.pt"
        model_file()(path)
        path.chmod(0)
        png(root / "a.png")
        answer = as_another_user(lambda: _stderr_of(["predict", str(path), str(root / "a.png")]))
    finally:
        shutil.rmtree(root)
    code, err = answer.split(" ", 1)
    assert code == "2", answer
    assert err.count("\n") == 1 and "permission denied" in err and "corrupt" not in err, err


def _stderr_of(argv: list[str]) -> str:
    """'<exit code> <stderr>' of `medbench argv`, run in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return f"{code} {err.getvalue()}"


def test_a_config_given_in_python_has_its_types_checked_too():
    with pytest.raises(MedbenchError, match="config key epochs must be an integer or null"):
        TrainConfig(dataset="breastmnist", model="advanced_cnn", epochs="ten").validate()


def test_a_whole_number_is_a_valid_learning_rate_and_null_a_valid_optional():
    config = TrainConfig.from_dict(
        {"dataset": "breastmnist", "model": "advanced_cnn", "lr": 1, "epochs": None}
    ).validate()
    assert config.lr == 1 and config.epochs is None


def test_a_boolean_is_not_an_epoch_count():
    with pytest.raises(MedbenchError, match="epochs must be an integer"):
        TrainConfig.from_dict({"dataset": "breastmnist", "model": "advanced_cnn", "epochs": True})


def test_the_largest_seed_numpy_takes_is_accepted():
    TrainConfig(dataset="breastmnist", model="advanced_cnn", seed=2**32 - 1).validate()


def test_a_config_file_error_names_the_file(tmp_path):
    path = tmp_path / "c.json"
    config(lr="fast")(path)
    with pytest.raises(MedbenchError, match=r"lr must be a number.*c\.json"):
        load_config_file(path)


@pytest.mark.slow
def test_exporting_from_a_folder_with_a_study_still_saves_the_architecture(tmp_path, capsys):
    study = optuna.create_study(
        study_name="s", storage=f"sqlite:///{tmp_path / 'search.sqlite'}",
        directions=["maximize", "minimize"],
    )  # fmt: skip
    study.set_user_attr("model", "advanced_cnn")
    trial = study.ask()
    trial.set_user_attr("model_options", {"width": 0.5})
    study.tell(trial, [0.9, 1000.0])
    argv = ["search", "--export-trial", "0", "--name", "a", "--out", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "architectures" / "a.json").read_text())
    assert saved == {"model": "advanced_cnn", "model_options": {"width": 0.5}}
