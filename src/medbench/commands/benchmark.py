"""`medbench benchmark`: the whole study in one command (see medbench.benchmark)."""

from __future__ import annotations

import argparse
import sys

from medbench.benchmark import (
    DEFAULT_CPU_TOTAL_BUDGET_SECONDS,
    DEFAULT_DATASETS,
    DEFAULT_MODELS,
    DEFAULT_OUT,
    DEFAULT_SEEDS,
    format_seconds,
    run_benchmark,
)
from medbench.config import DEVICES, parse_duration

NAME = "benchmark"
ORDER = 0
HELP = "train and compare models on MedMNIST datasets, resumably, and write the report"
DESCRIPTION = (
    f"Run a grid of training runs (datasets x models x seeds) into a results store and write the "
    f"report. With no options it reproduces the reference study: {', '.join(DEFAULT_DATASETS)} x "
    f"{', '.join(DEFAULT_MODELS)} at 28 px, {DEFAULT_SEEDS} seeds. A rerun skips finished runs and resumes "
    "interrupted ones; several processes may run the same grid into the same folder at once. "
    f"Without a GPU and without --epochs/--time-budget the grid shares a "
    f"{format_seconds(DEFAULT_CPU_TOTAL_BUDGET_SECONDS)} budget."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", help=f"comma-separated datasets (default {','.join(DEFAULT_DATASETS)})")
    parser.add_argument("--models", help=f"comma-separated models (default {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--seeds", default=str(DEFAULT_SEEDS),
                        help=f"a count N (seeds 0..N-1) or a list like 0,3,7 (default {DEFAULT_SEEDS})")
    parser.add_argument("--size", type=int, default=28, choices=(28, 64, 128, 224), help="image size in pixels (default 28)")
    length = parser.add_argument_group("run length (default: engine epochs on a GPU, a shared budget on CPU)")
    length.add_argument("--epochs", type=int, help="epochs per run")
    length.add_argument("--time-budget", type=parse_duration, metavar="DURATION",
                        help="wall-clock budget per run, e.g. 90s, 10m")
    length.add_argument("--total-time-budget", type=parse_duration, metavar="DURATION",
                        help="budget for the whole grid, split evenly over the runs not yet finished, e.g. 1h")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--data-dir", help="folder with the MedMNIST .npz files (default: medmnist's cache)")
    parser.add_argument("--config", metavar="FILE", help="JSON file of training options applied to every run")
    parser.add_argument("--device", choices=DEVICES, help="device (default auto)")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    outcome = run_benchmark(
        datasets=args.datasets, models=args.models, seeds=args.seeds, size=args.size,
        epochs=args.epochs, time_budget_seconds=args.time_budget,
        total_time_budget_seconds=args.total_time_budget, out=args.out, data_dir=args.data_dir,
        config=args.config, device=args.device, report=not args.no_report,
        progress=False if args.quiet else None,
    )
    c = outcome.counts
    print(f"{c.get('finished', 0)}/{len(outcome.cells)} runs finished, {c.get('failed', 0)} failed "
          f"({len(outcome.trained)} trained by this process); results in {outcome.out}")
    if outcome.report is not None:
        print(f"report: {outcome.report.markdown} and {outcome.report.html}")
    for row in outcome.failed:
        print(f"failed: {row['dataset']}/{row['model']}/seed{row['seed']}: {row['error']}", file=sys.stderr)
    return 1 if outcome.failed else 0
