"""The scripts in benchmarks/: few, each answering --help, and sweep.py's results file.

The scripts measure for minutes to hours, so only their plumbing is run here: --help, the
shared --csv writer, and sweep.py on a 64-image stand-in of BreastMNIST for one epoch.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medbench.data.synthetic import write_synthetic_like

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
META = ["date", "machine", "torch", "command"]
# One script per documented measurement family (speed, memory, grid timing, the sweep, the
# published-figure tables, the reference-package comparison), sharing _common.py.
MAX_SCRIPTS = 12


def _scripts() -> list[Path]:
    return sorted(
        p
        for p in BENCHMARKS.iterdir()
        if p.is_file() and p.name != "_common.py" and not p.name.startswith(".")
    )


def _common():
    spec = importlib.util.spec_from_file_location("benchmarks_common", BENCHMARKS / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_benchmarks_holds_at_most_12_scripts():
    names = [p.name for p in _scripts()]
    assert len(names) <= MAX_SCRIPTS, f"{len(names)} scripts in benchmarks/: {names}"
    assert "sweep.py" in names


@pytest.mark.slow
@pytest.mark.parametrize("script", [p.name for p in _scripts()])
def test_every_script_answers_help(script):
    runner = ["bash"] if script.endswith(".sh") else [sys.executable]
    done = _run([*runner, str(BENCHMARKS / script), "--help"], cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower() or script.endswith(".sh"), done.stdout[:500]
    assert done.stdout.strip()


def test_csv_rows_carry_their_provenance_and_append_under_the_same_header(tmp_path):
    common = _common()
    path = tmp_path / "results.csv"
    common.append_csv(path, [{"model": "a", "value": "1.0"}], machine="box")
    common.append_csv(path, [{"model": "b", "value": "2.0"}])
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["a", "b"]
    assert list(rows[0]) == ["model", "value", *META]
    assert rows[0]["machine"] == "box" and rows[1]["machine"] == common.machine_slug("cpu")
    assert all(r["date"] and r["torch"] and r["command"].startswith("python ") for r in rows)
    with pytest.raises(SystemExit, match="columns"):
        common.append_csv(path, [{"other": "x"}])
    assert len(path.read_text().splitlines()) == 3  # the refused rows left the file as it was


def test_machine_slugs_name_the_chip_without_its_marketing_words():
    slug = _common()._slug
    assert slug("Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz") == "xeon-platinum-8480"
    assert slug("AMD EPYC 7B13 64-Core Processor") == "epyc-7b13"
    assert slug("NVIDIA H200") == "h200"


def _check_sweep_row(row: dict[str, str]) -> None:
    assert set(META) <= set(row) and row["machine"] == "test-box"
    assert row["command"].startswith("python benchmarks/sweep.py")
    assert (row["dataset"], row["model"], row["runs"], row["seeds"]) == (
        "breastmnist", "advanced_cnn", "1", "0"
    )  # fmt: skip
    assert float(row["epochs"]) == 1
    for column in ("test_auc_mean", "final_auc_mean", "seed_aucs", "final_seed_aucs"):
        assert 0.0 <= float(row[column]) <= 1.0, (column, row[column])
    assert 0.0 <= float(row["test_acc_mean"]) <= 1.0


@pytest.mark.slow
def test_sweep_writes_one_csv_row_per_recipe_with_valid_aucs(tmp_path):
    data = tmp_path / "data"
    write_synthetic_like(data, "breastmnist", n_train=64, n_val=16, n_test=16)
    results = tmp_path / "sweep.csv"
    command = [sys.executable, str(BENCHMARKS / "sweep.py"), "--data-dir", str(data),
               "--datasets", "breastmnist", "--models", "advanced_cnn", "--epochs", "1",
               "--seeds", "1", "--recipe", "default={}", "--recipe", 'noaug={"augment": "none"}',
               "--device", "cpu", "--out", str(tmp_path / "runs"), "--csv", str(results),
               "--machine", "test-box"]  # fmt: skip
    done = _run(command, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| breastmnist | advanced_cnn | noaug |" in done.stdout

    with results.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["recipe"] for r in rows] == ["default", "noaug"]
    for row in rows:
        _check_sweep_row(row)
    assert rows[1]["options"] == '{"augment": "none"}'

    again = _run(command, cwd=BENCHMARKS.parent)  # finished runs are reused, rows appended
    assert again.returncode == 0, again.stderr[-3000:]
    with results.open(newline="") as f:
        rerun = list(csv.DictReader(f))
    assert [r["seed_aucs"] for r in rerun] == [r["seed_aucs"] for r in rows] * 2
