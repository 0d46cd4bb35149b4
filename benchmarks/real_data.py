"""Default models with default settings on the real MedMNIST files, several seeds.

Runs the benchmark grid (`medbench.benchmark.run_benchmark`) on BreastMNIST and
PneumoniaMNIST from `../shared/medmnist` with a wall-clock budget per run (per dataset),
then writes mean +- std test ACC/AUC and train time per model to a Markdown table beside
the published MedMNIST v2 ResNet-18 (28 px) numbers. Finished runs in --out are reused.

    python benchmarks/real_data.py --seeds 3 --budget breastmnist=60 --budget pneumoniamnist=150 \
        --write docs/real_data.md

`--config JSON` applies training options to every run (as `medbench benchmark --config`),
e.g. `'{"model_options": {"width": 0.25}}'`; a model's non-default options appear beside
its name in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

from _common import SHARED_DATA, mean_std, replace_section, seeds_argument
from medbench.benchmark import run_benchmark
from medbench.report import build_report

PUBLISHED_R18_28 = {  # MedMNIST v2 (Yang et al., Scientific Data 2023), test ACC / AUC
    "breastmnist": (0.863, 0.901),
    "pneumoniamnist": (0.854, 0.944),
}


def label(model: str, options: dict) -> str:
    """`model`, or `model (width=0.25)` when the config sets model options."""
    return model + (
        " (" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")" if options else ""
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-dir", default=str(SHARED_DATA))
    p.add_argument("--models", default="advanced_cnn,efficientnet,resnet18")
    p.add_argument(
        "--seeds",
        type=seeds_argument,
        default=seeds_argument("3"),
        help="a count (seeds 0..N-1) or a list such as 3,4,5",
    )
    p.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="DATASET=SECONDS",
        help="time budget per run for a dataset (repeatable)",
    )
    p.add_argument("--epochs", type=int, help="fixed epochs instead of budgets")
    p.add_argument("--config", type=json.loads, help="training options (JSON) for every run")
    p.add_argument("--out", default="/tmp/medbench-real-data")
    p.add_argument("--write", help="write the Markdown table to this file")
    args = p.parse_args()

    budgets = dict(item.split("=") for item in args.budget) or {
        "breastmnist": "60",
        "pneumoniamnist": "150",
    }
    load_before = os.getloadavg()[0]
    for dataset, seconds in budgets.items():
        run_benchmark(
            [dataset],
            args.models,
            args.seeds,
            out=args.out,
            data_dir=args.data_dir,
            time_budget_seconds=None if args.epochs else float(seconds),
            epochs=args.epochs,
            config=args.config,
            report=False,
        )
    build_report(args.out)

    options = (args.config or {}).get("model_options") or {}
    rows = []
    for dataset in budgets:
        for model in args.models.split(","):
            runs = []
            for path in sorted(Path(args.out).rglob("results.json")):
                r = json.loads(path.read_text())
                if not isinstance(r, dict):  # the report's own results.json (a list)
                    continue
                if (
                    r["dataset"]["name"] == dataset
                    and r["model"]["name"] == model
                    and (r["config"].get("model_options") or {}) == options
                ):
                    runs.append(r)
            if not runs:
                continue
            acc = [r["metrics"]["test"]["acc"] for r in runs]
            auc = [r["metrics"]["test"]["auc"] for r in runs]
            secs = [r["timing"]["train_seconds"] for r in runs]
            pub_acc, pub_auc = PUBLISHED_R18_28[dataset]
            beats = (
                "yes" if statistics.mean(acc) > pub_acc and statistics.mean(auc) > pub_auc else "no"
            )
            flags = sum(bool(r["flags"]) for r in runs)
            rows.append(
                f"| {dataset} | {label(model, options)} | {len(runs)} | {mean_std(acc)} | {mean_std(auc)} | "
                f"{pub_acc:.3f} / {pub_auc:.3f} | {beats} | {statistics.mean(secs):.0f} | "
                f"{statistics.mean([r.get('rounds_completed', r.get('epochs_completed')) for r in runs]):.1f} | {flags} |"
            )
    length = (
        f"{args.epochs} epochs"
        if args.epochs
        else "budget per run: " + ", ".join(f"{d} {s}s" for d, s in budgets.items())
    )
    changes = {k: v for k, v in (args.config or {}).items() if k != "model_options"}
    settings = "Default settings" + (
        " but " + ", ".join(f"`{k}={v}`" for k, v in changes.items()) if changes else ""
    )
    select = changes.get("select_metric", "auc")
    measured = (
        "test metrics of the final weights"
        if select == "last"
        else f"test metrics of the epoch selected on validation {select.upper()}"
    )
    text = "\n".join(
        [
            f"{settings}, {length}, {torch.get_num_threads()} CPU threads, seeds {', '.join(map(str, args.seeds))}; "
            f"{measured}. Load average (1 min) at the "
            f"start {load_before:.1f}, at the end {os.getloadavg()[0]:.1f}, on {os.cpu_count()} cores.",
            "",
            "| dataset | model | runs | test ACC | test AUC | published ResNet-18 (28) ACC / AUC | beats both | "
            "train s | epochs | collapse flags |",
            "|---|---|---:|---|---|---|---|---:|---:|---:|",
            *rows,
        ]
    )
    print(text)
    if args.write:  # the doc's results section; the prose around it is kept
        replace_section(args.write, "<!-- results -->", "<!-- /results -->", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
