"""`medbench compare`: paired tests between the models of finished runs on one dataset."""

from __future__ import annotations

import argparse
import json

from medbench.analysis.comparison import compare_runs

NAME = "compare"
HELP = "paired tests (DeLong, McNemar, Holm) between models of finished runs on one dataset"
ORDER = 37
DESCRIPTION = (
    "Compare every pair of models among finished runs of one dataset and size, on the same "
    "test images: the AUC difference by DeLong's test (a paired bootstrap for multi-class and "
    "multi-label sets), the accuracy difference by McNemar's test, both Holm-corrected over "
    "the pairs, with the smallest differences the test split can resolve. Runs are grouped "
    "by model and matched by seed. Give run folders or benchmark folders; see "
    "docs/statistics.md."
)

resume_hint = None  # a comparison reads saved predictions: there is nothing to resume


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="RUN_OR_GRID", help="run folders, or benchmark folders"
    )
    parser.add_argument(
        "--alpha", type=float, default=0.05, help="significance level (default 0.05)"
    )
    parser.add_argument(
        "--n-boot",
        type=int,
        default=2000,
        help="bootstrap resamples where a bootstrap is used (default 2000)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the header and one record per pair as JSON"
    )


def run(args: argparse.Namespace) -> int:
    comparison = compare_runs(*args.paths, alpha=args.alpha, n_boot=args.n_boot)
    if args.json:
        print(json.dumps(comparison.to_json(), indent=2, default=str))
    else:
        print(comparison.format_table())
    return 0
