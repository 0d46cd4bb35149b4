"""`medbench evaluate`: a finished run re-evaluated on the data it was trained on."""

from __future__ import annotations

import warnings

import pytest

from medbench.cli import main
from medbench.training.config import TrainConfig
from medbench.training.engine import train
from medbench.training.evaluation import evaluate_run

TINY_MODEL = {"width": 0.25, "depths": [1, 1, 1, 1], "attention": False}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A one-epoch run trained from a data folder that is not the default one."""
    from medbench.data.synthetic import write_synthetic_like

    root = tmp_path_factory.mktemp("evaluate")
    write_synthetic_like(root / "own-data", "breastmnist", 28, n_train=32, n_val=16, n_test=16)
    config = TrainConfig(
        dataset="breastmnist", model="advanced_cnn", model_options=TINY_MODEL, epochs=1,
        batch_size=16, device="cpu", data_dir=str(root / "own-data"), run_dir=str(root / "run"),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic file is not the official one
        train(config, progress=False, measure=False)
    return root / "run"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::medbench.errors.MedbenchWarning")
def test_a_run_is_evaluated_on_the_data_folder_it_recorded(run_dir):
    # The default data folder ($MEDBENCH_DATA_DIR, a fresh one per test) is empty and the
    # network is closed: reading the data from anywhere but the recorded folder fails.
    out = evaluate_run(run_dir, device="cpu", progress=False)
    assert out["data_source"] == "recorded"
    assert out["dataset"]["file"] == str(run_dir.parent / "own-data" / "breastmnist.npz")
    assert out["test"]["n"] == 16


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::medbench.errors.MedbenchWarning")
def test_a_data_dir_given_wins_over_the_recorded_one(run_dir, tmp_path):
    from medbench.data.synthetic import write_synthetic_like

    write_synthetic_like(tmp_path / "other", "breastmnist", 28, n_train=32, n_val=16, n_test=8)
    out = evaluate_run(run_dir, data_dir=str(tmp_path / "other"), device="cpu", progress=False)
    assert out["data_source"] == "argument" and out["test"]["n"] == 8


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::medbench.errors.MedbenchWarning")
def test_evaluate_command_says_which_data_folder_it_used(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    expected = run_dir.parent / "own-data" / "breastmnist.npz"
    assert f"data: {expected} (the run's recorded data folder)" in out
