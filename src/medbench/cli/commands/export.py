"""`medbench export`: a trained model as ONNX or TorchScript, checked before it is written."""

from __future__ import annotations

import argparse

from medbench.cli.commands._options import add_data_dir
from medbench.serving.export import FORMATS, TOLERANCE, export_model

NAME = "export"
HELP = "export a trained model to ONNX or TorchScript (checked against PyTorch)"
ORDER = 31
DESCRIPTION = (
    "Export a trained model (run folder or model.pt) with a dynamic batch size. The export "
    "is run on a real batch (the dataset's test images when its file is in --data-dir, else "
    "random images) and at batch sizes 1 and 7, and written only if its outputs are within "
    "the tolerance of PyTorch's. Input: float32 (N, C, H, W) images normalised as "
    "(pixel / 255 - 0.5) / 0.5; output: logits."
)

resume_hint = None  # an export is written whole or not at all: there is nothing to resume


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="run folder or model.pt")
    parser.add_argument("--format", required=True, choices=FORMATS, help="export format")
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="output file (default: model.onnx / model.torchscript.pt beside model.pt)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help=f"largest allowed absolute difference from PyTorch's logits (default {TOLERANCE:g})",
    )
    add_data_dir(parser)


def run(args: argparse.Namespace) -> int:
    result = export_model(
        args.model, args.format, args.out, data_dir=args.data_dir, tolerance=args.tolerance
    )
    sizes = ", ".join(map(str, result.batch_sizes))
    print(
        f"wrote {result.path} ({result.format}); max |difference| from PyTorch "
        f"{result.max_abs_diff:.2e} on {result.check_source}, batch sizes {sizes}"
    )
    return 0
