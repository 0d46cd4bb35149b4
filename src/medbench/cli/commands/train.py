"""`medbench train`: train one model on one dataset."""

from __future__ import annotations

import argparse
import json
import warnings

from medbench.cli.commands._options import (
    DEFAULT_SIZE,
    add_data_dir,
    add_size,
    add_training_options,
    base_config,
    config_overrides,
    tracking_options,
)
from medbench.errors import MedbenchWarning
from medbench.runs.results import RunResults
from medbench.training import distributed
from medbench.training.callbacks import Callback, RunInfo
from medbench.training.engine import train

NAME = "train"
HELP = "train one model on one dataset and evaluate it"
ORDER = 20
DESCRIPTION = (
    "Train MODEL on DATASET, select the best epoch on the validation split, then report the "
    "official MedMNIST ACC/AUC and more on the test split. Everything goes to the run folder: "
    "checkpoint.pt (after every epoch; removed at the end unless --keep-checkpoint), model.pt, "
    "predictions.npz and results.json. Under torchrun it trains with DistributedDataParallel, "
    "one process per GPU (docs/distributed.md)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        help="MedMNIST dataset, e.g. dermamnist (see 'medbench datasets'); may come from "
        "--config instead",
    )
    parser.add_argument(
        "--model",
        help="model name (see 'medbench models') or timm:<name>; may come from --config instead",
    )
    add_size(
        parser,
        help=f"image size in pixels (default: --config's, else {DEFAULT_SIZE})",
        default=None,
    )
    parser.add_argument("--seed", type=int, help="random seed (default: --config's, else 0)")
    parser.add_argument(
        "--run-dir",
        metavar="DIR",
        help="run folder (default runs/<dataset>_<size>-<model>-seed<N>-<time>)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its checkpoint"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    add_data_dir(parser)
    add_training_options(parser)


def run(args: argparse.Namespace) -> int:
    tracking = tracking_options(args)  # an unknown --log is refused before anything runs
    config = base_config(args, config_overrides(args), run_dir=args.run_dir)
    speaks = distributed.is_main()  # under torchrun only rank 0 prints
    if not speaks:
        warnings.simplefilter("ignore", MedbenchWarning)  # cli.main restores the filters
    results = train(
        config,
        resume=args.resume,
        progress=False if (args.quiet or not speaks) else None,
        callbacks=[_RememberRunDir(args), *(tracking.loggers() if tracking else [])],
    )
    distributed.cleanup()
    if not speaks:
        return 0
    if args.json:
        print(json.dumps(results.to_json(), indent=2, default=str))
    else:
        print(summary_line(results))
    return 0


class _RememberRunDir(Callback):
    """Put the run folder the engine chose on `args`, for `resume_hint`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def on_train_start(self, run: RunInfo) -> None:
        self.args.run_dir = str(run.run_dir)


def resume_hint(args: argparse.Namespace) -> str:
    """What Ctrl-C says: how to continue the run from its last checkpoint."""
    if not args.run_dir:
        return "it stopped before training started: run the same command again"
    return (
        "continue from the last checkpoint with the same command and "
        f"--resume --run-dir {args.run_dir}"
    )


def summary_line(results: RunResults) -> str:
    t, v = results.test, results.val
    ci = results.metrics.get("test_intervals") or {}
    flag = "  COLLAPSE: " + "; ".join(results.flags) if results.flags else ""
    return (
        f"{results.dataset['name']}/{results.model.name} seed {results.config['seed']}: "
        f"test ACC {t['acc']:.4f}{_bounds(ci.get('acc'))} AUC {t['auc']:.4f}"
        f"{_bounds(ci.get('auc'))} (val ACC {v['acc']:.4f} AUC {v['auc']:.4f}), "
        f"{results.model.params_m:.2f}M params, {results.model.gflops:.3f} GFLOPs, "
        f"efficiency {results.efficiency:.2f} %/M, {results.timing.train_seconds:.0f}s -> "
        f"{results.run_dir}{flag}"
    )


def _bounds(bounds: list | None) -> str:
    """ " [low, high]" of a stored 95% interval, "" where there is none."""
    if not bounds or bounds[0] is None:
        return ""
    return f" [{bounds[0]:.3f}, {bounds[1]:.3f}]"
