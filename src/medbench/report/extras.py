"""Report sections for what a grid added beside its runs: robustness (OUT/robustness) and
explanations (OUT/explain/*), as written by `medbench.analysis.grid_analyses`.

Each section is the markdown its own module writes
(`medbench.analysis.robustness_files.report_markdown`,
`medbench.analysis.explain_files.explain_section`), with image paths relative to the report's
folder; the HTML report gets the same section converted, its images embedded.
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from medbench.analysis.grid_analyses import EXPLAIN_DIR, ROBUSTNESS_DIR
from medbench.analysis.robustness_files import load_written, report_markdown
from medbench.report.render import figure_html

_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$")


@dataclass(frozen=True)
class Section:
    markdown: str
    html: str


def load_sections(folder: Path, out: Path) -> list[Section]:
    """The robustness section, then one explanation section per explained run, of the
    benchmark folder `folder`, for a report written into `out`."""
    texts = []
    robustness = folder / ROBUSTNESS_DIR
    if (robustness / "robustness.json").is_file():
        summaries, figures = load_written(robustness)
        prefix = _prefix(robustness, out)
        texts.append(report_markdown(summaries, [(prefix + f, c) for f, c in figures]))
    for path in sorted((folder / EXPLAIN_DIR).glob("*/explain.json")):
        from medbench.analysis.explain import ExplainResult  # grad-cam, captum: heavy
        from medbench.analysis.explain_files import explain_section

        result = ExplainResult.from_json(json.loads(path.read_text()))
        texts.append(explain_section(result, _prefix(path.parent, out)))
    return [Section(t, markdown_html(t, out)) for t in texts if t]


def _prefix(folder: Path, out: Path) -> str:
    return Path(os.path.relpath(folder, out)).as_posix() + "/"


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    parts = text.split("`")
    return "".join(
        f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts)
    )


def _image(alt: str, src: str, base: Path) -> str:
    path = base / src
    if not path.is_file():
        return f"<p>[missing figure: {html.escape(src)}]</p>"
    return figure_html(path, alt)


def _table(lines: list[str]) -> str:
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    rows = [r for r in cells if not all(set(c) <= set("-: ") for c in r)]
    head, body = rows[0], rows[1:]
    out = ["<table><tr>", *(f"<th>{_inline(c)}</th>" for c in head), "</tr>"]
    for row in body:
        out += ["<tr>", *(f"<td>{_inline(c)}</td>" for c in row), "</tr>"]
    return "".join(out + ["</table>"])


def markdown_html(text: str, base: Path) -> str:
    """The markdown these sections use (headings, paragraphs, pipe tables, one image per
    line) as HTML; images are read from `base` and embedded."""
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if block and block[0].startswith("|"):
            out.append(_table(block))
        elif block:
            out.append(f"<p>{_inline(' '.join(block))}</p>")
        block.clear()

    for line in text.splitlines():
        line = line.strip()
        heading = re.match(r"^(#{1,4}) (.*)$", line)
        image = _IMAGE.match(line)
        kind_changes = bool(block) and block[0].startswith("|") != line.startswith("|")
        if heading or image or not line or kind_changes:
            flush()
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif image:
            out.append(_image(image["alt"], image["src"], base))
        elif line:
            block.append(line)
    flush()
    return "\n".join(out)
