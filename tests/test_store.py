"""The SQLite results store: claims, reclaiming abandoned cells, recording results."""

from __future__ import annotations

import multiprocessing as mp
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from medbench.errors import MedbenchError
from medbench.results import ModelInfo, RunResults, Timing
from medbench.store import Owner, ResultsStore, process_alive


def _cells(tmp_path, n=3):
    return [
        {
            "key": f"d|28|m|{i}|h",
            "dataset": "d",
            "size": 28,
            "model": "m",
            "seed": i,
            "config_hash": "h",
            "config": {"seed": i},
            "run_dir": tmp_path / "runs" / str(i),
        }
        for i in range(n)
    ]


def _store_with_one_cell(tmp_path) -> tuple[ResultsStore, str]:
    """A new store in `tmp_path` holding one pending cell, and that cell's key."""
    store = ResultsStore(tmp_path)
    cells = _cells(tmp_path, 1)
    store.add_cells(cells)
    return store, cells[0]["key"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_store_uses_wal_journal(tmp_path):
    store = ResultsStore(tmp_path)
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_adding_cells_twice_keeps_one_row_each(tmp_path):
    store = ResultsStore(tmp_path)
    assert store.add_cells(_cells(tmp_path)) == 3
    assert store.add_cells(_cells(tmp_path)) == 0
    assert store.counts() == {"pending": 3, "running": 0, "finished": 0, "failed": 0}


def test_each_cell_is_claimed_once_in_key_order(tmp_path):
    store = ResultsStore(tmp_path)
    cells = _cells(tmp_path)
    store.add_cells(cells)
    keys = [c["key"] for c in cells]
    me = Owner.current()
    claimed = [store.claim(keys, me)["key"] for _ in range(3)]
    assert claimed == keys
    assert store.claim(keys, me) is None


def test_cell_of_a_live_owner_is_not_reclaimed(tmp_path):
    store, key = _store_with_one_cell(tmp_path)
    store.claim([key], Owner.current())
    assert store.claim([key], Owner(socket.gethostname(), 1)) is None


def test_cell_of_a_dead_process_on_this_host_is_reclaimed(tmp_path):
    store, key = _store_with_one_cell(tmp_path)
    store.claim([key], Owner(socket.gethostname(), _dead_pid()))
    row = store.claim([key], Owner.current())
    assert row["claimed_pid"] == Owner.current().pid
    assert row["attempts"] == 2


def test_cell_with_stale_heartbeat_on_another_host_is_reclaimed(tmp_path):
    store, key = _store_with_one_cell(tmp_path)
    store.claim([key], Owner("elsewhere", 123))
    assert store.claim([key], Owner.current(), stale_seconds=60) is None
    time.sleep(0.05)
    assert (
        store.claim([key], Owner.current(), stale_seconds=0.01)["claimed_host"]
        == socket.gethostname()
    )


def test_heartbeat_fails_for_a_cell_the_owner_lost(tmp_path):
    store, key = _store_with_one_cell(tmp_path)
    store.claim([key], Owner("elsewhere", 1))
    assert not store.heartbeat(key, Owner.current())
    assert store.heartbeat(key, Owner("elsewhere", 1))


def test_finish_records_metrics_and_paths_relative_to_the_folder(tmp_path):
    store, key = _store_with_one_cell(tmp_path)
    store.claim([key])
    results = RunResults(
        run_dir=str(tmp_path / "runs" / "0"),
        config={"dataset": "d", "size": 28, "model": "m", "seed": 0},
        dataset={},
        model=ModelInfo("m", n_params=1000, flops=10_000_000),
        metrics={"test": {"acc": 0.8, "auc": 0.9}, "val": {"acc": 0.7, "auc": 0.85}},
        timing=Timing(train_seconds=12.0),
        steps=20,
        steps_per_epoch=10,
        rounds_planned=2,
        rounds_completed=2,
        best_round=2,
        flags=["x"],
        efficiency=80.0,
    )
    store.finish(key, results, tmp_path / "runs" / "0" / "results.json")
    row = store.rows()[0]
    assert (row["status"], row["test_acc"], row["val_auc"], row["n_params"], row["flags"]) == (
        "finished",
        0.8,
        0.85,
        1000,
        ["x"],
    )
    assert (row["gflops"], row["train_seconds"], row["collapsed"]) == (0.01, 12.0, True)
    raw = sqlite3.connect(store.path).execute("SELECT results_path FROM cells").fetchone()[0]
    assert raw == "runs/0/results.json"
    assert row["results_path"] == str(tmp_path / "runs" / "0" / "results.json")


def test_failed_cells_go_back_to_pending_only_when_retried(tmp_path):
    store, key = _store_with_one_cell(tmp_path)
    store.claim([key])
    store.fail(key, "RuntimeError: boom")
    store.add_cells(_cells(tmp_path, 1))
    assert store.rows()[0]["status"] == "failed"
    store.add_cells(_cells(tmp_path, 1), retry_failed=True)
    assert store.rows()[0]["status"] == "pending"


def test_released_cell_is_pending_again(tmp_path):
    store, key = _store_with_one_cell(tmp_path)
    store.claim([key])
    store.release(key)
    assert store.counts()["pending"] == 1


def test_opening_a_missing_store_without_create_is_a_user_error(tmp_path):
    with pytest.raises(MedbenchError, match="no results store"):
        ResultsStore(tmp_path / "nothing", create=False)


def test_process_alive_tells_live_from_dead():
    assert process_alive(Owner.current().pid)
    assert not process_alive(_dead_pid())


def _claim_all(folder, keys, queue, barrier):
    store = ResultsStore(folder)
    got = []
    while (row := store.claim(keys)) is not None:
        got.append(row["key"])
    # Stay alive until every worker is done claiming: a cell whose owner has exited is
    # (rightly) reclaimable, which is not what this test is about.
    barrier.wait(timeout=60)
    queue.put(got)


def test_concurrent_processes_never_claim_the_same_cell(tmp_path):
    store = ResultsStore(tmp_path)
    cells = _cells(tmp_path, 40)
    store.add_cells(cells)
    keys = [c["key"] for c in cells]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    barrier = ctx.Barrier(3)
    procs = [
        ctx.Process(target=_claim_all, args=(tmp_path, keys, queue, barrier)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    claimed = [k for _ in procs for k in queue.get(timeout=60)]
    for p in procs:
        p.join(timeout=30)
    assert sorted(claimed) == sorted(keys)


def _open_new_stores(folders, barrier, queue):
    errors = []
    for folder in folders:
        barrier.wait(timeout=60)  # every worker opens the same new store at the same moment
        try:
            ResultsStore(folder)
        except MedbenchError as exc:
            errors.append(str(exc))
    queue.put(errors)


def test_processes_opening_one_new_store_at_once_all_succeed(tmp_path):
    # Racing to switch a new file to WAL made SQLite answer "database is locked" at once,
    # without waiting (CI saw it when two `medbench benchmark` processes started together).
    folders = [tmp_path / f"study{i}" for i in range(60)]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_open_new_stores, args=(folders, barrier, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    errors = [e for _ in procs for e in queue.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
    assert errors == []
    for folder in folders:
        conn = sqlite3.connect(folder / "results.sqlite")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta").fetchall() == [("1",)]
        conn.close()
