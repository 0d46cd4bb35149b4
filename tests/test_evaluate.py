"""`medbench evaluate`: a finished run re-evaluated on the data it was trained on."""

from __future__ import annotations

import pytest

from medbench.cli import main
from medbench.training.evaluation import evaluate_run


@pytest.fixture
def run_dir(tiny_runs):
    """A one-epoch run trained from a data folder (run_dir.parent / "data") that is not the
    default one."""
    return tiny_runs.runs[0]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::medbench.errors.MedbenchWarning")
def test_a_run_is_evaluated_on_the_data_folder_it_recorded(run_dir):
    # The default data folder ($MEDBENCH_DATA_DIR, a fresh one per test) is empty and the
    # network is closed: reading the data from anywhere but the recorded folder fails.
    out = evaluate_run(run_dir, device="cpu", progress=False)
    assert out["data_source"] == "recorded"
    assert out["dataset"]["file"] == str(run_dir.parent / "data" / "breastmnist.npz")
    assert out["test"]["n"] == 32  # the recorded folder's test split


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
    expected = run_dir.parent / "data" / "breastmnist.npz"
    assert f"data: {expected} (the run's recorded data folder)" in out
