"""`medbench robustness`: finished runs under their dataset's MedMNIST-C corruptions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medbench.analysis.robustness import (
    DEFAULT_BASELINE,
    Score,
    evaluate_runs,
    find_runs,
    summarize,
)
from medbench.analysis.robustness_files import report_markdown, write_robustness
from medbench.cli.commands._options import add_data_dir, add_device

NAME = "robustness"
HELP = "evaluate runs under MedMNIST-C corruptions x severities 1-5: balanced error, BE, rBE"
ORDER = 26
DESCRIPTION = (
    "Evaluate each finished run on its dataset's MedMNIST-C corruptions (Di Salvo et al. "
    "2024) at severities 1-5, applied on the fly at the run's own image size. Reports the "
    "balanced error (1 - balanced accuracy) per corruption and severity, and BE / rBE "
    "relative to a baseline model trained at the same size. A RUN may be a run folder or a "
    "benchmark's output folder (every finished run below it). Each run's scores are kept "
    "in OUT/per-run, so an interrupted evaluation continues where it stopped."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders or folders of runs")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the results")
    parser.add_argument(
        "--baseline",
        default=DEFAULT_BASELINE,
        metavar="MODEL",
        help=f"model whose runs BE and rBE are relative to (default {DEFAULT_BASELINE})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the corruptions' random draws (default 0)"
    )
    add_device(parser)
    add_data_dir(parser)


def run(args: argparse.Namespace) -> int:
    runs = find_runs(args.runs)

    def show(score: Score) -> None:
        if score.severity == 5:
            print(f"  {score.corruption}: done", file=sys.stderr)

    results = evaluate_runs(
        runs,
        Path(args.out) / "per-run",
        data_dir=args.data_dir,
        device=args.device,
        seed=args.seed,
        on_score=show,
        on_run=lambda k, path: print(f"[{k}/{len(runs)}] {path}", file=sys.stderr),
    )
    summaries = summarize(results, args.baseline)
    for path in write_robustness(results, summaries, args.out):
        print(f"wrote {path}", file=sys.stderr)
    print(report_markdown(summaries))
    return 0
