"""The scripts in benchmarks/: at most eight, each answering --help, and their plumbing.

The scripts measure for minutes to hours, so only their plumbing is run here: --help of
each script and subcommand, the shared --csv writer, load_memory.py on a 60-image set,
and sweep.py on a 64-image stand-in of BreastMNIST for one epoch.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from medbench.data.synthetic import write_synthetic_like
from support.processes import run_forked

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
META = ["date", "machine", "torch", "command"]
# Reusable tools, one per measurement family (training throughput against the official
# pipeline, model speed, load memory, grid timing, the sweep, results tables, the
# reference-package comparison, the GPU pass); a new measurement becomes an option or a
# subcommand of one of them. Shared code lives in files named _*.py, which are not scripts.
MAX_SCRIPTS = 8


def _scripts() -> list[Path]:
    """The scripts in benchmarks/: .py and .sh files whose names do not start with `_`."""
    return sorted(
        p
        for p in BENCHMARKS.iterdir()
        if p.is_file() and p.suffix in (".py", ".sh") and not p.name.startswith("_")
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


@functools.cache
def _import_once(path: Path) -> None:
    """Import what a script imports into this process (its main does not run), so that each
    forked --help of it starts with torch and medbench loaded."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        runpy.run_path(str(path), run_name=f"_imports_of_{path.stem}")
    finally:
        sys.path.remove(str(BENCHMARKS))


def _help(script: str, *subcommand: str) -> subprocess.CompletedProcess:
    """`script [subcommand] --help`; a Python script runs as __main__ in a fork of this
    process (as `python script` would, without importing torch again)."""
    path = BENCHMARKS / script
    if script.endswith(".sh"):
        return _run(["bash", str(path), *subcommand, "--help"], cwd=BENCHMARKS.parent, timeout=60)
    _import_once(path)
    argv = [str(path), *subcommand, "--help"]
    return run_forked(
        f"import runpy\nsys.path.insert(0, {str(BENCHMARKS)!r})\nsys.argv = {argv!r}\n"
        f"runpy.run_path({str(path)!r}, run_name='__main__')",
        timeout=60,
    )


def _subcommands(help_text: str) -> list[str]:
    """The subcommands a script's --help lists under SUBCOMMAND (_common.tool_parser's)."""
    listing = help_text.partition("\n  SUBCOMMAND\n")[2].partition("\n\n")[0]
    return re.findall(r"^ {4}(\S+)", listing, re.M)


def test_benchmarks_holds_at_most_8_scripts():
    names = [p.name for p in _scripts()]
    assert len(names) <= MAX_SCRIPTS, f"{len(names)} scripts in benchmarks/: {names}"
    assert "sweep.py" in names and "gpu_check.sh" in names


@pytest.mark.slow
@pytest.mark.parametrize("script", [p.name for p in _scripts()])
def test_every_script_and_subcommand_answers_help(script):
    done = _help(script)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower(), done.stdout[:500]
    names = _subcommands(done.stdout)
    assert names or "SUBCOMMAND" not in done.stdout, done.stdout[:2000]
    for name in names:
        sub = _help(script, name)
        assert sub.returncode == 0, (name, sub.stderr[-2000:])
        assert f"usage: {script} {name}" in sub.stdout, (name, sub.stdout[:500])


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


@pytest.mark.slow
def test_load_memory_measures_a_first_and_a_later_load_of_a_small_2d_set(tmp_path):
    work, results = tmp_path / "work", tmp_path / "memory.csv"
    command = [sys.executable, str(BENCHMARKS / "load_memory.py"), "2d", "--n", "60",
               "--size", "28", "--batch-size", "16", "--work-dir", str(work),
               "--csv", str(results), "--machine", "test-box"]  # fmt: skip
    done = _run(command, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    with results.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["load"] for r in rows] == ["first", "later"]
    for row in rows:
        assert row["images"] == "60" and row["machine"] == "test-box"
        assert float(row["peak_rss_gb"]) > 0 and float(row["peak_over_array"]) > 1
        assert row["command"].startswith("python benchmarks/load_memory.py 2d --n 60")
    assert not work.exists()  # the generated files go without --keep


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
