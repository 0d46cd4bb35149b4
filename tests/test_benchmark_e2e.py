"""`medbench benchmark` end to end with the real engine on tiny synthetic data: the whole
command, a grid killed with SIGKILL and restarted, and (marked realdata) a short real run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medbench.cli import main
from medbench.runs.store import ResultsStore
from medbench.workflows.ensemble import load_ensemble

pytest.importorskip("medbench.training.engine")
try:
    from medbench.data import load_dataset  # noqa: F401
    from medbench.data.synthetic import write_synthetic_like
except ImportError:  # the data loader is written in parallel; these tests wait for it
    pytest.skip("medbench.data.load_dataset is not available yet", allow_module_level=True)

# Small and quick: quarter-width models, one epoch, CPU.
FAST = [
    "--epochs",
    "1",
    "--device",
    "cpu",
    "--quiet",
    "--model-option",
    "width=0.25",
    "--batch-size",
    "32",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    for name in ("dermamnist", "breastmnist"):
        write_synthetic_like(d, name, 28, n_train=64, n_val=32, n_test=32)
    return d


def _benchmark_args(datasets: str, models: str, seeds: str, data_dir: Path, out: Path) -> list:
    """`medbench benchmark`'s arguments for a grid of small, quick runs."""
    return ["benchmark", "--datasets", datasets, "--models", models, "--seeds", seeds,
            "--data-dir", str(data_dir), "--out", str(out), *FAST]  # fmt: skip


def _table(folder: Path) -> list[tuple]:
    """The per-run numbers of a finished grid (what the report's table is made of)."""
    rows = list(csv.DictReader((folder / "results.csv").open()))
    return sorted(
        (
            r["dataset"],
            r["model"],
            r["seed"],
            r["status"],
            r["test_acc"],
            r["test_auc"],
            r["val_acc"],
        )
        for r in rows
    )


@pytest.mark.slow
def test_benchmark_command_end_to_end_writes_store_report_and_plots(data_dir, tmp_path):
    out = tmp_path / "out"
    argv = _benchmark_args(
        "dermamnist,breastmnist", "advanced_cnn,efficientnet", "2", data_dir, out
    )
    assert main(argv) == 0
    rows = ResultsStore(out).rows()
    assert len(rows) == 8 and all(r["status"] == "finished" for r in rows)
    for name in ("REPORT.md", "report.html", "results.csv", "results.json", "summary.json"):
        assert (out / name).exists()
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert {
        "accuracy_heatmap.png",
        "efficiency.png",
        "curves_breastmnist.png",
        "reliability_dermamnist.png",
        "confusion_breastmnist.png",
    } <= plots
    md = (out / "REPORT.md").read_text()
    assert "not the official one" in md  # the synthetic files' MD5s differ
    assert "| dermamnist | advanced_cnn | this study (n=2) |" in md
    assert "## Ensembles" not in md

    # The same grid again with --ensemble: nothing retrains; one ensemble per dataset joins
    # the report, saved where `medbench predict` can load it.
    mtimes = {r["run_dir"]: (Path(r["run_dir"]) / "model.pt").stat().st_mtime for r in rows}
    assert main([*argv, "--ensemble"]) == 0
    assert mtimes == {d: (Path(d) / "model.pt").stat().st_mtime for d in mtimes}
    _assert_ensembles_saved_and_reported(out, ("dermamnist", "breastmnist"))


def _assert_ensembles_saved_and_reported(out: Path, datasets: tuple[str, ...]) -> None:
    for dataset in datasets:
        folder = out / "ensembles" / f"{dataset}-28-greedy"
        ensemble = load_ensemble(folder, device="cpu")
        assert ensemble.meta["dataset"] == dataset
    md = (out / "REPORT.md").read_text()
    assert "## Ensembles" in md and "| breastmnist | greedy |" in md
    assert "the greedy ensemble of" in md  # a finding computed from the ensemble's numbers
    summary = json.loads((out / "summary.json").read_text())
    assert {e["dataset"]["name"] for e in summary["ensembles"]} == set(datasets)


def _benchmark_cmd(data_dir: Path, out: Path) -> list[str]:
    args = _benchmark_args("breastmnist", "advanced_cnn", "2", data_dir, out)
    return [sys.executable, "-m", "medbench", *args, "--epochs", "2"]


def _interrupted(out: Path) -> bool:
    """A cell mid-training (checkpoint without results) or, failing that, one finished."""
    runs = list((out / "runs").glob("*/*/*")) if (out / "runs").exists() else []
    mid = any((r / "checkpoint.pt").exists() and not (r / "results.json").exists() for r in runs)
    return mid or any((r / "results.json").exists() for r in runs)


@pytest.mark.slow
def test_grid_killed_mid_run_and_restarted_ends_with_the_same_table(data_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_benchmark_cmd(data_dir, reference), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _benchmark_cmd(data_dir, killed),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not _interrupted(killed) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the grid finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ResultsStore(killed).counts()["finished"] < 2

    subprocess.run(_benchmark_cmd(data_dir, killed), check=True, env=env, capture_output=True)
    assert _table(killed) == _table(reference)
    assert all(r["status"] == "finished" for r in ResultsStore(killed).rows())


@pytest.mark.slow
@pytest.mark.realdata
def test_short_real_run_report_matches_the_run_files(shared_medmnist, tmp_path):
    out = tmp_path / "out"
    code = main(
        _benchmark_args("breastmnist,pneumoniamnist", "advanced_cnn", "1", shared_medmnist, out)
    )
    assert code == 0
    runs = json.loads((out / "results.json").read_text())
    assert len(runs) == 2
    md = (out / "REPORT.md").read_text()
    for row in runs:
        results = json.loads(Path(row["results_path"]).read_text())
        test = results["metrics"]["test"]
        assert (row["test_acc"], row["test_auc"]) == (test["acc"], test["auc"])
        runs_table = md.split("\n## Runs\n", 1)[1].splitlines()
        line = next(
            s for s in runs_table if s.startswith(f"| {row['dataset']} | advanced_cnn | 0 |")
        )
        acc_cell, auc_cell = line.split(" | ")[3:5]
        assert acc_cell.startswith(f"{100 * test['acc']:.1f}% [")  # with its 95% interval
        assert auc_cell.startswith(f"{test['auc']:.3f} [")
        low, high = results["metrics"]["test_intervals"]["acc"]
        assert low <= test["acc"] <= high
    # pneumoniamnist's local file has a different training order, so its MD5 differs.
    assert "pneumoniamnist" in next(s for s in md.splitlines() if "not the official one" in s)
