"""`medbench tune`: an Optuna study of training recipes for one model on one dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from medbench.commands._options import (
    add_data_dir,
    add_training_options,
    base_config,
    config_overrides,
)
from medbench.config import parse_duration
from medbench.tune import PRUNERS, TUNABLE

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
    "(use it with 'medbench train --config'), tune_summary.json, history.png, importance.png."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="MedMNIST dataset, e.g. breastmnist")
    parser.add_argument("--model", required=True, help="model name or timm:<name>")
    parser.add_argument("--size", type=int, default=28, choices=(28, 64, 128, 224))
    parser.add_argument("--seed", type=int, default=0, help="seed of every trial and the sampler")
    parser.add_argument(
        "--out", metavar="DIR", help="output folder (default runs/tune-<dataset>-<model>)"
    )
    parser.add_argument(
        "--trials",
        type=int,
        required=True,
        help="finished trials the study should have in total (existing ones count)",
    )
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="default median")
    parser.add_argument(
        "--metric", choices=("auc", "acc"), default="auc", help="validation metric to maximise"
    )
    parser.add_argument("--max-epochs", type=int, default=20, help="longest trial (default 20)")
    parser.add_argument("--min-epochs", type=int, help="shortest trial (default max-epochs/4)")
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="SQLAlchemy URL of the study database, e.g. postgresql://host/db (default sqlite in --out)",
    )
    parser.add_argument(
        "--study", metavar="NAME", help="study name (default tune-<dataset>-<size>-<model>)"
    )
    parser.add_argument(
        "--timeout", metavar="DURATION", help="start no new trial after this long, e.g. 2h"
    )
    parser.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        metavar="SECONDS",
        help="a trial silent for 2 heartbeats is taken as dead and retried (default 60)",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-trial lines")
    add_data_dir(parser)
    add_training_options(parser)


def run(args: argparse.Namespace) -> int:
    from medbench.distributed import refuse_launch
    from medbench.tune import tune

    refuse_launch("tune")

    values = config_overrides(args)
    fixed = {k: v for k, v in values.items() if k in TUNABLE}
    base = base_config(args, values)
    out = Path(args.out or f"runs/tune-{args.dataset}-{args.model.replace(':', '-')}")
    result = tune(
        base,
        out,
        args.trials,
        fixed=fixed,
        storage=args.storage,
        study_name=args.study,
        pruner=args.pruner,
        metric=args.metric,
        min_epochs=args.min_epochs,
        max_epochs=args.max_epochs,
        heartbeat_seconds=args.heartbeat,
        timeout_seconds=parse_duration(args.timeout) if args.timeout else None,
        progress=not args.quiet,
    )
    print(
        f"study {result.study_name}: {result.n_finished} trials finished; best trial "
        f"{result.best_trial} val {args.metric} {result.best_value:.4f} -> {result.best_config_path}"
    )
    return 0
