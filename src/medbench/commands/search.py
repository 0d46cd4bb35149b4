"""`medbench search`: multi-objective architecture search within a model family."""

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
from medbench.search import COSTS, SPACES

NAME = "search"
HELP = "search a model family's architectures for the accuracy/size Pareto front"
ORDER = 45
DESCRIPTION = (
    "Search the architecture options of MODEL (" + ", ".join(SPACES) + ") on DATASET with "
    "Optuna's NSGA-II, maximising the validation metric and minimising parameters or FLOPs. "
    "Every trial trains with the same recipe (flags or --config, e.g. a tune's best_config.json). "
    "Writes OUT/pareto.json, pareto.csv and pareto.png; the study is kept in OUT/search.sqlite "
    "(or --storage) so it resumes and can be shared by several processes. Then save a point of "
    "the front with --export-trial N --name NAME and train it with 'medbench train --config'."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="MedMNIST dataset, e.g. breastmnist")
    parser.add_argument("--model", help=f"model family: {', '.join(SPACES)}")
    parser.add_argument("--size", type=int, default=28, choices=(28, 64, 128, 224))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", metavar="DIR", help="output folder (default runs/search-<dataset>-<model>)"
    )
    parser.add_argument("--trials", type=int, help="finished trials the study should have in total")
    parser.add_argument(
        "--cost", choices=COSTS, default="params", help="objective to minimise (default params)"
    )
    parser.add_argument("--metric", choices=("auc", "acc"), default="auc")
    parser.add_argument("--population", type=int, default=20, help="NSGA-II population size")
    parser.add_argument("--storage", metavar="URL", help="SQLAlchemy URL (default sqlite in --out)")
    parser.add_argument(
        "--study", metavar="NAME", help="study name (default search-<dataset>-<size>-<model>)"
    )
    parser.add_argument("--timeout", metavar="DURATION", help="start no new trial after this long")
    parser.add_argument("--heartbeat", type=int, default=60, metavar="SECONDS")
    parser.add_argument(
        "--export-trial",
        type=int,
        metavar="N",
        help="instead of searching: save trial N's architecture (see pareto.csv) as a config file",
    )
    parser.add_argument(
        "--name",
        help="with --export-trial: the architecture's name (file OUT/architectures/NAME.json)",
    )
    parser.add_argument("--quiet", action="store_true")
    add_data_dir(parser)
    add_training_options(parser)


def run(args: argparse.Namespace) -> int:
    from medbench.distributed import refuse_launch
    from medbench.errors import MedbenchError
    from medbench.search import export_architecture, search
    from medbench.tune import default_storage

    refuse_launch("search")

    if args.export_trial is not None:
        if not (args.name and (args.out or (args.storage and args.study))):
            raise MedbenchError(
                "--export-trial needs --name and the search's --out (or --storage and --study)"
            )
        storage = args.storage or default_storage(args.out, "search.sqlite")
        if args.study:
            study = args.study
        else:
            import optuna

            names = optuna.get_all_study_names(storage)
            if len(names) != 1:
                raise MedbenchError(f"{storage} holds studies {names}; pick one with --study")
            study = names[0]
        path = Path(args.out or ".") / "architectures" / f"{args.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        arch = export_architecture(storage, study, args.export_trial, path)
        print(
            f"saved trial {args.export_trial} ({arch['model']} {arch['model_options']}) as {path}"
        )
        return 0
    if not (args.dataset and args.model and args.trials):
        raise MedbenchError("a search needs --dataset, --model and --trials")
    values = config_overrides(args)
    base = base_config(args, values)
    out = Path(args.out or f"runs/search-{args.dataset}-{args.model}")
    result = search(
        base,
        out,
        args.trials,
        cost=args.cost,
        metric=args.metric,
        storage=args.storage,
        study_name=args.study,
        population_size=args.population,
        heartbeat_seconds=args.heartbeat,
        timeout_seconds=parse_duration(args.timeout) if args.timeout else None,
        progress=not args.quiet,
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
