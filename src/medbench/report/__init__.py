"""The benchmark report, built only from what runs wrote (the results store and each run's
results.json / predictions.npz); it never trains.

    from medbench.report import build_report
    files = build_report("medbench-results")   # REPORT.md, report.html, results.csv, ...
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from medbench.report.collect import RUN_FIELDS, Group, Run, group_runs, load_ensembles, load_runs
from medbench.report.extras import load_sections
from medbench.report.findings import Findings, compute_findings, findings_dict
from medbench.report.plots import critical_difference, draw_all
from medbench.report.published import load_published
from medbench.report.render import render_html, render_markdown
from medbench.utils.fsutil import atomic_write_json, atomic_write_text

__all__ = [
    "ReportFiles",
    "build_report",
    "compute_findings",
    "group_runs",
    "load_runs",
    "load_published",
]


@dataclass
class ReportFiles:
    """Paths of everything one `build_report` call wrote, and what it found."""

    folder: Path
    markdown: Path
    html: Path
    csv: Path
    json: Path
    summary: Path
    plots: list[Path] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)  # plot file name -> caption
    findings: Findings | None = None


def _csv_text(runs: list[Run]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(RUN_FIELDS), lineterminator="\n")
    writer.writeheader()
    for r in runs:
        row = dict(r.fields)
        row["flags"] = "; ".join(row.get("flags") or [])
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in RUN_FIELDS})
    return buf.getvalue()


def _group_summary(g: Group) -> dict:
    stats = {}
    for name in (
        "test_acc",
        "test_auc",
        "val_acc",
        "val_auc",
        "n_params",
        "gflops",
        "efficiency",
        "train_seconds",
        "steps",
        "epochs_trained",
    ):
        s = g.stat(name)
        stats[name] = {"mean": s.mean, "std": s.std, "n": s.n}
    return {
        "dataset": g.dataset,
        "size": g.size,
        "model": g.model,
        "label": g.label,
        "config_hash": g.config_hash,
        "n_runs": g.n,
        "collapsed_runs": len(g.collapsed_runs),
        "seeds": [r["seed"] for r in g.runs],
        **stats,
    }


def build_report(
    folder: str | Path,
    out: str | Path | None = None,
    *,
    plots: bool = True,
    storage: str | None = None,
) -> ReportFiles:
    """Write REPORT.md, report.html (figures embedded), results.csv, results.json (one row
    per run), summary.json and plots/*.png for the benchmark folder `folder` (into
    `out`, default the same folder). `storage`: the grid's database URL, when its store
    is on a server (default: the folder's own store)."""
    folder = Path(folder)
    runs = load_runs(folder, storage)
    runs.sort(
        key=lambda r: (
            str(r["dataset"]),
            str(r["model"]),
            r["seed"] if r["seed"] is not None else -1,
        )
    )
    out = Path(out) if out else folder
    groups = group_runs(runs)
    ensembles = load_ensembles(folder)
    findings = compute_findings(groups, runs, ensembles)
    figures = []
    if plots:
        ranking = findings.significance.ranking if findings.significance else None
        figures = draw_all(groups, out / "plots") + critical_difference(ranking, out / "plots")
    files = ReportFiles(
        folder=out,
        markdown=out / "REPORT.md",
        html=out / "report.html",
        csv=out / "results.csv",
        json=out / "results.json",
        summary=out / "summary.json",
        plots=[fig.path for fig in figures],
        captions={fig.path.name: fig.caption for fig in figures},
        findings=findings,
    )
    atomic_write_text(files.csv, _csv_text(runs))
    atomic_write_json(files.json, [{k: r.fields.get(k) for k in RUN_FIELDS} for r in runs])
    atomic_write_json(
        files.summary,
        {
            "schema_version": 1,
            "groups": [_group_summary(g) for g in groups],
            "findings": findings_dict(findings),
            "ensembles": ensembles,
            "published_citation": load_published()["citation"],
        },
    )
    sections = load_sections(folder, out)  # robustness, explanations: if the grid made them
    atomic_write_text(
        files.markdown,
        render_markdown(
            groups, runs, findings, figures, out, ensembles, [s.markdown for s in sections]
        ),
    )
    atomic_write_text(
        files.html,
        render_html(groups, runs, findings, figures, ensembles, [s.html for s in sections]),
    )
    return files
