"""`medbench predict`: classify images with a trained model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medbench.cli.commands._options import add_device, add_precision
from medbench.data.catalogue import SPLITS
from medbench.errors import MedbenchError
from medbench.serving.predict import predict

NAME = "predict"
HELP = "predict classes of PNG/JPEG images, folders of them or an npz with a trained model"
ORDER = 30
DESCRIPTION = (
    "Predict with a trained model (a run folder or its model.pt) or a saved ensemble (the "
    "folder 'medbench ensemble --out' writes). INPUT is PNG/JPEG files, "
    "folders of them (searched recursively, in sorted order) or an npz file (MedMNIST "
    "layout: test_images unless --split is given, or an 'images' array) or .npy array; "
    "for a 3D model, volumes in .npy, .npz or NIfTI (.nii, .nii.gz; needs nibabel) files "
    "or folders of them. Images are converted to the model's size and channels, volumes "
    "to its size^3 uint8 input. Prints a table, or --json / --csv FILE "
    "with the probability of every class (and the temperature-calibrated ones where a "
    "temperature was fitted)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="MODEL", help="run folder, model.pt or saved ensemble folder"
    )
    parser.add_argument(
        "inputs",
        metavar="INPUT",
        nargs="+",
        help="image file, folder, .npz or .npy (a 3D model: volume files)",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        help="which images of a MedMNIST npz to use (default test)",
    )
    parser.add_argument("--json", action="store_true", help="print the predictions as JSON")
    parser.add_argument("--csv", metavar="FILE", help="write the predictions to a CSV file")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    parser.add_argument(
        "--workers", type=int, help="threads decoding images (default: CPU count, at most 8)"
    )
    add_device(parser)
    add_precision(parser)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse flags that could only fail after every image was predicted."""
    if args.workers is not None and args.workers < 0:
        raise MedbenchError(
            f"--workers must not be negative, not {args.workers} (leave it out for the CPU count)"
        )
    if args.csv:
        csv = Path(args.csv)
        if csv.is_dir():
            raise MedbenchError(f"--csv {csv} is a folder; name the CSV file to write")
        if not csv.parent.is_dir():
            raise MedbenchError(f"--csv {csv}: the folder {csv.parent} does not exist")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    result = predict(
        args.model,
        args.inputs,
        split=args.split,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
    )
    if args.csv:
        path = result.to_csv(args.csv)
        if not args.json:
            print(f"wrote {len(result)} predictions to {path}")
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    elif not args.csv:
        _print_table(result)
    return 0


def _print_table(result) -> None:
    predicted = result.predicted()
    top = result.top_probability()
    prob_header = "probability" + (" (calibrated)" if result.calibrated is not None else "")
    file_width = max(len("file"), *(len(n) for n in result.names))
    class_width = max(len("predicted"), *(len(p) for p in predicted))
    print(f"{'file':<{file_width}}  {'predicted':<{class_width}}  {prob_header}")
    for name, pred, p in zip(result.names, predicted, top, strict=True):
        print(f"{name:<{file_width}}  {pred:<{class_width}}  {p:.4f}")
