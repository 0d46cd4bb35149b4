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
from medbench.runs.results import ModelInfo, RunResults, Timing
from medbench.runs.store import (
    _COLUMNS,
    SCHEMA_VERSION,
    Owner,
    ResultsStore,
    describe_length,
    process_alive,
)


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


@pytest.mark.slow
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


@pytest.mark.slow
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
        assert conn.execute("SELECT value FROM meta").fetchall() == [(str(SCHEMA_VERSION),)]
        conn.close()


EPOCHS_2 = {"epochs": 2, "time_budget_seconds": None, "total_time_budget_seconds": None}
TOTAL_6M = {"epochs": None, "time_budget_seconds": None, "total_time_budget_seconds": 360.0}


def test_a_started_grid_refuses_another_run_length_naming_the_folder_and_the_way_out(tmp_path):
    store = ResultsStore(tmp_path)
    store.register_grid(_cells(tmp_path), TOTAL_6M)
    store.claim([_cells(tmp_path)[0]["key"]])
    with pytest.raises(MedbenchError) as refused:
        store.register_grid(_cells(tmp_path), {**TOTAL_6M, "total_time_budget_seconds": 3600.0})
    message = str(refused.value)
    assert str(tmp_path) in message and "--total-time-budget 6m" in message
    assert "new --out" in message and "--total-time-budget 1h" in message
    assert store.grid_length() == TOTAL_6M


def test_a_grid_that_never_started_is_replaced_by_one_of_another_length(tmp_path):
    store = ResultsStore(tmp_path)
    store.register_grid(_cells(tmp_path, 3), TOTAL_6M)
    store.register_grid(_cells(tmp_path, 1), EPOCHS_2)
    assert store.grid_length() == EPOCHS_2 and len(store.rows()) == 1


def test_runs_cannot_join_a_started_grid_that_shares_a_total_budget(tmp_path):
    store = ResultsStore(tmp_path)
    store.register_grid(_cells(tmp_path, 2), TOTAL_6M)
    store.claim([_cells(tmp_path)[0]["key"]])
    store.register_grid(_cells(tmp_path, 2), TOTAL_6M)  # the same grid again: fine
    with pytest.raises(MedbenchError, match="change every run's share"):
        store.register_grid(_cells(tmp_path, 3), TOTAL_6M)


def test_check_grid_raises_what_register_would_and_writes_nothing(tmp_path):
    store = ResultsStore(tmp_path)
    store.register_grid(_cells(tmp_path), EPOCHS_2)
    store.claim([_cells(tmp_path)[0]["key"]])
    with pytest.raises(MedbenchError, match="--epochs 2"):
        store.check_grid(_cells(tmp_path), TOTAL_6M)
    assert store.grid_length() == EPOCHS_2


def test_seconds_spent_add_up_over_attempts_and_the_current_one(tmp_path):
    store, key = _store_with_one_cell(tmp_path)
    me = Owner.current()
    store.claim([key], me)
    store.spend(key, 40.0)  # the first attempt ended after 40 s
    store.release(key, me)
    store.claim([key], me)
    assert store.heartbeat(key, me, attempt_seconds=15.0)  # the second is 15 s in
    assert store.seconds_spent() == 55.0
    store.claim([key], Owner(socket.gethostname(), _dead_pid()))  # not reclaimable: live owner
    assert store.seconds_spent() == 55.0


def test_a_store_of_schema_1_is_upgraded_when_opened(tmp_path):
    conn = sqlite3.connect(tmp_path / "results.sqlite")
    old_columns = _COLUMNS.replace(
        ",\n    seconds_spent REAL NOT NULL DEFAULT 0,\n    attempt_seconds REAL NOT NULL DEFAULT 0",
        "",
    )
    assert "seconds_spent" not in old_columns
    conn.execute(f"CREATE TABLE cells ({old_columns})")
    conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.commit()
    conn.close()
    store, key = _store_with_one_cell(tmp_path)
    assert store.seconds_spent() == 0.0 and store.grid_length() is None
    assert store.heartbeat(key) is False


def test_a_length_reads_as_the_flags_that_give_it():
    assert describe_length(TOTAL_6M) == "--total-time-budget 6m"
    assert describe_length({**EPOCHS_2, "time_budget_seconds": 90.0}) == (
        "--epochs 2 --time-budget 90s"
    )
    assert "recipe" in describe_length({})
