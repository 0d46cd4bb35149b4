"""`medbench datasets`: the MedMNIST catalogue and which sizes are on disk."""

from __future__ import annotations

import argparse
import json

from medbench.commands._options import add_data_dir
from medbench.data import SIZES, dataset_path, list_datasets, resolve_data_dir

NAME = "datasets"
HELP = "list the MedMNIST datasets and which sizes are downloaded"
ORDER = 10
DESCRIPTION = (
    "List the twelve 2D MedMNIST datasets (task, classes, channels, split sizes, license) "
    "and which image sizes are present in the data folder."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def catalogue_rows(data_dir: str | None = None) -> list[dict]:
    """One JSON-able row per dataset, with the sizes present in `data_dir`."""
    return [
        {
            "name": info.name,
            "task": info.task,
            "n_classes": info.n_classes,
            "n_channels": info.n_channels,
            "n_samples": info.n_samples,
            "license": info.license,
            "local_sizes": [s for s in SIZES if dataset_path(info.name, s, data_dir).is_file()],
        }
        for info in list_datasets()
    ]


def run(args: argparse.Namespace) -> int:
    rows = catalogue_rows(args.data_dir)
    if args.json:
        print(json.dumps({"data_dir": str(resolve_data_dir(args.data_dir)), "datasets": rows},
                         indent=2))  # fmt: skip
        return 0
    header = ("dataset", "task", "classes", "ch", "train/val/test", "license", "local sizes")
    table = [header] + [
        (
            r["name"],
            r["task"],
            str(r["n_classes"]),
            str(r["n_channels"]),
            "/".join(str(n) for n in r["n_samples"].values()),
            r["license"],
            ",".join(map(str, r["local_sizes"])) or "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(
        f"\n{len(rows)} datasets x {len(SIZES)} sizes ({', '.join(map(str, SIZES))} px) in the "
        f"catalogue; data folder: {resolve_data_dir(args.data_dir)}"
    )
    return 0
