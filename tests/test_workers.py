"""Several worker processes on one machine: each gets its share of the cores, and
`medbench benchmark --workers N` runs one grid with N of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medbench.errors import MedbenchError
from medbench.runs.store import ResultsStore
from medbench.workflows.workers import available_cores, run_workers, threads_per_worker


def test_workers_split_the_cores_and_each_gets_at_least_one_thread():
    assert threads_per_worker(4, cores=16) == 4
    assert threads_per_worker(3, cores=16) == 5
    assert threads_per_worker(4, cores=2) == 1
    assert threads_per_worker(1, cores=7) == 7


def _record_threads(index: int, folder) -> None:
    import torch

    (folder / f"worker{index}.json").write_text(
        json.dumps({"pid": os.getpid(), "threads": torch.get_num_threads()})
    )


@pytest.mark.slow
def test_each_worker_sets_its_torch_threads_before_its_work(tmp_path):
    exits = run_workers(_record_threads, tmp_path, 2, threads=3)
    assert [e.exitcode for e in exits] == [0, 0]
    seen = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in (0, 1)]
    assert [s["threads"] for s in seen] == [3, 3]
    assert len({s["pid"] for s in seen} | {os.getpid()}) == 3


def _fail(index: int, _payload) -> None:
    raise MedbenchError(f"worker {index} could not go on")


@pytest.mark.slow
def test_a_worker_stopped_by_a_user_error_exits_2(tmp_path):
    assert [e.exitcode for e in run_workers(_fail, None, 1)] == [2]


def test_zero_workers_are_refused():
    with pytest.raises(MedbenchError, match="--workers must be at least 1"):
        run_workers(_record_threads, None, 0)


@pytest.mark.slow
def test_benchmark_with_two_workers_runs_the_grid_with_the_cores_split(tmp_path):
    from medbench.data.synthetic import write_synthetic_like

    data = tmp_path / "data"
    write_synthetic_like(data, "breastmnist", 28, n_train=32, n_val=16, n_test=16)
    out = tmp_path / "out"
    argv = [
        sys.executable, "-m", "medbench", "benchmark", "--datasets", "breastmnist",
        "--models", "advanced_cnn", "--seeds", "4", "--epochs", "1", "--batch-size", "16",
        "--device", "cpu", "--data-dir", str(data), "--out", str(out), "--workers", "2",
        "--no-report", "--quiet", "--model-option=width=0.25",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4/4 runs finished, 0 failed (4 trained by this command)" in proc.stdout
    rows = ResultsStore(out, create=False).rows()
    assert all(r["status"] == "finished" and r["attempts"] == 1 for r in rows)
    records = [json.loads(Path(r["results_path"]).read_text()) for r in rows]
    threads = {record["environment"]["threads"] for record in records}
    assert threads == {threads_per_worker(2, available_cores())}
