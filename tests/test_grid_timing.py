"""benchmarks/grid_timing.py reads a grid written with the current store and report (the
script itself is not run here: on a real grid it takes an hour to have something to read)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from medbench.workflows.grid_plan import OVERHEAD_SHARE
from support.fake_training import make_fake_train
from support.grids import run_benchmark_with

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "grid_timing.py"


def _grid_timing(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # the script imports its sibling _common
    spec = importlib.util.spec_from_file_location("grid_timing", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_grid_timing_reads_the_runs_and_the_grid_budget_of_a_benchmark_folder(
    tmp_path, monkeypatch
):
    out = tmp_path / "out"
    run_benchmark_with(datasets="breastmnist", models="advanced_cnn,resnet18", seeds=1, out=out,
                  total_time_budget_seconds=600.0, train_fn=make_fake_train(),
                  progress=False)  # fmt: skip
    timing = _grid_timing(monkeypatch)
    rows = timing.run_rows(out)
    assert [r["model"] for r in rows] == ["advanced_cnn", "resnet18"]
    assert [r["budget_seconds"] for r in rows] == [pytest.approx(300.0 * (1 - OVERHEAD_SHARE))] * 2
    budget = timing.grid_budget(out)
    assert budget["described"] == "--total-time-budget 10m"
    assert budget["seconds_spent"] >= 0.0
