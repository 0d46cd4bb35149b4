"""`medbench report DIR`: write the report of a benchmark folder from its stored results."""

from __future__ import annotations

import argparse

from medbench.report import build_report

NAME = "report"
ORDER = 50
HELP = "write REPORT.md, report.html, plots and results.csv/json from a benchmark folder"
DESCRIPTION = (
    "Build the report of a 'medbench benchmark' output folder (or any folder of run results.json "
    "files) from the results already there. It never trains."
)

resume_hint = None  # a report is rebuilt whole from the stored results: there is nothing to resume


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="the benchmark --out folder")
    parser.add_argument("--out", metavar="DIR", help="where to write the report (default: DIR)")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="the grid's database URL when its store is on a server (benchmark --storage); "
        "default: the folder's own store",
    )


def run(args: argparse.Namespace) -> int:
    files = build_report(args.folder, args.out, plots=not args.no_plots, storage=args.storage)
    print(f"{files.markdown}\n{files.html}\n{files.csv}\n{files.json}")
    for line in (files.findings.findings if files.findings else [])[:3]:
        print(f"- {line}")
    return 0
