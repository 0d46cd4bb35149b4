"""The `medbench` command: options built from the library's constants, flags mapped onto
TrainConfig, and every user error as one line with exit code 2."""

from __future__ import annotations

import argparse
import json

import pytest

from medbench.cli import build_parser, main
from medbench.commands._options import base_config, config_overrides
from medbench.config import DEVICES, PRECISIONS
from medbench.data.catalogue import SIZES
from medbench.errors import MedbenchError


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
    assert set(with_choices) == {"benchmark", "models", "search", "train", "transfer", "tune"}
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
