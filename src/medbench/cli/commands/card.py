"""`medbench card`: (re)write a finished run's MODEL_CARD.md."""

from __future__ import annotations

import argparse

from medbench.training.modelcard import write_model_card

NAME = "card"
HELP = "write the model card (MODEL_CARD.md) of a finished run"
ORDER = 32
DESCRIPTION = (
    "Write MODEL_CARD.md into a finished run folder from its results.json and "
    "predictions.npz: data and license, training configuration, test ACC/AUC with bootstrap "
    "95% intervals, calibration, collapse-guard flags, known limits and intended use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")


def run(args: argparse.Namespace) -> int:
    print(f"wrote {write_model_card(args.run_dir)}")
    return 0
