"""`medbench evaluate`: re-evaluate a finished run."""

from __future__ import annotations

import argparse
import json

from medbench.analysis.official_files import write_official_predictions
from medbench.cli.commands._options import add_data_dir, add_device
from medbench.errors import MedbenchError
from medbench.training.evaluation import evaluate_run

NAME = "evaluate"
HELP = "re-evaluate a trained run (official ACC/AUC, per-class metrics, calibration)"
ORDER = 25
DESCRIPTION = (
    "Re-evaluate a finished run's model.pt on its dataset's validation and test splits. The "
    "data is read from --data-dir, else from the data folder the run recorded in its "
    "results.json, else from the default data folder. --format medmnist --out DIR instead "
    "writes the run's val and test predictions as medmnist's official result files "
    "(readable by medmnist.Evaluator.parse_and_evaluate); no data is read for them."
)
_SOURCES = {
    "argument": "--data-dir",
    "recorded": "the run's recorded data folder",
    "default": "the default data folder",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder (or its model.pt)")
    add_device(parser)
    parser.add_argument("--json", action="store_true", help="print everything as JSON")
    parser.add_argument(
        "--format",
        choices=("medmnist",),
        help="medmnist: write the official result files (one CSV per split) into --out",
    )
    parser.add_argument("--out", metavar="DIR", help="folder for the --format medmnist files")
    add_data_dir(parser)


def run(args: argparse.Namespace) -> int:
    if args.format or args.out:
        return _write_official(args)
    out = evaluate_run(args.run_dir, data_dir=args.data_dir, device=args.device)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"{out['dataset']['name']} / {out['model']}  (temperature {out['temperature']:.3f})")
    print(f"  data: {out['dataset']['file']} ({_SOURCES[out['data_source']]})")
    for split in ("val", "test"):
        m = out[split]
        print(
            f"  {split:<4} ACC {m['acc']:.4f}  AUC {m['auc']:.4f}  balanced ACC {m['balanced_acc']:.4f}  "
            f"macro F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f} -> {m['ece_calibrated']:.4f} calibrated"
        )
    ci = out["test_intervals"]
    print(
        f"  test 95% intervals ({ci['method']}): ACC {_interval(ci['acc'])}  "
        f"AUC {_interval(ci['auc'])}"
    )
    print(
        "  per class (test): "
        + ", ".join(
            f"{c['name']}: P {c['precision']:.2f} R {c['recall']:.2f} F1 {c['f1']:.2f}"
            for c in out["test"]["per_class"]
        )
    )
    for flag in out["flags"]:
        print(f"  COLLAPSE GUARD: {flag}")
    return 0


def _write_official(args: argparse.Namespace) -> int:
    if not (args.format and args.out):
        raise MedbenchError("--format medmnist and --out DIR go together: give both")
    files = write_official_predictions(args.run_dir, args.out)
    if args.json:
        print(json.dumps([f.to_json() for f in files], indent=2))
        return 0
    for f in files:
        print(f"wrote {f.path} ({f.split}: {f.n_images} images, AUC {f.auc:.4f} ACC {f.acc:.4f})")
    return 0


def _interval(bounds: list) -> str:
    low, high = bounds
    return "undefined" if low is None else f"[{low:.4f}, {high:.4f}]"
