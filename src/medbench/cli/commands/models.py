"""`medbench models`: the model zoo with parameter counts and FLOPs for a dataset's shape."""

from __future__ import annotations

import argparse
import json

from medbench.cli.commands._options import add_size
from medbench.data import dataset_info
from medbench.errors import MedbenchError
from medbench.models import list_models, model_summary

NAME = "models"
HELP = "list the models with their parameter counts and FLOPs"
ORDER = 12
DESCRIPTION = (
    "List the registered models with parameter count and FLOPs of one image (a multiply-add "
    "counts as 2 FLOPs) for a dataset's input shape: --dataset, or --channels and --classes "
    "(default: dermamnist, 3 channels, 7 classes). A 3D --dataset lists the 3D models, for "
    "volumes of --size^3 voxels (28 or 64). Any timm model is usable as timm:<name> on 2D sets."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", metavar="NAME", help="take channels and classes from this dataset"
    )
    add_size(parser)
    parser.add_argument(
        "--channels", type=int, metavar="C", help="input channels (overrides --dataset)"
    )
    parser.add_argument(
        "--classes", type=int, metavar="K", help="number of classes (overrides --dataset)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _shape(args: argparse.Namespace) -> tuple[int, int, int]:
    """(channels, classes, spatial dims) for the listing; a 3D --dataset checks --size."""
    channels, classes = args.channels, args.classes
    info = dataset_info(args.dataset or "dermamnist")
    if args.dataset:
        info.check_size(args.size)
    channels = info.n_channels if channels is None else channels
    classes = info.n_classes if classes is None else classes
    if channels < 1 or classes < 1:
        raise MedbenchError(
            f"--channels and --classes must be at least 1, not {channels} and {classes}"
        )
    return channels, classes, info.spatial_dims


def run(args: argparse.Namespace) -> int:
    channels, classes, dims = _shape(args)
    rows = [model_summary(name, channels, classes, args.size) for name in list_models(dims)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    shape = f"{args.size}^3 voxels" if dims == 3 else f"{args.size}x{args.size} px"
    what = "volume" if dims == 3 else "image"
    print(
        f"{shape}, {channels} channel(s), {classes} classes; "
        f"FLOPs of one {what}, a multiply-add = 2 FLOPs"
    )
    print(f"{'model':<14} {'params':>12} {'params (M)':>10} {'GFLOPs':>8}")
    for r in rows:
        print(f"{r['name']:<14} {r['n_params']:>12,} {r['params_m']:>10.2f} {r['gflops']:>8.3f}")
    if dims == 2:
        print("any timm model: timm:<name> (e.g. timm:resnet10t)")
    return 0
