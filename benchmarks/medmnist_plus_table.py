"""Rows for docs/results/ from a `medbench pretrained` results folder: per target dataset
and regime, test ACC and AUC (mean ± sample sd over seeds), beside the end-to-end runs of
the same architecture trained on the target itself (read from a `medbench benchmark`
folder), so a probe of a transferred backbone can be read against training from scratch.

    medbench pretrained --datasets breastmnist,pneumoniamnist \
        --backbone resnet18=RUNS/breastmnist-28/resnet18/seed0-... --regimes linear-probe,knn \
        --input none --seeds 3 --data-dir ../shared/medmnist --out OUT
    python benchmarks/medmnist_plus_table.py --results OUT --grid GRID \
        --backbone-label "resnet18 trained on breastmnist (seed 0)" \
        --command "medbench pretrained ..." --csv docs/results/....csv
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_csv_arguments, append_csv, mean_std  # noqa: E402


def probe_rows(results_dir: Path, label: str) -> list[dict[str, str]]:
    from medbench.workflows.medmnist_plus import PlusResults

    results = PlusResults.from_json(json.loads((results_dir / "plus.json").read_text()))
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for row in results.rows:
        groups[(row.dataset, row.regime)].append(row)
    out = []
    for (dataset, regime), rows in groups.items():
        out.append({
            "backbone": label,
            "target": dataset,
            "regime": regime,
            "runs": str(len(rows)),
            "test_acc": mean_std([r.metrics["test"]["acc"] for r in rows]),
            "test_auc": mean_std([r.metrics["test"]["auc"] for r in rows]),
            "weights_sha256": rows[0].weights_sha256[:12],
        })  # fmt: skip
    return out


def grid_rows(grid: Path, model: str, datasets: list[str], size: int) -> list[dict[str, str]]:
    """The end-to-end runs of `model` on each target, as the grid trained them."""
    from medbench.runs.results import read_results

    out = []
    for dataset in datasets:
        files = sorted((grid / "runs" / f"{dataset}-{size}" / model).glob("seed*/results.json"))
        runs = [read_results(f) for f in files]
        runs = [r for r in runs if r.status == "finished"]
        if not runs:
            continue
        epochs = runs[0].config.get("epochs")
        out.append({
            "backbone": f"{model} trained on {dataset} ({epochs} epochs, medbench recipe)",
            "target": dataset,
            "regime": "end-to-end",
            "runs": str(len(runs)),
            "test_acc": mean_std([r.metrics["test"]["acc"] for r in runs]),
            "test_auc": mean_std([r.metrics["test"]["auc"] for r in runs]),
            "weights_sha256": "",
        })  # fmt: skip
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, required=True, help="a medbench pretrained --out folder")
    p.add_argument("--backbone-label", required=True, help="how the table names the backbone")
    p.add_argument("--grid", type=Path, help="a medbench benchmark --out folder (end-to-end rows)")
    p.add_argument("--model", help="the architecture whose end-to-end grid runs to add")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--command", required=True, help="the medbench pretrained command it ran")
    add_csv_arguments(p, "dataset and regime")
    args = p.parse_args()
    rows = probe_rows(args.results, args.backbone_label)
    if args.grid and args.model:
        rows += grid_rows(args.grid, args.model, sorted({r["target"] for r in rows}), args.size)
    for row in rows:
        print(row)
        row["note"] = (
            "shared 2-core CPU, heavily loaded; official test splits, 28 px; pneumoniamnist's "
            "file differs from the official MD5; k-NN: one run (no training), AUC from "
            "neighbour shares; mean and sample sd over the runs"
        )
        row["producer"] = args.command
    if args.csv:
        append_csv(args.csv, rows, args.machine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
