"""`medbench datasets`: the MedMNIST catalogue and which sizes are on disk."""

from __future__ import annotations

import argparse
import json

from medbench.cli.commands._options import add_data_dir
from medbench.data import SIZES, dataset_path, list_datasets, resolve_data_dir
from medbench.data.catalogue import SIZES_3D

NAME = "datasets"
HELP = "list the MedMNIST datasets and which sizes are downloaded"
ORDER = 10
DESCRIPTION = (
    "List the eighteen MedMNIST datasets, the twelve 2D ones (images of 28 to 224 px) and "
    "the six 3D ones (volumes of 28^3 or 64^3 voxels), with task, classes, channels, split "
    "sizes and license, and which sizes are present in the data folder."
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
            "spatial_dims": info.spatial_dims,
            "sizes": list(info.sizes),
            "image_shape": list(info.image_shape(28)),
            "local_sizes": [
                s for s in info.sizes if dataset_path(info.name, s, data_dir).is_file()
            ],
        }
        for info in list_datasets(volumetric=None)
    ]


def run(args: argparse.Namespace) -> int:
    rows = catalogue_rows(args.data_dir)
    if args.json:
        print(
            json.dumps(
                {"data_dir": str(resolve_data_dir(args.data_dir)), "datasets": rows}, indent=2
            )
        )
        return 0
    header = (
        "dataset",
        "dims",
        "task",
        "classes",
        "ch",
        "train/val/test",
        "license",
        "local sizes",
    )
    table = [header] + [
        (
            r["name"],
            f"{r['spatial_dims']}D",
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
    flat = [r for r in rows if r["spatial_dims"] == 2]
    volumes = [r for r in rows if r["spatial_dims"] == 3]
    print(
        f"\n{len(flat)} 2D datasets at {', '.join(map(str, SIZES))} px and {len(volumes)} 3D "
        f"datasets at {', '.join(map(str, SIZES_3D))} voxels a side in the catalogue; data "
        f"folder: {resolve_data_dir(args.data_dir)}"
    )
    return 0
