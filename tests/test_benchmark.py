"""The benchmark runner (grid planning, resume, failures, budgets, concurrency), driven by a
stand-in train function so each test takes well under a second of training."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medbench.callbacks import Callback
from medbench.benchmark import (
    DEFAULT_DATASETS,
    DEFAULT_MODELS,
    cell_budget,
    parse_seeds,
    plan_grid,
    run_benchmark,
    run_grid,
)
from medbench.config import TrainConfig, config_hash
from medbench.errors import MedbenchError
from medbench.store import Owner, ResultsStore
from test_benchmark_support import make_fake_train

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
    return run_benchmark(**args)


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


def test_interrupted_cell_resumes_from_its_checkpoint(tmp_path):
    # First process dies after epoch 1 of the first cell: simulate with a train that stops.
    out = tmp_path / "out"
    cells = plan_grid(["dermamnist"], ["advanced_cnn"], [0], out=out, base={"epochs": 3})
    store = ResultsStore(out)
    store.add_cells([c.store_row() for c in cells])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.claim([cells[0].key], Owner(socket.gethostname(), dead.pid))
    partial = TrainConfig.from_dict({**cells[0].config.to_dict(), "epochs": 1})
    make_fake_train()(partial)  # leaves checkpoint.pt at epoch 1 (and a results.json we remove)
    (Path(partial.run_dir) / "results.json").unlink()
    epochs_seen = []
    fake = make_fake_train()

    class SeeRounds(Callback):
        def on_round_end(self, event):
            epochs_seen.append(event.record["round"])

    def train(config, **kw):
        kw["callbacks"] = [*kw["callbacks"], SeeRounds()]
        return fake(config, **kw)

    outcome = run_grid(cells, out, train_fn=train, progress=False)
    assert epochs_seen == [2, 3]
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


def test_total_budget_is_split_over_the_cells_not_yet_finished(tmp_path):
    budgets = []
    fake = make_fake_train()

    def train(config, **kw):
        budgets.append(config.time_budget_seconds)
        return fake(config, **kw)

    _run(tmp_path, train, epochs=None, total_time_budget_seconds=800.0, seeds=1)
    assert len(budgets) == 4
    assert 190 < budgets[0] <= 200  # 800 s over 4 cells
    assert 250 < budgets[-1] <= 800  # the last cell gets what is left


def test_cell_budget_reserves_each_remaining_cells_overhead_and_never_starves_one():
    assert cell_budget(1000.0, 4, [], 250.0) == 250.0  # nothing known yet: an even split
    # Finished cells spent 40 and 60 s outside training: 50 s is reserved for each of the
    # 4 cells left before splitting, so the grid still ends near its deadline.
    assert cell_budget(1000.0, 4, [40.0, 60.0], 250.0) == 200.0
    # An overrun grid gives its last cells a quarter of the even share, not a second.
    assert cell_budget(5.0, 3, [90.0], 200.0) == 50.0


def test_cpu_default_is_a_shared_total_budget(tmp_path, monkeypatch):
    import medbench.benchmark as bm

    monkeypatch.setattr(bm, "_on_gpu", lambda device: False)
    seen = []
    fake = make_fake_train()

    def train(config, **kw):
        seen.append((config.epochs, config.time_budget_seconds))
        return fake(config, **kw)

    with pytest.warns(Warning, match="time budget"):
        _run(tmp_path, train, epochs=None, seeds=1)
    assert all(e is None and b is not None for e, b in seen)
    assert seen[0][1] == pytest.approx(bm.DEFAULT_CPU_TOTAL_BUDGET_SECONDS / 4, rel=0.01)


def test_per_run_and_total_budgets_together_are_refused(tmp_path):
    with pytest.raises(MedbenchError, match="not both"):
        _run(tmp_path, make_fake_train(), time_budget_seconds=10, total_time_budget_seconds=100)


def test_config_file_applies_to_every_cell_and_flags_win(tmp_path):
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps({"config": {"lr": 0.01, "epochs": 5, "batch_size": 32}}))
    seen = []
    fake = make_fake_train()

    def train(config, **kw):
        seen.append((config.lr, config.epochs, config.batch_size))
        return fake(config, **kw)

    _run(tmp_path, train, config=cfg, epochs=1)
    assert set(seen) == {(0.01, 1, 32)}


_WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_benchmark_support import make_fake_train
    from medbench.benchmark import run_benchmark
    run_benchmark(datasets="dermamnist,breastmnist", models="advanced_cnn,resnet18", seeds=2, epochs=2,
                  out={out!r}, progress=False, report=False,
                  train_fn=make_fake_train(seconds_per_epoch=0.15, marker={marker!r}))
""")


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
    import io

    from medbench.benchmark import GridView

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
    import io

    from medbench.benchmark import GridView

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    view = GridView(4, stream=stream)
    view.update({"pending": 1, "running": 1, "finished": 2, "failed": 0})
    view.close()
    assert "2/4" in stream.getvalue() and "1 running" in stream.getvalue()
