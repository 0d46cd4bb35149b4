"""`medbench tune`: the pruning hook, the recipe, one study shared by several processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import matplotlib
import matplotlib.image
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from medbench.errors import MedbenchError
from medbench.training.callbacks import RoundEnd
from medbench.training.config import TrainConfig, load_config_file
from medbench.workflows.studies import (
    FINISHED,
    PerTrialSeededSampler,
    TrialProgress,
    claim_slot,
    count_trials,
    open_study,
    work_study,
)
from medbench.workflows.study_plots import plot_history, plot_importance
from medbench.workflows.tune import (
    PruningCallback,
    pick_best_trial,
    recipe_from_params,
    suggest_recipe,
    trial_config,
    tune,
    write_tune_outputs,
)

TINY_MODEL = {"width": 0.25, "depths": [1, 1, 1, 1], "attention": False}


class PruneAll(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


@pytest.fixture
def tiny_data_dir(tmp_path):
    from medbench.data.synthetic import write_synthetic_like

    write_synthetic_like(tmp_path / "data", "breastmnist", 28, n_train=32, n_val=16, n_test=16)
    return tmp_path / "data"


def _base(data_dir) -> TrainConfig:
    return TrainConfig(
        dataset="breastmnist",
        model="advanced_cnn",
        model_options=TINY_MODEL,
        device="cpu",
        batch_size=16,
        data_dir=str(data_dir),
    )


def _round_end(round_: int, auc: float, acc: float = 0.5) -> RoundEnd:
    record = {"round": round_, "val_auc": auc, "val_acc": acc}
    return RoundEnd(run=None, record=record, model=None, runtime=None, total_steps=0, is_best=False)


def test_the_pruning_callback_prunes_when_the_pruner_says_so():
    study = optuna.create_study(direction="maximize", pruner=PruneAll())
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        PruningCallback(trial, "auc").on_round_end(_round_end(1, 0.7))
    assert study.trials[0].intermediate_values == {1: 0.7}


def test_the_pruning_callback_reports_acc_when_auc_is_undefined():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    PruningCallback(trial, "auc").on_round_end(_round_end(1, float("nan"), acc=0.6))
    assert study.trials[0].intermediate_values == {1: 0.6}


def test_recipe_maps_mix_choice_to_strengths_and_fixed_values_win():
    params = {"lr": 0.01, "mix": "cutmix", "cutmix_alpha": 0.5, "batch_size": 64}
    recipe = recipe_from_params(params, {"batch_size": 32}, max_epochs=7)
    assert recipe == {"lr": 0.01, "mixup": 0.0, "cutmix": 0.5, "batch_size": 32, "epochs": 7}


def test_per_trial_seeding_makes_sampling_a_function_of_seed_and_trial_number():
    def first_params(seed: int) -> list[dict]:
        sampler = PerTrialSeededSampler(lambda s: optuna.samplers.TPESampler(seed=s), seed)
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        return [t.params for t in study.trials]

    a, b = first_params(0), first_params(0)
    assert a == b and a[0] != a[1]


def test_the_recipe_samples_only_what_is_not_fixed_and_what_the_model_takes():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    recipe = suggest_recipe(
        trial, {"lr": 0.01, "mixup": 0.2}, min_epochs=3, max_epochs=3, model_options={}
    )
    assert set(recipe) == {"weight_decay", "batch_size", "label_smoothing", "augment", "epochs"}
    assert recipe["epochs"] == 3 and set(trial.params) == set(recipe) - {"epochs"}


def test_the_recipe_samples_one_of_mixup_and_cutmix_and_the_regularisers_a_model_takes():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    recipe = suggest_recipe(trial, {}, min_epochs=1, max_epochs=9, model_options={"dropout": 0.0})
    assert "drop_path" not in recipe and 0.0 <= recipe["dropout"] <= 0.5
    assert 1 <= recipe["epochs"] <= 9
    assert sorted([recipe["mixup"], recipe["cutmix"]])[0] == 0.0


def test_a_tune_with_a_bad_epoch_range_is_refused_before_any_work(tmp_path):
    with pytest.raises(MedbenchError, match="--min-epochs must be between 1 and --max-epochs"):
        tune(_base(tmp_path), tmp_path / "out", 1, min_epochs=5, max_epochs=2, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_tune_with_no_trials_is_refused_before_any_work(tmp_path):
    with pytest.raises(MedbenchError, match="--trials must be at least 1"):
        tune(_base(tmp_path), tmp_path / "out", 0, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_trial_started_after_the_study_is_full_is_given_up_as_surplus():
    study = optuna.create_study()
    study.ask()  # a worker's trial, running
    late = study.ask()
    with pytest.raises(Exception, match="already has 1 trials"):
        claim_slot(late, 1)
    assert study.get_trials(deepcopy=False)[late.number].user_attrs == {"surplus": True}


def test_a_worker_stops_starting_trials_at_its_timeout():
    study = optuna.create_study()
    readings = iter([0.0, 0.0, 100.0])  # start, before the first trial, before the second
    lines = []
    work_study(study, lambda t: t.suggest_float("x", 0, 1), 5, timeout_seconds=10,
               log=lines.append, clock=lambda: next(readings))  # fmt: skip
    assert count_trials(study, FINISHED) == 1
    assert lines == ["timeout reached with 1/5 trials finished"]


def test_a_worker_waits_while_running_trials_of_others_fill_the_study():
    study = optuna.create_study()
    other = study.ask()  # another worker's trial: the study's one slot is taken
    naps = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        study.tell(other, 0.5)  # meanwhile the other worker finishes it

    work_study(study, pytest.fail, 1, poll_seconds=0.25, sleep=sleep)
    assert naps == [0.25] and count_trials(study, FINISHED) == 1


def test_three_failed_trials_in_a_row_stop_the_worker_with_the_last_error():
    study = optuna.create_study()

    def objective(trial):
        trial.set_user_attr("error", f"broken {trial.number}")
        raise MedbenchError("broken")

    with pytest.raises(MedbenchError, match="3 trials in a row failed; the last: broken 2"):
        work_study(study, objective, 5)


@pytest.mark.slow
def test_tiny_tune_writes_a_best_config_that_train_accepts(tiny_data_dir, tmp_path):
    result = tune(
        _base(tiny_data_dir),
        tmp_path / "out",
        2,
        pruner="none",
        max_epochs=1,
        fixed={"batch_size": 16},
        progress=False,
    )
    assert result.n_finished == 2
    values = load_config_file(result.best_config_path)
    config = TrainConfig.from_dict(values)  # the file alone: no dataset or model added
    assert (config.dataset, config.model, config.size, config.seed) == (
        "breastmnist", "advanced_cnn", 28, 0,
    )  # fmt: skip
    assert config.model_options == TINY_MODEL
    assert config.validate().batch_size == 16 and config.epochs == 1
    assert (tmp_path / "out" / "history.png").stat().st_size > 0
    summary = json.loads((tmp_path / "out" / "tune_summary.json").read_text())
    assert summary["best_trial"] == result.best_trial
    for trial in summary["trials"]:  # every trial's test numbers with their 95% intervals
        low, high = trial["test_acc_interval"]
        assert low <= trial["test_acc"] <= high


@pytest.mark.slow
def test_pruned_trials_count_as_finished_but_give_no_best_config(tiny_data_dir, tmp_path):
    with pytest.raises(MedbenchError, match="no completed trial"):
        tune(
            _base(tiny_data_dir),
            tmp_path / "out",
            2,
            pruner=PruneAll(),
            max_epochs=2,
            fixed={"batch_size": 16},
            progress=False,
        )
    study = optuna.load_study(
        study_name="tune-breastmnist-28-advanced_cnn",
        storage=f"sqlite:///{tmp_path / 'out' / 'tune.sqlite'}",
    )
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    assert all(len(t.intermediate_values) == 1 for t in study.trials)  # stopped after epoch 1


@pytest.mark.slow
def test_joining_a_study_made_for_another_dataset_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.sqlite'}"
    open_study(
        storage,
        "s",
        optuna.samplers.RandomSampler(),
        heartbeat_seconds=60,
        attrs={"dataset": "breastmnist"},
    )
    with pytest.raises(MedbenchError, match="dataset"):
        open_study(
            storage,
            "s",
            optuna.samplers.RandomSampler(),
            heartbeat_seconds=60,
            attrs={"dataset": "pneumoniamnist"},
        )


# ---- several processes on one study (subprocesses of `python -m medbench tune`)


def _tune_cmd(data_dir, out, trials: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "medbench",
        "tune",
        "--dataset",
        "breastmnist",
        "--model",
        "advanced_cnn",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--trials",
        str(trials),
        "--pruner",
        "none",
        "--max-epochs",
        "1",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--heartbeat",
        "1",
        "--quiet",
        *[f"--model-option={k}={json.dumps(v)}" for k, v in TINY_MODEL.items()],
    ]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _study(out) -> optuna.Study:
    return optuna.load_study(
        study_name="tune-breastmnist-28-advanced_cnn", storage=f"sqlite:///{out / 'tune.sqlite'}"
    )


def _finished(study) -> list:
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


@pytest.mark.slow
def test_two_workers_finish_n_trials_between_them(tiny_data_dir, tmp_path):
    out = tmp_path / "out"
    workers = [
        subprocess.Popen(
            _tune_cmd(tiny_data_dir, out, 4),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    finished = _finished(_study(out))
    assert len(finished) == 4
    assert len({json.dumps(t.params, sort_keys=True) for t in finished}) == 4  # no duplicate
    assert len({t.number for t in finished}) == 4
    assert sorted(p.name for p in (out / "trials").iterdir()) >= [
        f"trial-{t.number:04d}" for t in finished
    ]


def _running_with_heartbeat(out) -> bool:
    """A trial is RUNNING and has sent a heartbeat (optuna detects a dead trial only by a
    heartbeat that went stale). Read straight from the SQLite file: cheap enough to poll."""
    import sqlite3

    with sqlite3.connect(out / "tune.sqlite", timeout=0.1) as conn:
        rows = conn.execute(
            "SELECT 1 FROM trials JOIN trial_heartbeats USING (trial_id)"
            " WHERE trials.state = 'RUNNING' LIMIT 1"
        ).fetchall()
    return bool(rows)


@pytest.mark.slow
def test_a_killed_tune_resumes_to_n_trials(tiny_data_dir, tmp_path):
    out = tmp_path / "out"
    # 40 fixed epochs make each trial last seconds, not a fraction of one, so the poll
    # below cannot miss the window in which a trial is running (it did on a loaded machine).
    long_trials = ["--epochs", "40", "--patience", "40"]
    proc = subprocess.Popen(
        _tune_cmd(tiny_data_dir, out, 2) + long_trials,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:  # kill it mid-trial
        time.sleep(0.05)
        try:
            if (out / "tune.sqlite").exists() and _running_with_heartbeat(out):
                break
        except Exception:  # the tables do not exist yet, or the file is locked: poll again
            continue
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = [t for t in _study(out).trials if t.state == TrialState.RUNNING]
    assert killed, "the tune finished before it could be killed"
    done = subprocess.run(
        _tune_cmd(tiny_data_dir, out, 2) + long_trials,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    study = _study(out)
    assert len(_finished(study)) == 2
    dead = study.trials[killed[0].number]
    assert dead.state == TrialState.FAIL  # failed by its stale heartbeat, then retried:
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number]
    # The retry reuses every value the dead trial had drawn (it may have been killed
    # before drawing them all; the rest are drawn afresh).
    assert retried
    assert {k: retried[0].params[k] for k in dead.params} == dead.params


def _open_storage(url, queue):
    from medbench.workflows.study_storage import make_storage

    try:
        make_storage(url)
        queue.put("ok")
    except Exception as exc:  # report, don't hang the test
        queue.put(repr(exc)[:200])


@pytest.mark.slow
def test_workers_started_together_all_open_a_new_storage(tmp_path):
    import multiprocessing as mp

    url = f"sqlite:///{tmp_path / 'tune.sqlite'}"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_open_storage, args=(url, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert outcomes == ["ok"] * 4


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning")
def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_retried(tmp_path):
    # study.ask() creates a RUNNING trial and sends no heartbeat: exactly what a worker
    # killed between creating its trial and its first heartbeat leaves behind.
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    study = open_study(storage, "s", optuna.samplers.RandomSampler(seed=0), heartbeat_seconds=1)
    orphan = study.ask()
    orphan.suggest_float("x", 0.0, 1.0)
    time.sleep(2.5)  # older than the grace period (2 heartbeats)
    lines = []
    work_study(study, lambda t: t.suggest_float("x", 0.0, 1.0), 1, timeout_seconds=30,
               poll_seconds=0.2, log=lines.append)  # fmt: skip
    trials = study.get_trials(deepcopy=False)
    assert trials[orphan.number].state == TrialState.FAIL
    assert count_trials(study, FINISHED) == 1  # the slot was freed and filled, no hang
    assert any("never sent a heartbeat" in line for line in lines)


def test_a_trial_prints_a_line_when_it_starts_and_after_every_round():
    lines: list[str] = []
    progress = TrialProgress(3, lines.append, {"lr": 0.01234, "augment": "basic"})
    progress.on_train_start(None)
    record = {"round": 2, "val_auc": 0.75, "val_acc": 0.6, "seconds": 12.3}
    progress.on_round_end(
        RoundEnd(run=None, record=record, model=None, runtime=None, total_steps=0,
                 is_best=True, rounds_planned=5)
    )  # fmt: skip
    assert lines == [
        "trial 3: started with lr=0.0123, augment=basic",
        "trial 3: round 2/5 val AUC 0.7500 ACC 0.6000 (12s)",
    ]


def _completed(number: int, value: float, flags: list[str]) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(
        params={"lr": 0.001 * (number + 1)},
        distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
        value=value,
        user_attrs={"collapsed": bool(flags), "flags": flags},
    )
    trial.number = number
    return trial


def test_the_best_trial_is_the_best_one_that_did_not_collapse():
    trials = [_completed(0, 0.9, ["predicts one class"]), _completed(1, 0.7, [])]
    best, notes = pick_best_trial(trials)
    assert best.number == 1
    assert len(notes) == 1 and "trial 0 scored higher" in notes[0] and "collapsed" in notes[0]


def test_no_note_when_the_best_trial_did_not_collapse():
    best, notes = pick_best_trial([_completed(0, 0.9, []), _completed(1, 0.7, ["x"])])
    assert best.number == 0 and notes == []


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::medbench.errors.MedbenchWarning")  # too few for fANOVA
def test_when_every_trial_collapsed_the_best_config_and_summary_say_so(tmp_path):
    study = optuna.create_study(direction="maximize")
    for number, value in ((0, 0.6), (1, 0.55)):
        study.add_trial(_completed(number, value, ["predicts one class"]))
    study.set_user_attr("metric", "auc")
    result = write_tune_outputs(
        study, _base(tmp_path), tmp_path, storage="memory", fixed={}, max_epochs=1
    )
    saved = json.loads(result.best_config_path.read_text())
    summary = json.loads((tmp_path / "tune_summary.json").read_text())
    assert result.best_trial == 0
    assert len(result.notes) == 1 and "every completed trial (2) collapsed" in result.notes[0]
    assert saved["notes"] == result.notes == summary["notes"]
    assert load_config_file(result.best_config_path)["lr"] == pytest.approx(0.001)


def test_the_best_config_keeps_what_the_trials_trained_with_but_not_where(tmp_path):
    base = _base(tmp_path)
    base.optimizer, base.ema_decay = "sgd", 0.99
    values = trial_config(base, {"lr": 0.005, "epochs": 3})
    assert {k: values[k] for k in ("dataset", "model", "size", "seed", "optimizer", "ema_decay")} == {
        "dataset": "breastmnist", "model": "advanced_cnn", "size": 28, "seed": 0,
        "optimizer": "sgd", "ema_decay": 0.99,
    }  # fmt: skip
    assert (values["lr"], values["epochs"], values["model_options"]) == (0.005, 3, TINY_MODEL)
    assert not {"data_dir", "run_dir", "device"} & set(values)


def _finished_study() -> optuna.Study:
    """A study of eight completed and two pruned trials over two parameters."""
    study = optuna.create_study(direction="maximize", study_name="tune-bloodmnist")
    study.set_user_attr("metric", "auc")
    space = {
        "lr": FloatDistribution(1e-4, 1e-1, log=True),
        "mix": CategoricalDistribution(["none", "mixup"]),
    }
    for i in range(10):
        params = {"lr": 10 ** (-4 + 0.3 * i), "mix": ["none", "mixup"][i % 2]}
        if i in (3, 7):
            state, value, reported = TrialState.PRUNED, None, {0: 0.5 + 0.01 * i}
        else:
            state, value, reported = TrialState.COMPLETE, 0.6 + 0.03 * (i % 5), {}
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params=params,
                distributions=space,
                intermediate_values=reported,
            )
        )
    return study


@pytest.mark.parametrize("plot", [plot_history, plot_importance])
def test_each_tune_plot_is_a_readable_png_at_the_path_it_returns(plot, tmp_path):
    rc_before = dict(matplotlib.rcParams)
    path = plot(_finished_study(), tmp_path / "plot.png")
    assert path == tmp_path / "plot.png"
    assert path.stat().st_size > 10_000  # axes, points and labels, not an empty canvas
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > 300 and width > 400
    assert dict(matplotlib.rcParams) == rc_before  # Optuna's ggplot style stays inside
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temporary left
