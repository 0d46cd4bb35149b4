"""Which change to the default recipe helps on BreastMNIST? One model, a fixed number of
epochs (about what 120 s buy on this CPU), several seeds, one change at a time.

For every variant: mean +- std over seeds of the test AUC/ACC of the epoch selected on
validation, the test AUC with flip test-time augmentation (the flips the dataset allows,
as `medbench ensemble --tta` does) and the validation AUC of the selected epoch. Written
between the `breast_recipes` markers of docs/real_data.md. Runs with fixed epochs give
the same numbers at any load, so two can share the machine (one thread each):

    OMP_NUM_THREADS=1 python benchmarks/breast_recipes.py --epochs 20 --seeds 3 \
        --out /tmp/ex/runs

Finished runs in --out are reused. `--seeds` is a count (seeds 0..N-1) or a list such as
`1,2`. The `official` and `official_init` variants (run them alone) are the official
MedMNIST v2 recipe, in fp32, with medbench's or the official models.py's weight init, e.g.
ResNet-18 for 100 epochs:

    OMP_NUM_THREADS=1 python benchmarks/breast_recipes.py --model resnet18 --epochs 100 \
        --variants official --seeds 1,2 --out /tmp/ex/runs --no-doc
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

from _common import (
    REPO,
    SHARED_DATA,
    add_doc_arguments,
    flip_tta_test_auc,
    mean_std,
    publish,
    seeds_argument,
)
from medbench.config import TrainConfig
from medbench.data import load_dataset
from medbench.engine import train
from medbench.inference import load_trained_model
from medbench.runtime import place_model, resolve_runtime

DOC = REPO / "docs" / "real_data.md"
DATASET = "breastmnist"
SECTION = "breast_recipes"
VARIANTS: dict[str, dict] = {
    "default": {},
    "noaug": {"augment": "none"},
    "lr1e-3": {"lr": 1e-3},
    "lr4e-3": {"lr": 4e-3},
    "wd0.01": {"weight_decay": 0.01},
    "bs16": {"batch_size": 16},
    "bs64": {"batch_size": 64},
    "ls0.1": {"label_smoothing": 0.1},
    "mixup0.2": {"mixup": 0.2},
    "drop0.3": {"dropout": 0.3},
    "balanced": {"class_balance": "weighted_loss"},
    "acc": {"select_metric": "acc"},
    "ema0.99": {"ema_decay": 0.99},
    "ema0.995": {"ema_decay": 0.995},
    "ema0.998": {"ema_decay": 0.998},
    "fp32": {"precision": "fp32"},
    # The official MedMNIST v2 recipe (Adam 1e-3, x0.1 at 50% and 75%, batch 128, no
    # augmentation, no weight decay or clipping, fp32), in medbench's engine: for its seed
    # spread. `official` keeps medbench's torchvision weight init; `official_init` adds the
    # PyTorch default init that the official 28-px models.py gets.
    "official": {
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "schedule": "multistep",
        "augment": "none",
        "batch_size": 128,
        "grad_clip": None,
        "precision": "fp32",
    },
}
VARIANTS["official_init"] = {**VARIANTS["official"], "model_options": {"init": "pytorch"}}
OFFICIAL_VARIANTS = ("official", "official_init")
DEFAULT_VARIANTS = [name for name in VARIANTS if name not in OFFICIAL_VARIANTS]


def run_variant(data, model: str, epochs: int, name: str, seed: int, out: Path) -> dict:
    run_dir = out / f"{model}-{epochs}-{name}-s{seed}"
    if (run_dir / "results.json").is_file():
        results = json.loads((run_dir / "results.json").read_text())
    else:
        config = TrainConfig(
            dataset=DATASET,
            model=model,
            epochs=epochs,
            seed=seed,
            run_dir=str(run_dir),
            **VARIANTS[name],
        )
        results = train(config, data=data, progress=False, measure=False).to_json()
    net, _ = load_trained_model(run_dir)
    runtime = resolve_runtime("cpu", "auto", True)
    place_model(net, runtime)
    return {
        "auc": results["metrics"]["test"]["auc"],
        "acc": results["metrics"]["test"]["acc"],
        "tta_auc": flip_tta_test_auc(net, data, runtime, DATASET),
        "val_auc": results["metrics"]["val"]["auc"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--model", default="efficientnet")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument(
        "--seeds",
        type=seeds_argument,
        default=seeds_argument("3"),
        help="N seeds (0..N-1), or a list: a,b or a, for one",
    )
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument("--out", default="runs/breast_recipes")
    add_doc_arguments(ap, SECTION)
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # split-size and collapse warnings are in results.json
    data = load_dataset(DATASET, 28, args.data_dir, progress=False)
    rows = {}
    for name in args.variants:
        rows[name] = [
            run_variant(data, args.model, args.epochs, name, seed, Path(args.out))
            for seed in args.seeds
        ]
        print(
            name,
            {k: round(statistics.mean(r[k] for r in rows[name]), 3) for k in rows[name][0]},
            file=sys.stderr,
        )
    base = statistics.mean(r["auc"] for r in rows["default"]) if "default" in rows else None
    lines = [
        f"{args.model} on BreastMNIST, {args.epochs} epochs, seeds {', '.join(map(str, args.seeds))}, "
        "default settings but for the one change named; test metrics of the epoch selected "
        "on validation (AUC, or ACC for `acc`).",
        "",
        "| variant | change | test AUC | vs default | test ACC | test AUC, flip TTA | val AUC (selected) |",
        "|---|---|---|---:|---|---|---|",
    ]
    for name, rs in rows.items():
        mean_auc = statistics.mean(r["auc"] for r in rs)
        delta = f"{mean_auc - base:+.3f}" if base is not None else ""
        change = ", ".join(f"`{k}={v}`" for k, v in VARIANTS[name].items()) or "none"
        lines.append(
            f"| {name} | {change} | {mean_std(r['auc'] for r in rs)} | {delta} | "
            f"{mean_std(r['acc'] for r in rs)} | {mean_std(r['tta_auc'] for r in rs)} | "
            f"{mean_std(r['val_auc'] for r in rs)} |"
        )
    publish(lines, DOC, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
