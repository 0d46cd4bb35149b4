"""`medbench tune`: an Optuna study of training recipes for one model on one dataset."""

from __future__ import annotations

import argparse

from medbench.cli.commands._options import (
    add_study_options,
    add_study_target,
    base_config,
    config_overrides,
    study_arguments,
    study_out_dir,
)
from medbench.training.distributed import refuse_launch
from medbench.workflows.tune import PRUNERS, TUNABLE, tune

NAME = "tune"
HELP = "tune learning rate, regularisation, augmentation and epochs with Optuna"
ORDER = 40
DESCRIPTION = (
    "Search the training recipe of MODEL on DATASET with Optuna's TPE sampler, pruning poor "
    "trials on the per-epoch validation metric. Searched: learning rate, weight decay, batch "
    "size, label smoothing, augmentation policy, MixUp/CutMix, dropout, drop-path and epochs; "
    "training options you give (flags or --config) are held fixed instead. The study is kept "
    "in OUT/tune.sqlite (or --storage), so a killed tune resumes where it stopped and several "
    "processes or machines can run the same command on one study. Writes OUT/best_config.json "
    "(the best trial's dataset, model, size, seed and recipe: 'medbench train --config FILE' "
    "trains it again), tune_summary.json, history.png, importance.png."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_target(parser, "tune", model_help="model name or timm:<name>", required=True)
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="default median")
    parser.add_argument("--max-epochs", type=int, default=20, help="longest trial (default 20)")
    parser.add_argument("--min-epochs", type=int, help="shortest trial (default max-epochs/4)")
    add_study_options(parser, "tune")


def run(args: argparse.Namespace) -> int:
    refuse_launch("tune")
    args.out = study_out_dir(args, "tune")  # named by Ctrl-C's resume hint (medbench.cli)
    values = config_overrides(args)
    result = tune(
        base_config(args, values),
        n_trials=args.trials,
        fixed={k: v for k, v in values.items() if k in TUNABLE},
        pruner=args.pruner,
        min_epochs=args.min_epochs,
        max_epochs=args.max_epochs,
        **study_arguments(args, "tune"),
    )
    print(
        f"study {result.study_name}: {result.n_finished} trials finished; best trial "
        f"{result.best_trial} val {args.metric} {result.best_value:.4f} -> {result.best_config_path}"
    )
    for note in result.notes:
        print(f"note: {note}")
    return 0
