"""Robustness tables of a benchmark's finished runs, one run at a time and resumable.

Each run's scores are kept under <out>/per-run/ (`medbench.analysis.robustness.evaluate_runs`), so a
long evaluation can stop and continue; the merged results (robustness.json, CSVs,
report.md, figures) are written to <out> and, with --docs-csv, the summary as a figures
CSV for docs/results.

    python3 benchmarks/robustness_tables.py /work/runs/grid10 --out /work/runs/robustness \
        --datasets breastmnist --docs-csv docs/results/robustness-breastmnist-28-epyc-avx512-torch2.14.csv \
        --machine epyc-avx2
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

from medbench.analysis.robustness import (
    DEFAULT_BASELINE,
    evaluate_runs,
    find_runs,
    summarize,
    summary_rows,
    write_robustness,
)


def _dataset(run: Path) -> str:
    return json.loads((run / "results.json").read_text())["config"]["dataset"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--datasets", default="", help="comma-separated; default all")
    p.add_argument("--baseline", default=DEFAULT_BASELINE)
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--docs-csv")
    p.add_argument("--machine", default=platform.machine(), help="machine label for the CSV")
    args = p.parse_args()
    out = Path(args.out)
    wanted = set(filter(None, args.datasets.split(",")))
    runs = [r for r in find_runs(args.runs) if not wanted or _dataset(r) in wanted]
    results = evaluate_runs(
        runs, out / "per-run", data_dir=args.data_dir, device=args.device,
        on_run=lambda k, run: print(f"[{k}/{len(runs)}] evaluating {run}", file=sys.stderr, flush=True),
    )  # fmt: skip
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
    import csv

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


if __name__ == "__main__":
    raise SystemExit(main())
