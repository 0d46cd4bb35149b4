"""Results tables for docs/results from finished runs, one subcommand per kind of table.

    python3 benchmarks/tables.py robustness /work/runs/grid10 --out /work/runs/robustness \\
        --datasets breastmnist \\
        --docs-csv docs/results/robustness-breastmnist-28-epyc-avx512-torch2.14.csv \\
        --machine epyc-avx2
    python benchmarks/tables.py medmnist-plus --results OUT --grid GRID --model resnet18 \\
        --backbone-label "resnet18 trained on breastmnist (seed 0)" \\
        --command "medbench pretrained ..." --csv docs/results/....csv

`python benchmarks/tables.py SUBCOMMAND --help` describes each.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import sys
from collections import defaultdict
from pathlib import Path

from _common import add_csv_arguments, add_subcommand, append_csv, mean_std, tool_parser
from medbench.analysis.robustness import (
    DEFAULT_BASELINE,
    evaluate_runs,
    find_runs,
    summarize,
)
from medbench.analysis.robustness_files import summary_rows, write_robustness

# ----------------------------------------------------------------------------- robustness

ROBUSTNESS = """Robustness tables of a benchmark's finished runs, one run at a time and resumable.

Each run's scores are kept under <out>/per-run/ (`medbench.analysis.robustness.evaluate_runs`),
so a long evaluation can stop and continue; the merged results (robustness.json, CSVs,
report.md, figures) are written to <out> and, with --docs-csv, the summary as a figures
CSV for docs/results (written whole, its columns date, machine, torch, command first).

    python3 benchmarks/tables.py robustness /work/runs/grid10 --out /work/runs/robustness \\
        --datasets breastmnist \\
        --docs-csv docs/results/robustness-breastmnist-28-epyc-avx512-torch2.14.csv \\
        --machine epyc-avx2
"""


def _dataset(run: Path) -> str:
    return json.loads((run / "results.json").read_text())["config"]["dataset"]


def robustness(args: argparse.Namespace) -> int:
    out = Path(args.out)
    wanted = set(filter(None, args.datasets.split(",")))
    runs = [r for r in find_runs(args.runs) if not wanted or _dataset(r) in wanted]

    def on_run(k: int, run: Path) -> None:
        print(f"[{k}/{len(runs)}] evaluating {run}", file=sys.stderr, flush=True)

    results = evaluate_runs(
        runs, out / "per-run", data_dir=args.data_dir, device=args.device, on_run=on_run
    )
    summaries = summarize(results, args.baseline)
    for path in write_robustness(results, summaries, out):
        print(f"wrote {path}", file=sys.stderr)
    if args.docs_csv:
        write_docs_csv(
            Path(args.docs_csv),
            summary_rows(summaries),
            " ".join(["python3", *sys.argv]),
            args.machine,
        )
    return 0


def write_docs_csv(path: Path, rows: list[dict], command: str, machine: str) -> None:
    import torch

    stamp = {
        "date": datetime.date.today().isoformat(),
        "machine": machine,
        "torch": torch.__version__.split("+")[0],  # the release, without the local build tag
        "command": command,
    }
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*stamp, *rows[0]], lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow(
                {
                    **stamp,
                    **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()},
                }
            )


def add_robustness(subcommands: argparse._SubParsersAction) -> None:
    p = add_subcommand(subcommands, "robustness", ROBUSTNESS, robustness)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--datasets", default="", help="comma-separated; default all")
    p.add_argument("--baseline", default=DEFAULT_BASELINE)
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--docs-csv")
    p.add_argument("--machine", default=platform.machine(), help="machine label for the CSV")


# ----------------------------------------------------------------------------- medmnist-plus

MEDMNIST_PLUS = """MedMNIST+ probe rows: `medbench pretrained` results beside end-to-end runs.

Rows for docs/results/ from a `medbench pretrained` results folder: per target dataset
and regime, test ACC and AUC (mean ± sample sd over seeds), beside the end-to-end runs of
the same architecture trained on the target itself (read from a `medbench benchmark`
folder), so a probe of a transferred backbone can be read against training from scratch.

    medbench pretrained --datasets breastmnist,pneumoniamnist \\
        --backbone resnet18=RUNS/breastmnist-28/resnet18/seed0-... --regimes linear-probe,knn \\
        --input none --seeds 3 --data-dir ../shared/medmnist --out OUT
    python benchmarks/tables.py medmnist-plus --results OUT --grid GRID --model resnet18 \\
        --backbone-label "resnet18 trained on breastmnist (seed 0)" \\
        --command "medbench pretrained ..." --csv docs/results/....csv
"""


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


def medmnist_plus(args: argparse.Namespace) -> int:
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


def add_medmnist_plus(subcommands: argparse._SubParsersAction) -> None:
    p = add_subcommand(subcommands, "medmnist-plus", MEDMNIST_PLUS, medmnist_plus)
    p.add_argument("--results", type=Path, required=True, help="a medbench pretrained --out folder")
    p.add_argument("--backbone-label", required=True, help="how the table names the backbone")
    p.add_argument("--grid", type=Path, help="a medbench benchmark --out folder (end-to-end rows)")
    p.add_argument("--model", help="the architecture whose end-to-end grid runs to add")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--command", required=True, help="the medbench pretrained command it ran")
    add_csv_arguments(p, "dataset and regime")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser, subcommands = tool_parser(__doc__)
    add_robustness(subcommands)
    add_medmnist_plus(subcommands)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
