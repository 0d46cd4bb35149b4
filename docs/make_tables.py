"""Write the figure tables of README.md and docs/*.md from the results files in docs/results/.

Every measured figure the documentation quotes lives as a row of a CSV file in
docs/results/ (named by what was measured, the machine and the torch version). Each row
carries the columns `date`, `machine`, `torch` and `command`: when, where and how it was
measured. A page asks for a table with a block:

    <!-- figures file=model-speed-epyc-avx2-torch2.11.csv columns="model=Model,params=Parameters" where="size=28" -->
    (this script writes the table and its source line here)
    <!-- /figures -->

`columns` picks and names the columns (in that order), `where` keeps the rows whose columns
hold the given values (`a=1,b=x`). The cells are copied as the file spells them. The line
under the table names the file, the machines, the dates and the commands.

README's headline figures come from docs/results/headline.csv, one row per figure: its
words, the results file, the `where` that picks its rows there, how many `rows` it must
pick, and the `columns` whose values it shows (joined with " / ", rows with "; "). In a
`where`, `a=x|y` keeps rows whose `a` is x or y:

    <!-- headline -->
    <!-- /headline -->

A table outside these blocks holds no measured numbers; one that holds other numbers (an
option's default, a split size) is marked `<!-- not figures -->` on the line before it.

    python docs/make_tables.py          # rewrite the blocks in place
    python docs/make_tables.py --check  # exit 1 naming each stale block or unsourced table
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
META = ("date", "machine", "torch", "command")
HEADLINE_COLUMNS = ("figure", "file", "where", "columns", "rows")
BLOCK = re.compile(r"(<!-- figures (?P<attrs>.*?) -->\n)(?P<body>.*?)(<!-- /figures -->)", re.S)
HEADLINE = re.compile(r"(<!-- headline -->\n)(?P<body>.*?)(<!-- /headline -->)", re.S)
ATTR = re.compile(r'(\w+)=("[^"]*"|\S+)')
NOT_FIGURES = "<!-- not figures -->"


class FigureError(Exception):
    """A block that asks for something the results files do not hold."""


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def read_rows(name: str, meta: tuple[str, ...] = META) -> list[dict[str, str]]:
    path = RESULTS / name
    if not path.is_file():
        raise FigureError(f"no results file {name} in docs/results")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [m for m in meta if rows and m not in rows[0]]
    if not rows or missing:
        raise FigureError(f"{name}: no rows, or no {', '.join(missing)} column")
    return rows


def _pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    # A comma starts a new pair only before `name=`, so values may hold commas.
    for item in filter(None, (part.strip() for part in re.split(r",(?=\s*\w+=)", text))):
        key, sep, value = item.partition("=")
        if not sep:
            raise FigureError(f"{item!r} is not name=value")
        pairs.append((key.strip(), value.strip()))
    return pairs


def select(rows: list[dict[str, str]], where: str, name: str) -> list[dict[str, str]]:
    conditions = _pairs(where)
    for key, _ in conditions:
        if key not in rows[0]:
            raise FigureError(f"{name} has no column {key!r}")
    kept = [r for r in rows if all(r[k] in v.split("|") for k, v in conditions)]
    if not kept:
        raise FigureError(f"no row of {name} has {where}")
    return kept


def source_line(name: str, rows: list[dict[str, str]], page: Path) -> str:
    link = os.path.relpath(RESULTS / name, page.parent)
    machines = ", ".join(dict.fromkeys(r["machine"] for r in rows))
    dates = ", ".join(sorted(dict.fromkeys(r["date"] for r in rows)))
    torches = ", ".join(dict.fromkeys(r["torch"] for r in rows))
    commands = "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in rows))
    return f"Source: [{name}]({link}) ({machines}; torch {torches}; {dates}): {commands}"


def figures_table(attrs: str, page: Path) -> str:
    given = {k: v.strip('"') for k, v in ATTR.findall(attrs)}
    if "file" not in given or "columns" not in given:
        raise FigureError(f"{page.name}: a figures block needs file= and columns=")
    name = given["file"]
    rows = select(read_rows(name), given.get("where", ""), name)
    columns = _pairs(given["columns"])
    for key, _ in columns:
        if key not in rows[0]:
            raise FigureError(f"{name} has no column {key!r}")
    lines = [
        "| " + " | ".join(header for _, header in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
        *("| " + " | ".join(row[key] for key, _ in columns) + " |" for row in rows),
    ]
    return "\n".join(lines) + "\n\n" + source_line(name, rows, page) + "\n"


def headline_table(page: Path) -> str:
    lines = ["| figure | measured | source |", "|---|---|---|"]
    for item in read_rows("headline.csv", meta=HEADLINE_COLUMNS):
        name = item["file"]
        rows = select(read_rows(name), item["where"], name)
        if len(rows) != int(item["rows"]):
            raise FigureError(f"headline {item['figure']!r}: {len(rows)} rows of {name} match")
        keys = [key.strip() for key in item["columns"].split(",")]
        for key in keys:
            if key not in rows[0]:
                raise FigureError(f"{name} has no column {key!r}")
        value = "; ".join(" / ".join(row[key] for key in keys) for row in rows)
        link = os.path.relpath(RESULTS / name, page.parent)
        dates = ", ".join(sorted(dict.fromkeys(row["date"] for row in rows)))
        lines.append(f"| {item['figure']} | {value} | [{name}]({link}) ({dates}) |")
    return "\n".join(lines) + "\n"


def render(page: Path, text: str) -> str:
    text = BLOCK.sub(lambda m: m[1] + figures_table(m["attrs"], page) + m[4], text)
    return HEADLINE.sub(lambda m: m[1] + headline_table(page) + m[3], text)


def unsourced_tables(page: Path, text: str) -> list[str]:
    """Tables with digits outside the generated blocks and not marked as holding no figures."""
    outside = HEADLINE.sub("", BLOCK.sub("", text))
    problems, previous, in_table, marked = [], "", False, False
    for line in outside.splitlines():
        is_row = line.startswith("|")
        if is_row and not in_table:
            in_table, marked = True, previous.strip() == NOT_FIGURES
        if is_row and not marked and re.search(r"\d", line) and not set(line) <= set("|-: "):
            problems.append(f"{_show(page)}: unsourced table row {line[:60]!r}")
            marked = True  # one message per table
        in_table = is_row and in_table
        previous = line
    return problems


def check() -> list[str]:
    """Each stale block, unsourced table or broken request, as one line."""
    problems = []
    for page in pages():
        text = page.read_text()
        try:
            if render(page, text) != text:
                problems.append(f"{_show(page)}: stale figures (run {_self()})")
        except FigureError as error:
            problems.append(f"{_show(page)}: {error}")
        problems += unsourced_tables(page, text)
    return problems


def _show(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name


def _self() -> str:
    return "python docs/make_tables.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; list problems")
    args = parser.parse_args()
    if args.check:
        problems = check()
        print("\n".join(problems) or "figures up to date", file=sys.stderr if problems else None)
        return 1 if problems else 0
    try:
        for page in pages():
            text = page.read_text()
            new = render(page, text)
            if new != text:
                page.write_text(new)
                print(f"wrote {_show(page)}")
    except FigureError as error:
        print(f"make_tables: {error}", file=sys.stderr)
        return 2
    problems = [p for page in pages() for p in unsourced_tables(page, page.read_text())]
    if problems:
        print("\n".join(problems), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
