"""`medbench benchmark`: the whole study in one command (see medbench.workflows.benchmark)."""

from __future__ import annotations

import argparse
import sys

from medbench.analysis.grid_analyses import GridExtras
from medbench.analysis.robustness import DEFAULT_BASELINE
from medbench.cli.commands._options import (
    add_data_dir,
    add_size,
    add_training_options,
    config_overrides,
    tracking_options,
)
from medbench.runs.store import STORE_NAME
from medbench.training.config import format_seconds, parse_duration
from medbench.training.distributed import refuse_launch
from medbench.workflows.benchmark import (
    DEFAULT_CPU_TOTAL_BUDGET_SECONDS,
    DEFAULT_DATASETS,
    DEFAULT_MODELS,
    DEFAULT_OUT,
    DEFAULT_SEEDS,
    BenchmarkConfig,
    run_benchmark,
)
from medbench.workflows.ensemble import METHODS

NAME = "benchmark"
ORDER = 0
HELP = "train and compare models on MedMNIST datasets, resumably, and write the report"
DESCRIPTION = (
    f"Run a grid of training runs (datasets x models x seeds) into a results store and write the "
    f"report. With no options it reproduces the reference study: {', '.join(DEFAULT_DATASETS)} x "
    f"{', '.join(DEFAULT_MODELS)} at 28 px, {DEFAULT_SEEDS} seeds. 2D and 3D datasets may be "
    "mixed: each trains the models of --models that are of its kind. A rerun skips finished runs and "
    "resumes interrupted ones; several processes may run the same grid into the same folder at "
    "once (--workers N starts N here; --storage URL shares the grid between machines). Run "
    "length: --epochs or --time-budget per run, or --total-time-budget for the grid; "
    f"with none of them a GPU trains the default epochs and a CPU shares a "
    f"{format_seconds(DEFAULT_CPU_TOTAL_BUDGET_SECONDS)} budget over the grid. The length is "
    "part of the grid: a folder whose grid started with another one is refused (use a new "
    "--out). The plan (speed, epochs, ETA per run) is printed before the work; --plan stops "
    "there."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("grid")
    g.add_argument(
        "--datasets", help=f"comma-separated datasets (default {','.join(DEFAULT_DATASETS)})"
    )
    g.add_argument("--models", help=f"comma-separated models (default {','.join(DEFAULT_MODELS)})")
    g.add_argument(
        "--seeds",
        default=str(DEFAULT_SEEDS),
        help=f"a count N (seeds 0..N-1) or a list like 0,3,7 (default {DEFAULT_SEEDS})",
    )
    add_size(g)
    g.add_argument(
        "--total-time-budget",
        metavar="DURATION",
        help="budget for the whole grid, e.g. 1h, split evenly over its runs when it is planned; "
        "a resumed grid spends what is left",
    )
    g.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default {DEFAULT_OUT})"
    )
    g.add_argument(
        "--storage",
        metavar="URL",
        help="SQLAlchemy URL of the results store's database, e.g. "
        "postgresql+psycopg://user@host/db, so processes on several machines share the grid "
        f"(default {STORE_NAME} in --out; the same flag as tune and search)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N processes on this machine, each with cores/N torch threads; on a GPU they "
        "share it (default 1)",
    )
    g.add_argument(
        "--ensemble",
        nargs="?",
        const="greedy",
        choices=METHODS,
        help="also build one ensemble per dataset from its finished runs (all models and seeds): "
        "greedy forward selection on validation (the default), average or weighted; "
        "saved under OUT/ensembles/ and shown in the report",
    )
    g.add_argument(
        "--robustness",
        nargs="?",
        const=DEFAULT_BASELINE,
        metavar="BASELINE",
        help="after the runs, evaluate each under its dataset's MedMNIST-C corruptions "
        f"(medbench robustness), BE/rBE relative to BASELINE (default {DEFAULT_BASELINE}, "
        "which the grid must train); saved under OUT/robustness/ and shown in the report",
    )
    g.add_argument(
        "--explain",
        action="store_true",
        help="after the runs, explain the first seed's run of each dataset and model "
        "(medbench explain: Grad-CAM, occlusion, faithfulness); saved under OUT/explain/ and "
        "shown in the report",
    )
    g.add_argument(
        "--plan",
        action="store_true",
        help="print the plan (each run's measured speed, the epochs its share buys, the ETA) "
        "and stop: nothing is trained or written",
    )
    g.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    g.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_data_dir(parser)
    add_training_options(parser)


def run(args: argparse.Namespace) -> int:
    refuse_launch("benchmark")
    config = BenchmarkConfig(
        datasets=args.datasets,
        models=args.models,
        seeds=args.seeds,
        size=args.size,
        total_time_budget_seconds=parse_duration(args.total_time_budget)
        if args.total_time_budget
        else None,
        out=args.out,
        train_config=config_overrides(args),
        report=not args.no_report,
        progress=False if args.quiet else None,
        ensemble=args.ensemble,
        plan=args.plan,
        storage=args.storage,
        workers=args.workers,
        tracking=tracking_options(args),
        extras=GridExtras(robustness_baseline=args.robustness, explain=args.explain),
    )
    outcome = run_benchmark(config)
    if args.plan:
        assert outcome.plan is not None  # run_benchmark returns its plan when asked to plan
        print("\n".join(outcome.plan.lines()))
        return 0
    c = outcome.counts
    print(
        f"{c.get('finished', 0)}/{len(outcome.cells)} runs finished, {c.get('failed', 0)} failed "
        f"({len(outcome.trained)} trained by this {'command' if args.workers > 1 else 'process'}); "
        f"results in {outcome.out}"
    )
    for r in outcome.ensembles:
        t, b = r["metrics"]["test"], r["best_single"]
        print(
            f"ensemble {r['dataset']['name']} ({r['method']}, {r['model']['n_members']} runs): "
            f"test ACC {t['acc']:.4f} AUC {t['auc']:.4f}; best single {b['name']} "
            f"ACC {b['test_acc']:.4f} AUC {b['test_auc']:.4f} -> {r['run_dir']}"
        )
    if outcome.report is not None:
        print(f"report: {outcome.report.markdown} and {outcome.report.html}")
    for row in outcome.failed:
        print(
            f"failed: {row['dataset']}/{row['model']}/seed{row['seed']}: {row['error']}",
            file=sys.stderr,
        )
    return 1 if outcome.failed else 0
