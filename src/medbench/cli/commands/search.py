"""`medbench search`: multi-objective architecture search within a model family."""

from __future__ import annotations

import argparse
from pathlib import Path

from medbench.cli.commands._options import (
    add_study_options,
    add_study_target,
    base_config,
    config_overrides,
    study_arguments,
    study_out_dir,
)
from medbench.errors import MedbenchError
from medbench.training.distributed import refuse_launch
from medbench.workflows.nas import COSTS, SPACES, export_architecture, search
from medbench.workflows.studies import default_storage

NAME = "search"
HELP = "search a model family's architectures for the accuracy/size Pareto front"
ORDER = 45
DESCRIPTION = (
    "Search the architecture options of MODEL (" + ", ".join(SPACES) + ", or your own model "
    "whose builder has a search_space attribute) on DATASET with "
    "Optuna's NSGA-II, maximising the validation metric and minimising parameters or FLOPs. "
    "Every trial trains with the same recipe (flags or --config, e.g. a tune's best_config.json). "
    "Writes OUT/pareto.json, pareto.csv and pareto.png; the study is kept in OUT/search.sqlite "
    "(or --storage) so it resumes and can be shared by several processes. Then save a point of "
    "the front with --export-trial N --name NAME and train it with 'medbench train --config'."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_target(
        parser,
        "search",
        model_help=f"model family: {', '.join(SPACES)}, or file.py:fn / module:fn with a "
        "search_space",
        required=False,
    )
    parser.add_argument(
        "--cost", choices=COSTS, default="params", help="objective to minimise (default params)"
    )
    parser.add_argument("--population", type=int, default=20, help="NSGA-II population size")
    add_study_options(parser, "search")
    e = parser.add_argument_group("export")
    e.add_argument(
        "--export-trial",
        type=int,
        metavar="N",
        help="instead of searching: save trial N's architecture (see pareto.csv) as a config file",
    )
    e.add_argument(
        "--name",
        help="with --export-trial: the architecture's name (file OUT/architectures/NAME.json)",
    )


def run(args: argparse.Namespace) -> int:
    refuse_launch("search")
    return _export(args) if args.export_trial is not None else _search(args)


def _export(args: argparse.Namespace) -> int:
    if not (args.name and (args.out or (args.storage and args.study))):
        raise MedbenchError(
            "--export-trial needs --name and the search's --out (or --storage and --study)"
        )
    storage = args.storage or default_storage(args.out, "search")
    path = Path(args.out or ".") / "architectures" / f"{args.name}.json"
    arch = export_architecture(storage, args.study, args.export_trial, path)
    print(f"saved trial {args.export_trial} ({arch['model']} {arch['model_options']}) as {path}")
    return 0


def _search(args: argparse.Namespace) -> int:
    if not (args.dataset and args.model and args.trials):
        raise MedbenchError("a search needs --dataset, --model and --trials")
    args.out = study_out_dir(args, "search")  # named by Ctrl-C's resume hint (medbench.cli)
    result = search(
        base_config(args, config_overrides(args)),
        n_trials=args.trials,
        cost=args.cost,
        population_size=args.population,
        **study_arguments(args, "search"),
    )
    print(
        f"study {result.study_name}: {result.n_finished} trials; Pareto front (trial, val, params):"
    )
    metric_key = f"val_{args.metric}"
    for row in result.front:
        print(
            f"  {row['trial']:4d}  {row[metric_key]:.4f}  {row['n_params'] / 1e6:.3f}M  {row['model_options']}"
        )
    print(f"-> {result.files[0].parent}/pareto.{{json,csv,png}}")
    return 0
