"""The results store on SQLite and on PostgreSQL: the same claims, heartbeats and reclaims,
a grid shared by worker processes, and a tune study shared through PostgreSQL.

The PostgreSQL cases need a server: they read its URL from $MEDBENCH_TEST_POSTGRES_URL
(an SQLAlchemy URL, e.g. postgresql+psycopg://user:password@127.0.0.1:5432/db; .ci/run
starts one) and are skipped when it is unset. Each test works in a fresh schema of that
database, dropped afterwards, so reruns start clean.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from medbench.errors import MedbenchWarning
from medbench.runs.store import LOCATION_NAME, Owner, ResultsStore, public_url

POSTGRES_ENV = "MEDBENCH_TEST_POSTGRES_URL"
TINY_MODEL = {"width": 0.25, "depths": [1, 1, 1, 1], "attention": False}


def _fresh_schema_url(base: str):
    """A URL whose tables land in a new schema of `base`'s database; drops it after."""
    import sqlalchemy

    schema = f"medbench_test_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.fixture
def postgres_url():
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"no PostgreSQL server: set {POSTGRES_ENV} to an SQLAlchemy URL")
    yield from _fresh_schema_url(base)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request):
    """None for the folder's own SQLite file, else a fresh PostgreSQL schema's URL."""
    if request.param == "sqlite":
        yield None
    else:
        yield request.getfixturevalue("postgres_url")


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


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- the claim semantics, on both databases ------------------------------------------------


def test_each_cell_is_claimed_once_then_none_is_left(tmp_path, url):
    store = ResultsStore(tmp_path, url=url)
    keys = [c["key"] for c in _cells(tmp_path)]
    assert store.register_grid(_cells(tmp_path), {"epochs": 1}) == 3
    assert store.add_cells(_cells(tmp_path)) == 0
    claimed = [store.claim(keys)["key"] for _ in keys]
    assert claimed == keys and store.claim(keys) is None
    assert store.counts() == {"pending": 0, "running": 3, "finished": 0, "failed": 0}


def test_a_live_owner_keeps_its_cell_and_a_dead_one_loses_it(tmp_path, url):
    store = ResultsStore(tmp_path, url=url)
    store.add_cells(_cells(tmp_path, 2))
    live, dead = (c["key"] for c in _cells(tmp_path, 2))
    store.claim([live], Owner.current())
    store.claim([dead], Owner(socket.gethostname(), _dead_pid()))
    row = store.claim([live, dead], Owner(socket.gethostname(), os.getppid()))
    assert row["key"] == dead and row["attempts"] == 2 and row["claimed_pid"] == os.getppid()


def test_another_hosts_cell_is_reclaimed_only_when_its_heartbeat_is_stale(tmp_path, url):
    store = ResultsStore(tmp_path, url=url)
    store.add_cells(_cells(tmp_path, 1))
    key = _cells(tmp_path, 1)[0]["key"]
    store.claim([key], Owner("elsewhere", 123))
    assert store.claim([key], stale_seconds=60) is None  # its pid cannot be probed from here
    time.sleep(0.05)
    assert store.claim([key], stale_seconds=0.01)["claimed_host"] == socket.gethostname()
    assert not store.heartbeat(key, Owner("elsewhere", 123))  # the old owner lost it


def test_a_finished_cell_keeps_its_results_and_time_spent(tmp_path, url):
    from medbench.runs.results import ModelInfo, RunResults, Timing

    store = ResultsStore(tmp_path, url=url)
    store.add_cells(_cells(tmp_path, 1))
    key = _cells(tmp_path, 1)[0]["key"]
    store.claim([key])
    assert store.heartbeat(key, attempt_seconds=12.5)
    results = RunResults(
        run_dir=str(tmp_path / "runs" / "0"),
        config={"dataset": "d", "size": 28, "model": "m", "seed": 0},
        dataset={},
        model=ModelInfo("m", n_params=1234, flops=10_000_000),
        metrics={"test": {"acc": 0.75, "auc": 0.85}, "val": {"acc": 0.7, "auc": 0.8}},
        timing=Timing(train_seconds=3.0),
        steps=20, steps_per_epoch=10, rounds_planned=2, rounds_completed=2, best_round=2,
        flags=["x"], efficiency=0.6,
    )  # fmt: skip
    store.finish(key, results, tmp_path / "runs" / "0" / "results.json")
    row = store.rows()[0]
    assert row["status"] == "finished" and row["test_acc"] == 0.75 and row["n_params"] == 1234
    assert row["flags"] == ["x"] and row["gflops"] == 0.01 and row["train_seconds"] == 3.0
    assert row["results_path"] == str(tmp_path / "runs" / "0" / "results.json")
    assert store.seconds_spent() == 12.5


def test_heartbeat_times_keep_subsecond_precision(tmp_path, url):
    # PostgreSQL's REAL has 24 bits: an epoch time stored there would be off by minutes.
    store = ResultsStore(tmp_path, url=url)
    store.add_cells(_cells(tmp_path, 1))
    before = time.time()
    row = store.claim([_cells(tmp_path, 1)[0]["key"]])
    assert abs(row["heartbeat"] - before) < 5.0


def _claim_all(folder, url, keys, queue, barrier):
    store = ResultsStore(folder, url=url)
    got = []
    while (row := store.claim(keys)) is not None:
        got.append(row["key"])
    barrier.wait(timeout=60)  # stay alive: an exited owner's cells are rightly reclaimable
    queue.put(got)


@pytest.mark.slow
def test_concurrent_processes_never_claim_the_same_cell(tmp_path, url):
    store = ResultsStore(tmp_path, url=url)
    cells = _cells(tmp_path, 20)
    store.add_cells(cells)
    keys = [c["key"] for c in cells]
    ctx = mp.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(3)
    procs = [
        ctx.Process(target=_claim_all, args=(tmp_path, url, keys, queue, barrier)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    claimed = [k for _ in procs for k in queue.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
    assert sorted(claimed) == sorted(keys)


# -- where a server store is recorded -------------------------------------------------------


def test_a_server_store_is_recorded_in_the_folder_without_its_password(tmp_path, postgres_url):
    ResultsStore(tmp_path, url=postgres_url).add_cells(_cells(tmp_path, 2))
    recorded = json.loads((tmp_path / LOCATION_NAME).read_text())["url"]
    assert recorded == public_url(postgres_url)
    assert not (tmp_path / "results.sqlite").exists()
    if "PGPASSWORD" in os.environ or ":" not in postgres_url.split("@")[0].split("//")[1]:
        assert ResultsStore(tmp_path, create=False).counts()["pending"] == 2


def test_public_url_drops_the_password_only():
    url = "postgresql+psycopg://me:secret@db.example.org:5432/grid"
    assert public_url(url) == "postgresql+psycopg://me@db.example.org:5432/grid"


def test_a_folder_recorded_with_one_database_refuses_another(tmp_path):
    from medbench.errors import MedbenchError

    (tmp_path / LOCATION_NAME).write_text(json.dumps({"url": "postgresql+psycopg://me@a/grid"}))
    with pytest.raises(MedbenchError, match="is stored in postgresql\\+psycopg://me@a/grid"):
        ResultsStore(tmp_path, url="postgresql+psycopg://me@b/grid")


# -- a grid shared by worker processes ----------------------------------------------------


class _LoggingTrain:
    """The engine's train, logging each call as 'train <key> <pid>' (or, with `hang`, the
    first call as 'hang <key> <pid>', after which it hangs holding its cell)."""

    def __init__(self, log: Path, hang: bool = False) -> None:
        self.log, self.hang = log, hang

    def __call__(self, config, **kwargs):
        from medbench.training.engine import train

        what = "hang" if self.hang else "train"
        with open(self.log, "a") as f:
            f.write(f"{what} {config.seed} {os.getpid()}\n")
        if self.hang:
            time.sleep(600)
        return train(config, measure=False, **kwargs)


def _grid(out: Path, data_dir: Path, seeds: int):
    from medbench.workflows.grid_plan import plan_grid

    base = {"epochs": 1, "batch_size": 16, "device": "cpu", "data_dir": str(data_dir)}
    base["model_options"] = TINY_MODEL
    return plan_grid(["breastmnist"], ["advanced_cnn"], list(range(seeds)), out=out, base=base)


def _grid_worker(out, data_dir, seeds, url, hang):
    from medbench.workflows.benchmark import run_grid

    run_grid(
        _grid(out, data_dir, seeds), out, train_fn=_LoggingTrain(out.parent / "calls.log", hang),
        storage=url, progress=False, poll_seconds=0.2, heartbeat_seconds=0.5, stale_seconds=5,
    )  # fmt: skip


@pytest.fixture
def grid_data(tmp_path):
    from medbench.data.synthetic import write_synthetic_like

    write_synthetic_like(tmp_path / "data", "breastmnist", 28, n_train=32, n_val=16, n_test=16)
    return tmp_path / "data"


def _start(ctx, out, data_dir, seeds, url, hang=False):
    proc = ctx.Process(target=_grid_worker, args=(out, data_dir, seeds, url, hang))
    proc.start()
    return proc


def _calls(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.slow
def test_two_workers_on_one_grid_run_every_cell_exactly_once(tmp_path, grid_data, url):
    out = tmp_path / "out"
    ctx = mp.get_context("spawn")
    procs = [_start(ctx, out, grid_data, 4, url) for _ in range(2)]
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    calls = _calls(tmp_path / "calls.log")
    assert sorted(int(seed) for _, seed, _ in calls) == [0, 1, 2, 3]
    rows = ResultsStore(out, url=url).rows()
    assert len(rows) == 4
    assert all(r["status"] == "finished" and r["attempts"] == 1 for r in rows)
    assert {r["claimed_pid"] for r in rows} <= {p.pid for p in procs}
    assert len(list(out.glob("runs/*/*/*/results.json"))) == 4


@pytest.mark.slow
def test_a_killed_workers_cell_is_reclaimed_by_the_other(tmp_path, grid_data, url):
    out = tmp_path / "out"
    log = tmp_path / "calls.log"
    ctx = mp.get_context("spawn")
    doomed = _start(ctx, out, grid_data, 2, url, hang=True)
    deadline = time.monotonic() + 120
    while not _calls(log) and time.monotonic() < deadline:
        time.sleep(0.1)
    [(what, hung_seed, _)] = _calls(log)
    assert what == "hang"
    survivor = _start(ctx, out, grid_data, 2, url)
    time.sleep(1.0)
    os.kill(doomed.pid, signal.SIGKILL)  # mid-cell: claimed, heartbeating, not finished
    survivor.join(timeout=240)
    doomed.join(timeout=10)
    assert survivor.exitcode == 0 and doomed.exitcode == -signal.SIGKILL
    trained = [(seed, int(pid)) for what, seed, pid in _calls(log) if what == "train"]
    assert sorted(trained) == [("0", survivor.pid), ("1", survivor.pid)]
    rows = {str(r["seed"]): r for r in ResultsStore(out, url=url).rows()}
    assert all(r["status"] == "finished" for r in rows.values())
    assert rows[hung_seed]["attempts"] == 2 and rows[hung_seed]["claimed_pid"] == survivor.pid


# -- a tune study on PostgreSQL ------------------------------------------------------------


def _tune_cmd(data_dir, out, storage) -> list[str]:
    options = [f"--model-option={k}={json.dumps(v)}" for k, v in TINY_MODEL.items()]
    return [
        sys.executable, "-m", "medbench", "tune", "--dataset", "breastmnist",
        "--model", "advanced_cnn", "--data-dir", str(data_dir), "--out", str(out),
        "--trials", "4", "--pruner", "none", "--max-epochs", "1", "--batch-size", "16",
        "--device", "cpu", "--heartbeat", "1", "--quiet", "--storage", storage,
        "--study", "shared", *options,
    ]  # fmt: skip


@pytest.mark.slow
def test_a_tune_study_on_postgresql_is_shared_by_two_workers(tmp_path, grid_data, postgres_url):
    import optuna
    from optuna.trial import TrialState

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    workers = [
        subprocess.Popen(
            _tune_cmd(grid_data, tmp_path / f"out{i}", postgres_url),
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for i in range(2)
    ]
    for w in workers:
        _, err = w.communicate(timeout=280)
        assert w.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    ran = [len(list((tmp_path / f"out{i}" / "trials").glob("*/results.json"))) for i in (0, 1)]
    assert sum(ran) >= 4


# -- the benchmark on a server store ------------------------------------------------------


def _benchmark(out, url, fail=None, **kw):
    from support.fake_training import make_fake_train
    from support.grids import run_benchmark_with

    return run_benchmark_with(
        datasets="breastmnist", models="advanced_cnn,resnet18", seeds=2, epochs=1, out=out,
        storage=url, train_fn=make_fake_train(fail=fail), progress=False, **kw,
    )  # fmt: skip


@pytest.mark.slow
def test_the_report_of_a_server_grid_shows_its_failed_cells(tmp_path, postgres_url):
    out = tmp_path / "out"
    with pytest.warns(MedbenchWarning, match="boom"):
        outcome = _benchmark(out, postgres_url, fail={("breastmnist", "resnet18")})
    assert len(outcome.failed) == 2
    report = json.loads(outcome.report.json.read_text())  # from the store, not the files
    status = sorted((r["model"], r["status"]) for r in report)
    assert status == [("advanced_cnn", "finished")] * 2 + [("resnet18", "failed")] * 2


def test_a_recorded_server_that_cannot_be_opened_falls_back_to_the_files(tmp_path):
    from medbench.report.collect import load_runs
    from medbench.training.config import TrainConfig
    from support.fake_training import make_fake_train

    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # nothing listens on port 1
    (tmp_path / LOCATION_NAME).write_text(json.dumps({"url": url}))
    config = TrainConfig(dataset="breastmnist", model="resnet18", epochs=1)
    config.run_dir = str(tmp_path / "runs" / "one")
    make_fake_train()(config)  # writes the run's results.json
    with pytest.warns(MedbenchWarning, match="cannot read the results store.*--storage URL"):
        runs = load_runs(tmp_path)
    assert [r["model"] for r in runs] == ["resnet18"]


@pytest.mark.slow
def test_a_benchmark_plan_on_a_server_writes_nothing_there(tmp_path, postgres_url):
    import sqlalchemy

    outcome = _benchmark(tmp_path / "out", postgres_url, plan=True)
    assert len(outcome.plan.todo) == 4 and not (tmp_path / "out").exists()
    with sqlalchemy.create_engine(postgres_url).connect() as conn:
        assert not sqlalchemy.inspect(conn).has_table("cells")


@pytest.mark.slow
def test_a_benchmark_on_a_server_store_reports_and_resumes_from_it(tmp_path, postgres_url):
    out = tmp_path / "out"
    first = _benchmark(out, postgres_url)
    assert first.ok and len(first.trained) == 4 and first.report is not None
    assert not (out / "results.sqlite").exists() and (out / LOCATION_NAME).exists()
    again = _benchmark(out, postgres_url, report=False)
    assert again.ok and again.trained == []
    rows = ResultsStore(out, url=postgres_url).rows()
    assert [r["attempts"] for r in rows] == [1, 1, 1, 1]
