"""`medbench ensemble`: combine finished runs into one model and compare it with them."""

from __future__ import annotations

import argparse
import json

from medbench.cli.commands._options import add_data_dir, add_device
from medbench.workflows.ensemble import METHODS, build_ensemble, format_table

NAME = "ensemble"
HELP = "combine finished runs (any models and seeds) into an ensemble"
ORDER = 35
DESCRIPTION = (
    "Combine finished runs of one dataset by probability averaging, validation-weighted "
    "averaging or greedy forward selection on the validation split (Caruana et al. 2004), "
    "optionally with test-time flips where the dataset allows them. Prints the ensemble beside "
    "its members (official ACC/AUC, ECE, parameters and latency summed) and, with --out, saves "
    "a folder (ensemble.json, predictions.npz, members/) that 'medbench predict' can load."
)

resume_hint = None  # building an ensemble again is quick: there is nothing to resume


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="run folders, or folders searched for runs"
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="greedy",
        help="greedy selection (default), plain average, or weights from validation AUC",
    )
    parser.add_argument("--out", metavar="DIR", help="save the ensemble in this folder")
    parser.add_argument(
        "--tta",
        action="store_true",
        help="average over the flips the dataset allows (re-runs members)",
    )
    add_device(parser, help="device for --tta (default auto)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_data_dir(parser)


def run(args: argparse.Namespace) -> int:
    results = build_ensemble(
        args.runs, args.method, args.out, args.tta, data_dir=args.data_dir, device=args.device
    )
    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return 0
    print(format_table(results))
    best, test = results["best_single"], results["metrics"]["test"]
    print(
        f"{results['model']['name']}: test ACC {test['acc']:.4f} AUC {test['auc']:.4f} vs best "
        f"single (by val) {best['name']} ACC {best['test_acc']:.4f} AUC {best['test_auc']:.4f}"
        + (f" -> {results['run_dir']}" if results["run_dir"] else "")
    )
    v = results["versus_best_single"]
    if v["auc_p"] is not None and v["acc_p"] is not None:
        print(
            f"paired tests on the same {v['n_test']} test images: AUC p = {v['auc_p']:.3g} "
            f"({v['auc_method']}), ACC p = {v['acc_p']:.3g} ({v['acc_method']})"
        )
    for flag in results["flags"]:
        print(f"COLLAPSE: {flag}")
    return 0
