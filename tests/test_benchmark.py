"""The benchmark runner (grid planning, resume, failures, budgets, concurrency), driven by a
stand-in train function so each test takes well under a second of training."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medbench.errors import MedbenchError
from medbench.runs.results import read_results
from medbench.runs.store import Owner, ResultsStore
from medbench.training.callbacks import Callback, RoundEnd
from medbench.training.config import TrainConfig, config_hash
from medbench.workflows.benchmark import (
    DEFAULT_CPU_TOTAL_BUDGET_SECONDS,
    DEFAULT_DATASETS,
    DEFAULT_MODELS,
    GridCellCallback,
    run_grid,
)
from medbench.workflows.grid_plan import OVERHEAD_SHARE, cell_budget, parse_seeds, plan_grid
from medbench.workflows.grid_progress import GridView
from support.fake_training import make_fake_train
from support.grids import run_benchmark_with

GRID = {
    "datasets": "dermamnist,breastmnist",
    "models": "advanced_cnn,resnet18",
    "seeds": 2,
    "epochs": 2,
}


def _run(tmp_path, train_fn, **kw):
    args = {
        **GRID,
        "out": tmp_path / "out",
        "train_fn": train_fn,
        "progress": False,
        "report": False,
        **kw,
    }
    return run_benchmark_with(**args)


def _noting(configs: list[TrainConfig]):
    """The stand-in train function, noting in `configs` each config the grid hands it."""
    fake = make_fake_train()

    def train(config, **kw):
        configs.append(config)
        return fake(config, **kw)

    return train


def test_default_grid_is_the_reference_study():
    assert DEFAULT_DATASETS == ("dermamnist", "octmnist")
    assert DEFAULT_MODELS == ("advanced_cnn", "efficientnet", "resnet18")


def test_seeds_are_a_count_or_a_list():
    assert parse_seeds(3) == [0, 1, 2]
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("0,5,7") == [0, 5, 7]
    with pytest.raises(MedbenchError):
        parse_seeds("x")
    with pytest.raises(MedbenchError):
        parse_seeds(0)


def test_grid_has_one_cell_per_dataset_model_seed_each_in_its_own_folder(tmp_path):
    cells = plan_grid(["a", "b"], ["m1", "m2", "m3"], [0, 1], out=tmp_path, base={"epochs": 1})
    assert len(cells) == 12
    assert len({c.key for c in cells}) == 12
    assert len({c.config.run_dir for c in cells}) == 12
    assert all(Path(c.config.run_dir).is_relative_to(tmp_path) for c in cells)


def test_config_hash_ignores_where_and_how_long_but_not_what_is_learned():
    base = TrainConfig("dermamnist", "resnet18", epochs=3)
    assert config_hash(base) == config_hash(
        TrainConfig(
            "dermamnist",
            "resnet18",
            epochs=3,
            data_dir="/x",
            time_budget_seconds=60,
            run_dir="/y",
            device="cpu",
        )
    )
    assert config_hash(base) != config_hash(TrainConfig("dermamnist", "resnet18", epochs=4))
    assert config_hash(base) != config_hash(TrainConfig("dermamnist", "resnet18", epochs=3, lr=0.1))


def test_grid_trains_every_cell_and_records_it_finished(tmp_path):
    outcome = _run(tmp_path, make_fake_train())
    assert outcome.counts["finished"] == 8
    assert len(outcome.trained) == 8
    rows = ResultsStore(tmp_path / "out").rows()
    assert all(r["status"] == "finished" and r["test_acc"] is not None for r in rows)


def test_rerun_skips_finished_cells(tmp_path):
    marker = tmp_path / "calls.txt"
    _run(tmp_path, make_fake_train(marker=marker))
    outcome = _run(tmp_path, make_fake_train(marker=marker))
    assert outcome.trained == []
    assert len(marker.read_text().splitlines()) == 8


def _dead_owner() -> Owner:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return Owner(socket.gethostname(), dead.pid)


def _cut_off_after_one_round(cell, train) -> None:
    """Leave `cell` as a process that died during its second round would: a checkpoint
    after round 1 and no results."""
    partial = TrainConfig.from_dict({**cell.config.to_dict(), "epochs": 1})
    train(partial)
    (cell.run_dir / "results.json").unlink()


class SeeRounds(Callback):
    """Notes the round of every round end the engine reports."""

    def __init__(self) -> None:
        self.rounds: list[int] = []

    def on_round_end(self, event: RoundEnd) -> None:
        self.rounds.append(event.record["round"])


def _seeing(train, seen: SeeRounds):
    """`train`, with `seen` among the callbacks the grid hands it."""

    def train_seen(config, **kw):
        return train(config, **{**kw, "callbacks": [*kw["callbacks"], seen]})

    return train_seen


def test_interrupted_cell_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "out"
    cells = plan_grid(["dermamnist"], ["advanced_cnn"], [0], out=out, base={"epochs": 3})
    store = ResultsStore(out)
    store.add_cells([c.store_row() for c in cells])
    store.claim([cells[0].key], _dead_owner())
    _cut_off_after_one_round(cells[0], make_fake_train())
    seen = SeeRounds()
    outcome = run_grid(cells, out, train_fn=_seeing(make_fake_train(), seen), progress=False)
    assert seen.rounds == [2, 3]
    assert outcome.counts["finished"] == 1
    assert store.rows()[0]["attempts"] == 2


def test_results_on_disk_are_recorded_without_training_again(tmp_path):
    out = tmp_path / "out"
    cells = plan_grid(["dermamnist"], ["advanced_cnn"], [0], out=out, base={"epochs": 1})
    make_fake_train()(
        TrainConfig.from_dict(cells[0].config.to_dict())
    )  # died before the store heard
    marker = tmp_path / "calls.txt"
    outcome = run_grid(cells, out, train_fn=make_fake_train(marker=marker), progress=False)
    assert outcome.counts["finished"] == 1
    assert not marker.exists()


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    with pytest.warns(Warning, match="boom"):
        outcome = _run(tmp_path, make_fake_train(fail={("breastmnist", "resnet18")}))
    assert outcome.counts == {"pending": 0, "running": 0, "finished": 6, "failed": 2}
    assert all("RuntimeError: boom" in r["error"] for r in outcome.failed)
    assert (Path(outcome.failed[0]["run_dir"]) / "error.log").exists()
    assert not outcome.ok


def test_failed_cells_are_retried_on_rerun(tmp_path):
    with pytest.warns(Warning):
        _run(tmp_path, make_fake_train(fail={("breastmnist", "resnet18")}))
    outcome = _run(tmp_path, make_fake_train())
    assert outcome.counts["finished"] == 8 and len(outcome.trained) == 2


def test_a_user_error_in_a_cell_stops_the_grid_and_hands_the_cell_back(tmp_path):
    def train(config, **kw):
        raise MedbenchError("dataset file missing; run 'medbench download'")

    with pytest.raises(MedbenchError, match="dataset file missing"):
        _run(tmp_path, train)
    counts = ResultsStore(tmp_path / "out").counts()
    assert counts == {"pending": 8, "running": 0, "finished": 0, "failed": 0}


def test_each_runs_share_of_a_total_budget_is_fixed_when_the_grid_is_planned(tmp_path):
    configs = []
    _run(tmp_path, _noting(configs), epochs=None, total_time_budget_seconds=800.0, seeds=1)
    budgets = [c.time_budget_seconds for c in configs]
    # 800 s over 4 runs, less what each keeps for work outside training; the last run
    # does not inherit what the (instant) stand-in runs left over.
    assert budgets == [pytest.approx(200.0 * (1 - OVERHEAD_SHARE))] * 4


def test_cell_budget_is_the_planned_share_unless_the_grid_spent_more_than_planned():
    assert cell_budget(250.0, 1000.0, 4) == 250.0  # on plan
    assert cell_budget(250.0, 900.0, 2) == 250.0  # ahead of plan: no leftovers inherited
    assert cell_budget(250.0, 600.0, 3) == 200.0  # behind: what is left, split evenly
    assert cell_budget(200.0, 5.0, 3) == 50.0  # never under a quarter: every run trains


def test_cpu_default_is_a_shared_total_budget(tmp_path):
    configs = []
    with pytest.warns(Warning, match="time budget"):
        _run(tmp_path, _noting(configs), epochs=None, seeds=1, on_gpu=False)
    assert all(c.epochs is None and c.time_budget_seconds is not None for c in configs)
    assert configs[0].time_budget_seconds == pytest.approx(
        DEFAULT_CPU_TOTAL_BUDGET_SECONDS / 4 * (1 - OVERHEAD_SHARE)
    )


def test_per_run_and_total_budgets_together_are_refused(tmp_path):
    with pytest.raises(MedbenchError, match="not both"):
        _run(tmp_path, make_fake_train(), time_budget_seconds=10, total_time_budget_seconds=100)


def test_a_per_run_budget_in_the_config_file_is_each_runs_budget(tmp_path):
    cfg = tmp_path / "budget.json"
    cfg.write_text(json.dumps({"time_budget_seconds": 30}))
    configs = []
    _run(tmp_path, _noting(configs), epochs=None, train_config=cfg, seeds=1, on_gpu=False)
    assert [c.time_budget_seconds for c in configs] == [30, 30, 30, 30]  # and no CPU default


def test_a_per_run_budget_in_the_config_file_and_a_total_budget_are_refused(tmp_path):
    cfg = tmp_path / "budget.json"
    cfg.write_text(json.dumps({"time_budget_seconds": 30}))
    with pytest.raises(MedbenchError, match="time_budget_seconds in --config"):
        _run(
            tmp_path,
            make_fake_train(),
            epochs=None,
            train_config=cfg,
            total_time_budget_seconds=600,
        )
    assert not (tmp_path / "out").exists()  # refused before anything was planned or run


def test_config_file_applies_to_every_cell_and_flags_win(tmp_path):
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps({"config": {"lr": 0.01, "epochs": 5, "batch_size": 32}}))
    configs = []
    _run(tmp_path, _noting(configs), train_config=cfg, epochs=1)
    assert {(c.lr, c.epochs, c.batch_size) for c in configs} == {(0.01, 1, 32)}


_WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from support.fake_training import make_fake_train
    from support.grids import run_benchmark_with
    run_benchmark_with(datasets="dermamnist,breastmnist", models="advanced_cnn,resnet18", seeds=2, epochs=2,
                  out={out!r}, progress=False, report=False,
                  train_fn=make_fake_train(seconds_per_epoch=0.15, marker={marker!r}))
""")


@pytest.mark.slow
def test_two_processes_on_one_grid_train_each_cell_exactly_once(tmp_path):
    out, marker = tmp_path / "out", tmp_path / "calls.txt"
    script = _WORKER.format(tests=str(Path(__file__).parent), out=str(out), marker=str(marker))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    calls = marker.read_text().splitlines()
    cells = [c.rsplit("|", 1)[0] for c in calls]
    assert len(cells) == 8 and len(set(cells)) == 8
    assert len({c.rsplit("|", 1)[1] for c in calls}) == 2  # both processes did work
    rows = ResultsStore(out).rows()
    assert all(r["status"] == "finished" and r["attempts"] == 1 for r in rows)


def test_live_view_prints_done_running_left_and_eta_lines_when_not_a_terminal():
    stream = io.StringIO()
    view = GridView(4, stream=stream)
    view.cell_seconds = [10.0]
    view.update(
        {"pending": 2, "running": 1, "finished": 1, "failed": 0},
        "dermamnist/resnet18/seed0: starting",
    )
    line = stream.getvalue()
    assert line.startswith("[benchmark] 1/4 done (0 failed), 1 running, 2 left, ETA 30s")
    assert line.rstrip().endswith("dermamnist/resnet18/seed0: starting")


def test_live_view_draws_a_progress_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    view = GridView(4, stream=stream)
    view.update({"pending": 1, "running": 1, "finished": 2, "failed": 0})
    view.close()
    assert "2/4" in stream.getvalue() and "1 running" in stream.getvalue()


def test_grid_cell_callback_keeps_the_cell_claimed_and_notes_each_round(tmp_path):
    out = tmp_path / "out"
    (cell,) = plan_grid(["dermamnist"], ["advanced_cnn"], [0], out=out, base={"epochs": 1})
    store = ResultsStore(out)
    store.add_cells([cell.store_row()])
    me = Owner.current()
    beat_at_claim = store.claim([cell.key], me)["heartbeat"]
    time.sleep(0.01)  # so that a new heartbeat is a later one
    stream = io.StringIO()
    callback = GridCellCallback(cell, store, me, GridView(1, stream=stream))
    record = {"round": 3, "train_loss": 0.5, "val_acc": 0.75, "val_auc": float("nan")}
    callback.on_round_end(RoundEnd(None, record, None, None, 10, True))
    assert store.rows()[0]["heartbeat"] > beat_at_claim
    # The same line `medbench train` prints for a round (medbench.training.progress.round_line).
    assert stream.getvalue() == (
        "  dermamnist/advanced_cnn/seed0 round 3: loss 0.5000 val_acc 0.7500 val_auc nan\n"
    )


def _grid_from_before_schema_2(out: Path) -> list:
    """A grid folder as medbench wrote it before results schema 2 (results.json with
    epochs_completed, best_epoch, records keyed "epoch"; the store's layout has not
    changed since), cut off: two cells finished, one finished on disk but not yet in the
    store, one in its second round."""
    cells = plan_grid(
        ["dermamnist"], ["advanced_cnn", "resnet18"], [0, 1], out=out, base={"epochs": 2}
    )
    old_train, store, dead = make_fake_train(schema=1), ResultsStore(out), _dead_owner()
    store.add_cells([c.store_row() for c in cells])
    for cell in cells:
        store.claim([cell.key], dead)
    for cell in cells[:3]:
        old_train(cell.config)
    for cell in cells[:2]:
        store.finish(cell.key, read_results(cell.run_dir), cell.run_dir / "results.json")
    _cut_off_after_one_round(cells[3], old_train)
    return cells


@pytest.mark.slow
def test_a_grid_from_before_rounds_had_their_name_loads_reports_and_resumes(tmp_path):
    out = (tmp_path / "out").resolve()
    cells = _grid_from_before_schema_2(out)
    old_file = json.loads((cells[0].run_dir / "results.json").read_text())
    assert (old_file["schema_version"], old_file["epochs_completed"]) == (1, 2)
    assert "rounds_completed" not in old_file and "epoch" in old_file["history"][0]

    seen = SeeRounds()
    outcome = run_benchmark_with(
        datasets="dermamnist",
        models="advanced_cnn,resnet18",
        seeds=2,
        epochs=2,
        out=out,
        train_fn=_seeing(make_fake_train(), seen),
        progress=False,
    )
    assert outcome.ok and outcome.trained == [cells[3].key]  # cells[2] recorded from disk
    assert seen.rounds == [2]  # resumed after its first round
    rows = ResultsStore(out).rows([c.key for c in cells])
    for cell, row in zip(cells, rows, strict=True):
        results = read_results(cell.run_dir)
        assert (results.rounds_completed, results.best_round) == (2, 2)
        assert (row["test_acc"], row["val_auc"]) == (results.test["acc"], results.val["auc"])
    table = list(csv.DictReader(outcome.report.csv.open()))
    assert sorted(float(r["test_acc"]) for r in table) == sorted(r["test_acc"] for r in rows)
    assert "| dermamnist | advanced_cnn | this study (n=2) |" in outcome.report.markdown.read_text()
