"""The grid's run length as part of its identity, its total budget across resumes, the plan
printed before the work, and the checks that come before any cell is registered. Driven by
the stand-in train function, a fake clock and fake speeds: no test reads wall time."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from medbench.cli import main
from medbench.data.synthetic import write_synthetic_like
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.runs.store import ResultsStore
from medbench.workflows.grid_plan import (
    OVERHEAD_SHARE,
    CellSpeed,
    training_budget_after,
)
from support.fake_training import make_fake_train
from support.grids import run_benchmark_with

GRID = {"datasets": "dermamnist,breastmnist", "models": "advanced_cnn,resnet18", "seeds": 1}


class FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run(out: Path, train_fn, **kw):
    args = {**GRID, "out": out, "train_fn": train_fn, "progress": False, "report": False}
    return run_benchmark_with(**{**args, **kw})


def _spending(clock: FakeClock, budgets: list[float], interrupt_at: int | None = None):
    """The stand-in train, spending on `clock` the wall share its training budget stands for
    (noted in `budgets`); call number `interrupt_at` (0-based) is cut off by Ctrl-C 30 s in."""
    fake = make_fake_train()

    def train(config, **kw):
        if len(budgets) == interrupt_at:
            budgets.append(None)
            clock.now += 30.0
            raise KeyboardInterrupt
        budgets.append(config.time_budget_seconds)
        clock.now += config.time_budget_seconds / (1 - OVERHEAD_SHARE)
        return fake(config, **kw)

    return train


def _no_medbench_warnings(seen) -> bool:
    return not [w for w in seen if issubclass(w.category, MedbenchWarning)]


# -- the run length is part of the grid's identity ---------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "named"),
    [
        ({"total_time_budget_seconds": 800.0}, {"total_time_budget_seconds": 400.0}, "800s"),
        ({"epochs": 2}, {"epochs": 3}, "--epochs 2"),
        ({"time_budget_seconds": 30.0}, {"time_budget_seconds": 60.0}, "--time-budget 30s"),
        ({"epochs": 2}, {"total_time_budget_seconds": 600.0}, "--epochs 2"),
    ],
)
def test_a_changed_run_length_never_mixes_lengths_in_one_folder(tmp_path, first, second, named):
    out, marker = tmp_path / "out", tmp_path / "calls.txt"
    _run(out, make_fake_train(marker=marker), **first)
    trained = marker.read_text()
    with pytest.raises(MedbenchError) as refused:
        _run(out, make_fake_train(marker=marker), **second)
    message = str(refused.value)
    assert str(out) in message and named in message and "new --out" in message
    assert "\n" not in message
    assert marker.read_text() == trained  # nothing trained at the other length
    assert {r["status"] for r in ResultsStore(out).rows()} == {"finished"}


def test_the_same_length_again_resumes_the_grid(tmp_path):
    out, marker = tmp_path / "out", tmp_path / "calls.txt"
    _run(out, make_fake_train(marker=marker), total_time_budget_seconds=800.0)
    outcome = _run(out, make_fake_train(marker=marker), total_time_budget_seconds=800.0)
    assert outcome.ok and outcome.trained == []


def test_a_resumed_grid_spends_only_what_is_left_of_its_total_budget(tmp_path, capsys):
    out, clock, first = tmp_path / "out", FakeClock(), []
    with pytest.raises(KeyboardInterrupt):  # two runs finish, the third is cut off 30 s in
        _run(out, _spending(clock, first, 2), total_time_budget_seconds=800.0, clock=clock)
    share = 800.0 / 4
    assert first[:2] == [pytest.approx(share * (1 - OVERHEAD_SHARE))] * 2
    assert ResultsStore(out).seconds_spent() == pytest.approx(2 * share + 30.0)

    resumed: list[float] = []
    outcome = _run(
        out, _spending(clock, resumed), total_time_budget_seconds=800.0, clock=clock, progress=True
    )
    assert outcome.ok
    assert outcome.plan.spent_seconds == pytest.approx(430.0)
    assert outcome.plan.seconds_left == pytest.approx(370.0)
    assert "ETA 6m10s" in capsys.readouterr().err.splitlines()[0]  # not the full 13m20s
    # The two runs left share the 370 s that are left (their 200 s shares no longer fit).
    assert resumed == [pytest.approx(185.0 * (1 - OVERHEAD_SHARE))] * 2
    assert ResultsStore(out).seconds_spent() == pytest.approx(800.0)


def test_a_grid_far_behind_its_budget_still_trains_every_run_and_says_so(tmp_path, capsys):
    # Stopping with runs left made a report of pending rows; the runs left train on at least
    # a quarter of their share instead, and the grid says it is behind its plan.
    out, clock, budgets = tmp_path / "out", FakeClock(), []
    fake = make_fake_train()

    def overrunning(config, **kw):
        budgets.append(config.time_budget_seconds)
        clock.now += 700.0 if len(budgets) == 1 else config.time_budget_seconds
        return fake(config, **kw)

    outcome = _run(out, overrunning, total_time_budget_seconds=800.0, clock=clock, progress=True)
    assert outcome.ok and ResultsStore(out).counts()["finished"] == 4
    assert all(b >= 0.25 * 0.25 * 200.0 for b in budgets[1:])
    assert "the grid is behind its plan" in capsys.readouterr().err


def test_a_runs_training_budget_leaves_room_for_what_runs_were_measured_to_spend_outside_it():
    assert training_budget_after(100.0, []) == pytest.approx(100.0 * (1 - OVERHEAD_SHARE))
    assert training_budget_after(100.0, [4.0, 5.0, 30.0]) == pytest.approx(90.0)  # median 5 < 10
    assert training_budget_after(100.0, [20.0, 25.0, 30.0]) == pytest.approx(75.0)
    assert training_budget_after(100.0, [90.0]) == pytest.approx(25.0)  # never under a quarter


# -- the plan -----------------------------------------------------------------------------------


def _speeds(calls: list[str]):
    """Fake speeds: resnet18 takes 0.5 s a step, the rest 0.01 s; 36 steps an epoch."""

    def speed(config):
        calls.append(f"{config.dataset}/{config.model}/{config.seed}")
        return CellSpeed(0.5 if config.model == "resnet18" else 0.01, 36)

    return speed


def test_plan_trains_nothing_and_writes_nothing(tmp_path):
    out, marker, calls = tmp_path / "out", tmp_path / "calls.txt", []
    outcome = _run(
        out,
        make_fake_train(marker=marker),
        epochs=5,
        seeds=2,
        plan=True,
        speed_fn=_speeds(calls),
    )
    assert not out.exists() and not marker.exists()
    assert len(outcome.plan.todo) == 8
    assert len(calls) == 4  # once per dataset and model: seeds share a speed


def test_plan_gives_each_run_its_speed_the_epochs_its_share_buys_and_the_eta(tmp_path):
    outcome = _run(
        tmp_path / "out",
        make_fake_train(),
        total_time_budget_seconds=400.0,
        plan=True,
        speed_fn=_speeds([]),
    )
    lines = outcome.plan.lines()
    assert lines[0].startswith("plan: 4 runs") and "--total-time-budget 400s" in lines[0]
    assert "each run's share 1m40s" in lines[0] and "ETA 6m40s" in lines[0]
    # 100 s share, 90 s of training, 0.36 s an epoch: 250 epochs.
    assert "dermamnist/advanced_cnn/seed0: 0.01 s/step x 36 steps/epoch, 250 epochs" in lines[1]
    assert "ETA 1m40s" in lines[1]


def test_a_share_under_one_epoch_is_said_before_training_with_the_budget_that_buys_the_recipe(
    tmp_path,
):
    marker = tmp_path / "calls.txt"
    with pytest.warns(MedbenchWarning, match="less than one epoch") as said:
        outcome = _run(
            tmp_path / "out",
            make_fake_train(marker=marker),
            total_time_budget_seconds=60.0,
            speed_fn=_speeds([]),
        )
    # resnet18's 13.5 s of training buys 0.75 of its 18 s epochs; 40 epochs of 18 s, with
    # the overhead share kept, are 800 s a run: 3200 s for the 4 runs, said in whole minutes.
    assert "--total-time-budget 54m" in str(said[0].message)
    short = [p for p in outcome.plan.todo if p.short]
    assert [p.cell.config.model for p in short] == ["resnet18", "resnet18"]
    assert "LESS THAN ONE EPOCH" in short[0].line()
    assert len(marker.read_text().splitlines()) == 4  # said before, then trained


def test_the_plan_is_printed_at_the_start_of_the_grid(tmp_path, capsys):
    _run(tmp_path / "out", make_fake_train(), epochs=2, speed_fn=_speeds([]), progress=True)
    err = capsys.readouterr().err.splitlines()
    plan_at = next(i for i, line in enumerate(err) if line.startswith("plan: 4 runs"))
    started_at = next(i for i, line in enumerate(err) if ": starting" in line)
    assert plan_at < started_at
    assert "dermamnist/resnet18/seed0: 0.5 s/step x 36 steps/epoch, 2 epochs" in err[plan_at + 2]


# -- checks before anything is registered (paper cuts) ---------------------------------------


def test_no_gpu_warning_comes_after_the_arguments_are_checked(tmp_path):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(MedbenchError, match="--seeds"):
            _run(tmp_path / "out", make_fake_train(), seeds="x", on_gpu=False)
        with pytest.raises(MedbenchError, match="ensemble"):
            _run(tmp_path / "out", make_fake_train(), ensemble="vote", on_gpu=False)
    assert _no_medbench_warnings(seen)


def test_no_gpu_warning_is_not_printed_for_a_finished_grid(tmp_path):
    with pytest.warns(MedbenchWarning, match="no GPU"):
        _run(tmp_path / "out", make_fake_train(), on_gpu=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        outcome = _run(tmp_path / "out", make_fake_train(), on_gpu=False)
    assert outcome.ok and outcome.trained == []
    assert _no_medbench_warnings(seen)


def test_a_failed_download_leaves_no_cells_registered(tmp_path):
    out, asked = tmp_path / "out", []

    def download(name, size, data_dir):
        asked.append(name)
        if name == "breastmnist":
            raise MedbenchError("cannot download breastmnist.npz")

    with pytest.raises(MedbenchError, match="cannot download"):
        _run(out, make_fake_train(), epochs=1, prepare_data=download)
    assert asked == ["dermamnist", "breastmnist"]
    assert not (out / "results.sqlite").exists()
    # The next grid into the same folder (offline, other data) shows only its own runs.
    outcome = _run(out, make_fake_train(), datasets="dermamnist", epochs=1)
    assert len(ResultsStore(out).rows()) == len(outcome.cells) == 2


def test_benchmark_refuses_a_data_dir_that_does_not_exist_and_creates_nothing(tmp_path, capsys):
    typo, out = tmp_path / "shared" / "medmnist", tmp_path / "out"
    argv = ["benchmark", "--datasets", "breastmnist", "--models", "advanced_cnn", "--seeds", "1",
            "--epochs", "1", "--data-dir", str(typo), "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "medbench download" in err
    assert not typo.parent.exists() and not out.exists()


@pytest.mark.slow
def test_plan_flag_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    write_synthetic_like(data, "breastmnist", 28, n_train=64, n_val=32, n_test=32)
    argv = ["benchmark", "--datasets", "breastmnist", "--models", "advanced_cnn", "--seeds", "2",
            "--epochs", "1", "--device", "cpu", "--data-dir", str(data), "--out", str(out),
            "--model-option", "width=0.25", "--plan"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("plan: 2 runs") and "--epochs 1" in printed[0]
    assert [line.split(":")[0].strip() for line in printed[1:]] == [
        "breastmnist/advanced_cnn/seed0",
        "breastmnist/advanced_cnn/seed1",
    ]
    assert not out.exists()
