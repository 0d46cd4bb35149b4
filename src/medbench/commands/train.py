"""`medbench train`: train one model on one dataset."""

from __future__ import annotations

import argparse
import json
import warnings

from medbench import distributed
from medbench.commands._options import (
    add_data_dir,
    add_size,
    add_training_options,
    base_config,
    config_overrides,
)
from medbench.engine import train
from medbench.errors import MedbenchWarning
from medbench.results import RunResults

NAME = "train"
HELP = "train one model on one dataset and evaluate it"
ORDER = 20
DESCRIPTION = (
    "Train MODEL on DATASET, select the best epoch on the validation split, then report the "
    "official MedMNIST ACC/AUC and more on the test split. Everything goes to the run folder: "
    "checkpoint.pt (after every epoch), model.pt, predictions.npz and results.json. "
    "Under torchrun it trains with DistributedDataParallel, one process per GPU "
    "(docs/distributed.md)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        required=True,
        help="MedMNIST dataset, e.g. dermamnist (see 'medbench datasets')",
    )
    parser.add_argument(
        "--model",
        help="model name (see 'medbench models') or timm:<name>; may come from --config instead",
    )
    add_size(parser)
    parser.add_argument("--seed", type=int, default=0)
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
    config = base_config(args, config_overrides(args), run_dir=args.run_dir)
    speaks = distributed.is_main()  # under torchrun only rank 0 prints
    if not speaks:
        warnings.simplefilter("ignore", MedbenchWarning)  # cli.main restores the filters
    results = train(
        config, resume=args.resume, progress=False if (args.quiet or not speaks) else None
    )
    distributed.cleanup()
    if not speaks:
        return 0
    if args.json:
        print(json.dumps(results.to_json(), indent=2, default=str))
    else:
        print(summary_line(results))
    return 0


def summary_line(results: RunResults) -> str:
    t, v = results.test, results.val
    flag = "  COLLAPSE: " + "; ".join(results.flags) if results.flags else ""
    return (
        f"{results.dataset['name']}/{results.model.name} seed {results.config['seed']}: "
        f"test ACC {t['acc']:.4f} AUC {t['auc']:.4f} (val ACC {v['acc']:.4f} AUC {v['auc']:.4f}), "
        f"{results.model.params_m:.2f}M params, {results.model.gflops:.3f} GFLOPs, "
        f"efficiency {results.efficiency:.2f} %/M, {results.timing.train_seconds:.0f}s -> "
        f"{results.run_dir}{flag}"
    )
