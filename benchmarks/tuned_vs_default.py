"""Tuned recipe vs the defaults, and the best searched architecture vs the stock ones.

Per dataset: (1) `medbench.tune` with `--trials` trials of up to `--max-epochs` epochs;
(2) the tuned recipe and the default recipe each trained for the same `--final-epochs`
with `--seeds` seeds; (3) `medbench.search` over `--search-family` with `--search-trials`
trials, and the front's most accurate architecture trained with the default recipe vs
stock `advanced_cnn` and `efficientnet` (same epochs and seeds). Writes the tables between
the markers of docs/tuning.md. Full run (the numbers in the docs):

    python benchmarks/tuned_vs_default.py --data-dir ../shared/medmnist --trials 30 \
        --max-epochs 20 --final-epochs 20 --seeds 3 --search-trials 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings

from _common import REPO, SHARED_DATA, add_doc_arguments, publish, sd
from medbench.config import TrainConfig
from medbench.data import load_dataset
from medbench.engine import train
from medbench.search import search
from medbench.tune import TUNABLE, tune

DOC = REPO / "docs" / "tuning.md"
SECTION = "tuned_vs_default"
TUNED_KEYS = tuple(k for k in TUNABLE if k != "epochs")  # epochs: fixed by --final-epochs


def runs(data, args, label: str, **values) -> dict:
    """Train `--seeds` seeds of one configuration; mean/std of test ACC/AUC."""
    accs, aucs, n_params = [], [], 0
    for seed in range(args.seeds):
        config = TrainConfig.from_dict(
            {
                "dataset": data.info.name,
                "device": "cpu",
                "data_dir": args.data_dir,
                "epochs": args.final_epochs,
                "seed": seed,
                "run_dir": f"{args.out}/final/{data.info.name}-{label}-seed{seed}",
                **values,
            }
        )
        r = train(config, data=data, progress=False).to_json()
        accs.append(r["metrics"]["test"]["acc"])
        aucs.append(r["metrics"]["test"]["auc"])
        n_params = r["model"]["n_params"]
        print(
            f"{data.info.name} {label} seed {seed}: test acc {accs[-1]:.4f} auc {aucs[-1]:.4f}",
            file=sys.stderr,
            flush=True,
        )

    return {
        "acc": f"{statistics.mean(accs):.4f} +- {sd(accs):.4f}",
        "auc": f"{statistics.mean(aucs):.4f} +- {sd(aucs):.4f}",
        "n_params": n_params,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--datasets", nargs="+", default=["breastmnist", "pneumoniamnist"])
    ap.add_argument("--model", default="advanced_cnn", help="model whose recipe is tuned")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--max-epochs", type=int, default=20)
    ap.add_argument("--pruner", default="median")
    ap.add_argument("--final-epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--search-family", default="advanced_cnn")
    ap.add_argument("--search-trials", type=int, default=30)
    ap.add_argument("--search-epochs", type=int, default=10)
    ap.add_argument("--out", default="runs/tuned_vs_default")
    add_doc_arguments(ap, SECTION)
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    tune_rows, arch_rows = [], []
    for dataset in args.datasets:
        data = load_dataset(dataset, 28, args.data_dir, progress=False)
        base = TrainConfig(dataset=dataset, model=args.model, device="cpu", data_dir=args.data_dir)
        tuned = tune(
            base,
            f"{args.out}/tune-{dataset}",
            args.trials,
            pruner=args.pruner,
            max_epochs=args.max_epochs,
            data=data,
            progress=True,
        )
        recipe = {k: v for k, v in tuned.best_config.items() if k in TUNED_KEYS}
        default = runs(data, args, "default", model=args.model)
        best = runs(data, args, "tuned", model=args.model, **recipe)
        tune_rows.append((dataset, default, best, tuned, recipe))

        found = search(
            TrainConfig(
                dataset=dataset,
                model=args.search_family,
                device="cpu",
                epochs=args.search_epochs,
                data_dir=args.data_dir,
            ),
            f"{args.out}/search-{dataset}",
            args.search_trials,
            data=data,
            progress=True,
        )
        top = max(found.front, key=lambda row: row["val_auc"])
        for label, values in (
            (
                f"searched {args.search_family} (trial {top['trial']})",
                {"model": args.search_family, "model_options": top["model_options"]},
            ),
            ("advanced_cnn", {"model": "advanced_cnn"}),
            ("efficientnet", {"model": "efficientnet"}),
        ):
            tag = label.split()[0]
            arch_rows.append(
                (dataset, label, runs(data, args, tag, **values), values.get("model_options", {}))
            )

    lines = [
        f"Recipe of `{args.model}`: {args.trials} trials (TPE, {args.pruner} pruning, up to "
        f"{args.max_epochs} epochs each) selected on validation AUC; then both recipes trained "
        f"for {args.final_epochs} epochs, seeds 0-{args.seeds - 1}, 28 px, CPU. Test metrics, "
        "mean +- std over seeds.",
        "",
        "| dataset | recipe | test ACC | test AUC | tuned values |",
        "|---|---|---|---|---|",
    ]
    for dataset, default, best, tuned, recipe in tune_rows:
        lines.append(f"| {dataset} | default | {default['acc']} | {default['auc']} | |")
        shown = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in recipe.items()
        )
        lines.append(
            f"| {dataset} | tuned (val AUC {tuned.best_value:.4f}) | {best['acc']} | {best['auc']} | {shown} |"
        )
    lines += [
        "",
        f"Architecture: {args.search_trials} NSGA-II trials over `{args.search_family}` "
        f"({args.search_epochs} epochs each, validation AUC vs parameters); the front's most "
        f"accurate point vs the stock models, default recipe, {args.final_epochs} epochs, "
        f"seeds 0-{args.seeds - 1}.",
        "",
        "| dataset | model | params (M) | test ACC | test AUC | options |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, label, r, options in arch_rows:
        lines.append(
            f"| {dataset} | {label} | {r['n_params'] / 1e6:.3f} | {r['acc']} | {r['auc']} | {options or ''} |"
        )
    publish(lines, DOC, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
