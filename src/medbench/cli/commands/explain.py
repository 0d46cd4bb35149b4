"""`medbench explain`: Grad-CAM and occlusion maps of a run's test cases, with faithfulness."""

from __future__ import annotations

import argparse
import sys

from medbench.analysis.explain import DEFAULT_PER_CLASS, DEFAULT_STEPS, METHODS
from medbench.analysis.explain_files import explain_run, summary_table
from medbench.cli.commands._options import add_data_dir, add_device

NAME = "explain"
HELP = "explain a trained run: Grad-CAM and occlusion galleries, deletion/insertion faithfulness"
ORDER = 27
DESCRIPTION = (
    "Explain a finished run's test predictions. For each class, up to --per-class correct and "
    "--per-class wrong test images get a Grad-CAM map (on a target layer chosen from the "
    "model's structure) and an occlusion map, for the predicted class and, when wrong, the "
    "true one (each positive label for multi-label sets), drawn over the image at its own "
    "resolution. Each map's faithfulness is its deletion and insertion AUC (Petsiuk et al. "
    "2018), beside a random map's. Writes report.md, report.html, gallery-*.png, "
    "faithfulness.csv, cases.csv, explain.json and explanations.npz into --out."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="run folder (or its model.pt)")
    parser.add_argument("--out", metavar="DIR", required=True, help="folder to write into")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated methods among {', '.join(METHODS)} (default: both)",
    )
    parser.add_argument(
        "--per-class",
        type=int,
        default=DEFAULT_PER_CLASS,
        help=f"correct and wrong test images explained per class (default {DEFAULT_PER_CLASS})",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"steps of the deletion and insertion curves (default {DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--layer",
        metavar="NAME",
        help="module Grad-CAM reads, e.g. stages.2 (default: chosen from the model's structure)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline map")
    add_device(parser)
    add_data_dir(parser)


def run(args: argparse.Namespace) -> int:
    result = explain_run(
        args.run_dir,
        args.out,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        per_class=args.per_class,
        steps=args.steps,
        layer_name=args.layer,
        data_dir=args.data_dir,
        device=args.device,
        seed=args.seed,
    )
    print(f"{result.model} on {result.dataset}: {len(result.rows)} (image, class) pairs explained")
    table = summary_table(result)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    for path in result.files.values():
        print(f"wrote {path}", file=sys.stderr)
    return 0
