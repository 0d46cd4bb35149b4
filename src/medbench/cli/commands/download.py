"""`medbench download`: fetch official MedMNIST files into the data folder."""

from __future__ import annotations

import argparse

from medbench.cli.commands._options import add_data_dir
from medbench.data import SIZES, dataset_info, dataset_path, download_dataset
from medbench.data.catalogue import DATASETS, SIZES_3D, check_size
from medbench.errors import MedbenchError

NAME = "download"
HELP = "download MedMNIST datasets (resumable, MD5-verified)"
ORDER = 11
DESCRIPTION = (
    "Download official MedMNIST npz files into the data folder. Interrupted downloads "
    "resume; a file is only put in place once its MD5 matches the catalogue. Files already "
    "present are left as they are."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="dataset names (see 'medbench datasets')"
    )
    parser.add_argument("--all", action="store_true", help="all twelve 2D datasets")
    parser.add_argument(
        "--size",
        type=int,
        action="append",
        metavar="N",
        help=f"image size, one of {', '.join(map(str, SIZES))} (3D sets: "
        f"{', '.join(map(str, SIZES_3D))}; repeatable; default 28)",
    )
    add_data_dir(parser)
    parser.add_argument(
        "--mirror",
        metavar="URL",
        help="base URL holding the official file names, instead of zenodo.org "
        "(default: $MEDBENCH_MIRROR)",
    )
    parser.add_argument(
        "--retries", type=int, default=3, metavar="N", help="retries per file (default 3)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if not args.names and not args.all:
        raise MedbenchError("name at least one dataset, or pass --all (see 'medbench datasets')")
    infos = [dataset_info(n) for n in (DATASETS if args.all else args.names)]
    sizes = [check_size(s, SIZES + SIZES_3D) for s in args.size or [28]]
    for info in infos:  # a size the dataset is not published at is refused before any download
        for size in sizes:
            info.check_size(size)
    for name in (info.name for info in infos):
        for size in sizes:
            existed = dataset_path(name, size, args.data_dir).exists()
            path = download_dataset(
                name,
                size,
                args.data_dir,
                mirror=args.mirror,
                retries=args.retries,
                progress=not args.quiet,
            )
            print(f"{'present' if existed else 'downloaded'}: {path}")
    return 0
