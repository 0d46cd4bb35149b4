"""`medbench audit`: duplicates, leakage and class balance of one dataset file."""

from __future__ import annotations

import argparse
import json
import sys

from medbench.cli.commands._options import add_data_dir, add_size
from medbench.data.audit import NEAR_THRESHOLD, audit_dataset, format_audit, write_audit

NAME = "audit"
HELP = (
    "audit a dataset: exact and near duplicates within and across splits, label conflicts, balance"
)
ORDER = 13
DESCRIPTION = (
    "Audit one MedMNIST file: exact duplicates (identical pixels) and near duplicates (cosine "
    "similarity of centred, unit-length images) within and across the train/val/test splits, "
    "duplicates whose labels disagree, and each split's class balance. Counts are pairs of "
    "images; a test image with a copy in train is leakage that flatters test scores."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="dataset name, e.g. breastmnist")
    add_size(parser)
    parser.add_argument(
        "--threshold",
        type=float,
        default=NEAR_THRESHOLD,
        help=f"cosine similarity from which two images are near duplicates (default {NEAR_THRESHOLD})",
    )
    parser.add_argument("--json", action="store_true", help="print the audit as JSON")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="also write audit.json, audit.txt and duplicates.png (example pairs) into DIR",
    )
    add_data_dir(parser)


def run(args: argparse.Namespace) -> int:
    result = audit_dataset(args.dataset, args.size, args.data_dir, threshold=args.threshold)
    print(json.dumps(result.to_json(), indent=2) if args.json else format_audit(result))
    if args.out:
        for path in write_audit(result, args.out, args.data_dir):
            print(f"wrote {path}", file=sys.stderr)
    return 0
