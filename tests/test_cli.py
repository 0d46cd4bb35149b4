"""The `medbench` command: options built from the library's constants, flags mapped onto
TrainConfig, and every user error as one line with exit code 2."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from medbench.cli import build_parser, command_summaries, interrupted_message, main
from medbench.cli.commands._options import base_config, config_overrides
from medbench.data.catalogue import SIZES
from medbench.errors import MedbenchError
from medbench.training.config import DEVICES, PRECISIONS
from medbench.workflows.benchmark import DEFAULT_OUT


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(dest: str) -> dict[str, argparse.Action]:
    """Each command's action for `dest`, by command name."""
    found = {}
    for name, parser in _commands().items():
        for action in parser._actions:
            if action.dest == dest:
                found[name] = action
    return found


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medbench: error: "), err
    return err


def test_an_image_size_outside_the_catalogue_is_refused_with_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--dataset", "breastmnist", "--model", "advanced_cnn", "--size", "30"])
    assert exit_.value.code == 2
    assert "invalid choice: 30" in _one_line_error(capsys)


def test_every_size_choice_is_the_catalogue_s_sizes():
    with_choices = {n: a.choices for n, a in _options("size").items() if a.choices is not None}
    assert set(with_choices) == {
        "audit",
        "benchmark",
        "models",
        "search",
        "train",
        "transfer",
        "tune",
    }
    assert all(tuple(choices) == SIZES for choices in with_choices.values())


def test_the_help_lists_exactly_the_catalogue_s_sizes(capsys):
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    assert "--size {" + ",".join(map(str, SIZES)) + "}" in capsys.readouterr().out


def test_every_device_and_precision_choice_is_the_library_s():
    devices, precisions = _options("device"), _options("precision")
    assert {"ensemble", "evaluate", "predict", "train", "tune"} <= set(devices)
    assert all(tuple(a.choices) == DEVICES for a in devices.values())
    assert {"predict", "train"} <= set(precisions)
    assert all(tuple(a.choices) == PRECISIONS for a in precisions.values())


def test_data_dir_means_the_same_in_every_command():
    helps = {name: action.help for name, action in _options("data_dir").items()}
    assert {"datasets", "download", "train", "tune", "search", "evaluate"} <= set(helps)
    assert len(set(helps.values())) == 1


def test_a_check_of_the_python_api_reaches_the_cli_as_one_line_and_exit_2(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the default output folder is relative
    args = ["tune", "--dataset", "breastmnist", "--model", "advanced_cnn", "--trials", "0"]
    assert main(args) == 2
    assert _one_line_error(capsys) == "medbench: error: --trials must be at least 1, not 0\n"
    assert not (tmp_path / "runs").exists()


def test_a_search_needs_a_dataset_a_model_and_a_trial_count(capsys):
    assert main(["search", "--model", "advanced_cnn", "--trials", "2"]) == 2
    assert "a search needs --dataset, --model and --trials" in _one_line_error(capsys)


def test_exporting_a_searched_architecture_needs_its_name(capsys, tmp_path):
    assert main(["search", "--export-trial", "1", "--out", str(tmp_path)]) == 2
    assert "--export-trial needs --name" in _one_line_error(capsys)


def test_training_without_a_model_is_refused(capsys):
    assert main(["train", "--dataset", "breastmnist"]) == 2
    assert "say which model to train" in _one_line_error(capsys)


def test_resuming_without_the_run_folder_is_refused(capsys):
    assert main(["train", "--dataset", "breastmnist", "--model", "advanced_cnn", "--resume"]) == 2
    assert "--run-dir" in _one_line_error(capsys)


def _train_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", "--dataset", "breastmnist", *flags])


def test_flags_win_over_a_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "resnet18", "lr": 0.1, "epochs": 3}))
    args = _train_args("--config", str(path), "--lr", "0.5")
    config = base_config(args, config_overrides(args))
    assert (config.model, config.lr, config.epochs) == ("resnet18", 0.5, 3)


def test_a_time_budget_flag_is_a_duration_in_seconds():
    assert config_overrides(_train_args("--time-budget", "2m"))["time_budget_seconds"] == 120


def test_a_grad_clip_of_zero_turns_clipping_off():
    assert config_overrides(_train_args("--grad-clip", "0"))["grad_clip"] is None


def test_model_options_are_json_where_they_parse_and_strings_otherwise():
    args = _train_args("--model-option", "depths=[1,2]", "--model-option", "act=gelu")
    assert config_overrides(args)["model_options"] == {"depths": [1, 2], "act": "gelu"}


def test_a_model_option_without_a_value_is_refused():
    with pytest.raises(MedbenchError, match="--model-option expects KEY=VALUE"):
        config_overrides(_train_args("--model-option", "width"))


# ---- help


def _helps() -> dict[str, str]:
    """The --help text of medbench and of every command."""
    parser = build_parser()
    return {"medbench": parser.format_help()} | {
        name: p.format_help() for name, p in _commands().items()
    }


def test_no_help_shows_a_doubled_percent_sign():
    doubled = [name for name, text in _helps().items() if "%%" in text]
    assert not doubled, f"argparse printed '%%' in the help of: {', '.join(doubled)}"


def test_the_model_card_help_shows_its_intervals_as_95_percent():
    assert "95% intervals" in " ".join(_commands()["card"].format_help().split())


def test_every_command_s_summary_read_from_its_source_is_the_module_s_own():
    for summary in command_summaries():
        mod = importlib.import_module(summary.module)
        assert (summary.name, summary.help, summary.order) == (mod.NAME, mod.HELP, mod.ORDER)


def test_the_help_lists_every_command_without_importing_torch():
    code = (
        "import sys\nfrom medbench.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert out.rstrip().endswith("torch not imported")
    assert all(f"    {name}" in out for name in _commands())


# ---- output into a closed pipe


@pytest.mark.slow
def test_output_into_a_closed_pipe_ends_quietly():
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written, as after `| head`
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "medbench", "datasets", "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 1


# ---- Ctrl-C


def test_an_interrupted_train_says_how_to_resume_it():
    args = _train_args("--model", "advanced_cnn", "--run-dir", "runs/r1")
    assert interrupted_message(args) == (
        "medbench: interrupted; continue from the last checkpoint with the same command and "
        "--resume --run-dir runs/r1"
    )


@pytest.mark.parametrize(
    "argv, out",
    [
        (["benchmark"], DEFAULT_OUT),
        (["benchmark", "--out", "b"], "b"),
        (["tune", "--dataset", "d", "--model", "m", "--trials", "2", "--out", "t"], "t"),
    ],
)
def test_an_interrupted_study_says_to_run_it_again_with_its_out_folder(argv, out):
    args = build_parser().parse_args(argv)
    assert interrupted_message(args).endswith(
        f"run the same command again with --out {out} to resume"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "run", "x.png"],
        ["report", "b", "--out", "r"],
        ["export", "m", "--format", "onnx", "--out", "m.onnx"],
    ],
)
def test_a_command_that_cannot_resume_says_only_that_it_was_interrupted(argv):
    assert interrupted_message(build_parser().parse_args(argv)) == "medbench: interrupted"


def test_ctrl_c_during_training_names_the_run_folder_to_resume(tmp_path, capsys, monkeypatch):
    from medbench.data.synthetic import write_synthetic_like

    write_synthetic_like(tmp_path / "data", "breastmnist", 28, n_train=32, n_val=16, n_test=16)
    monkeypatch.chdir(tmp_path)  # the default run folder is runs/... here
    stop = threading.Event()

    def interrupt_after_the_first_checkpoint() -> None:
        while not stop.is_set():
            if list(tmp_path.glob("runs/*/checkpoint.pt")):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=interrupt_after_the_first_checkpoint, daemon=True)
    watcher.start()
    try:
        code = main(
            ["train", "--dataset", "breastmnist", "--model", "advanced_cnn", "--epochs", "500",
             "--batch-size", "16", "--device", "cpu", "--quiet", "--data-dir", str(tmp_path / "data"),
             "--model-option", "width=0.25", "--model-option", "depths=[1,1,1,1]"]
        )  # fmt: skip
    finally:
        stop.set()
        watcher.join()
    (run_dir,) = tmp_path.glob("runs/*")
    assert code == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith(f"--resume --run-dir {run_dir.relative_to(tmp_path)}")


# ---- a --config file may name the run


def test_a_config_file_may_give_the_dataset_size_and_seed_and_flags_still_win(tmp_path):
    path = tmp_path / "best.json"
    recipe = {"dataset": "breastmnist", "model": "resnet18", "size": 64, "seed": 3, "lr": 0.1}
    path.write_text(json.dumps({"config": recipe, "notes": []}))
    args = build_parser().parse_args(["train", "--config", str(path)])
    config = base_config(args, config_overrides(args))
    assert (config.dataset, config.model, config.size, config.seed, config.lr) == (
        "breastmnist", "resnet18", 64, 3, 0.1,
    )  # fmt: skip
    args = build_parser().parse_args(
        ["train", "--config", str(path), "--size", "28", "--seed", "0"]
    )
    config = base_config(args, config_overrides(args))
    assert (config.size, config.seed) == (28, 0)


def test_training_without_a_dataset_is_refused(capsys):
    assert main(["train", "--model", "advanced_cnn"]) == 2
    assert "say which dataset to train" in _one_line_error(capsys)


def test_keep_checkpoint_is_off_unless_the_flag_is_given():
    args = _train_args("--model", "advanced_cnn")
    assert "keep_checkpoint" not in config_overrides(args)
    assert base_config(args, config_overrides(args)).keep_checkpoint is False
    args = _train_args("--model", "advanced_cnn", "--keep-checkpoint")
    assert config_overrides(args)["keep_checkpoint"] is True
    assert base_config(args, config_overrides(args)).keep_checkpoint is True


def test_every_command_with_the_training_options_takes_keep_checkpoint():
    assert {"benchmark", "search", "train", "transfer", "tune"} <= set(_options("keep_checkpoint"))
