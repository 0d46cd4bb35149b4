"""The report as text: the study table (ours beside the published and reference-study rows),
findings, per-run table and provenance, in Markdown and in one self-contained HTML file."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from medbench.report.collect import Group, Run, Stat
from medbench.report.compare import Baseline
from medbench.report.findings import Findings, dataset_unit
from medbench.report.plots import FigureFile
from medbench.report.published import load_published, published_rows, reference_study_rows
from medbench.scoring.stats import Interval
from medbench.training.config import format_seconds

TABLE_HEAD = (
    "Dataset",
    "Model",
    "Source",
    "Test accuracy",
    "Test AUC",
    "Parameters",
    "FLOPs",
    "Efficiency",
    "Trained (mean)",
)
ENSEMBLE_HEAD = (
    "Dataset",
    "Ensemble",
    "Runs used",
    "Test accuracy",
    "Test AUC",
    "vs best single (acc, AUC)",
    "Parameters",
    "Latency",
)
RUN_HEAD = (
    "Dataset",
    "Model",
    "Seed",
    "Test acc",
    "Test AUC",
    "Val acc",
    "Steps",
    "Epochs trained",
    "Train time",
    "Above baseline",
    "Collapsed",
    "Official data",
)
RANKING_HEAD = ("Rank", "Model", "Mean test accuracy", "Datasets")


def fmt_stat(stat: Stat, scale: float = 100.0, digits: int = 1, suffix: str = "%") -> str:
    if stat.mean is None:
        return "–"
    text = f"{scale * stat.mean:.{digits}f}"
    if stat.std is not None:
        text += f" ± {scale * stat.std:.{digits}f}"
    return f"{text}{suffix}"


def fmt_params(n: float | None) -> str:
    if not n:
        return "–"
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def fmt_flops(gflops: float | None) -> str:
    if not gflops:
        return "–"
    return f"{gflops:.2f} G" if gflops >= 1 else f"{gflops * 1000:.1f} M"


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return format_seconds(seconds)


def _pub(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


NO_VALUE = "–"


def study_rows(groups: list[Group], findings: Findings) -> list[tuple[str, ...]]:
    """The study table: per dataset our groups (mean ± std, n), its majority-class
    baseline, then the published MedMNIST v2 rows and the reference study's rows."""
    rows: list[tuple[str, ...]] = []
    for unit in dict.fromkeys(dataset_unit(g) for g in groups):
        gs = [g for g in groups if dataset_unit(g) == unit]
        base = findings.baselines.get(unit)
        sig = findings.significance
        rows += [
            _our_row(unit, g, base, sig.rows.get((unit, g.label), {}) if sig else {}) for g in gs
        ]
        if base is not None:
            rows.append(_baseline_row(base))
        rows += _published_study_rows(unit, gs[0].dataset)
        rows += _reference_study_rows(unit, gs[0].dataset)
    return rows


def _baseline_row(b: Baseline) -> tuple[str, ...]:
    return (
        b.unit,
        "majority-class baseline",
        f"baseline: {b.predicts} (test labels)",
        _pub(b.acc),
        f"{b.auc:.3f}",
    ) + (NO_VALUE,) * 4


def _bracket(interval: Interval | None, scale: float, digits: int) -> str:
    """ " [low, high]" of a 95% interval, or "" where there is none."""
    if interval is None or math.isnan(interval.low):
        return ""
    return f" [{scale * interval.low:.{digits}f}, {scale * interval.high:.{digits}f}]"


def _our_row(
    unit: str, g: Group, base: Baseline | None, intervals: dict[str, Interval]
) -> tuple[str, ...]:
    acc = fmt_stat(g.stat("test_acc")) + _bracket(intervals.get("acc"), 100, 1)
    if base is not None and not all(base.beaten_by(r["test_acc"]) for r in g.runs):
        acc += " (≤ baseline)"
    if g.collapsed_runs:
        acc += f" ({len(g.collapsed_runs)} collapsed)"
    epochs, seconds = g.stat("epochs_trained").mean, g.stat("train_seconds").mean
    trained = NO_VALUE if epochs is None else f"{epochs:.2g} ep, {fmt_seconds(seconds)}"
    return (
        unit,
        g.label,
        f"this study (n={g.n})",
        acc,
        fmt_stat(g.stat("test_auc"), scale=1.0, digits=3, suffix="")
        + _bracket(intervals.get("auc"), 1, 3),
        fmt_params(g.stat("n_params").mean),
        fmt_flops(g.stat("gflops").mean),
        fmt_stat(g.stat("efficiency"), scale=1.0, suffix=" %/M"),
        trained,
    )


def ranking_rows(findings: Findings) -> list[tuple[str, ...]]:
    return [(str(i), lab, _pub(acc), str(n)) for i, (lab, acc, n) in enumerate(findings.ranking, 1)]


def reference_note(groups: list[Group]) -> str:
    """What the reference-study rows in the table are, naming only those shown."""
    shown = sorted({g.dataset for g in groups if reference_study_rows(g.dataset)})
    if not shown:
        return ""
    collapsed = [
        f"{m} on {d}"
        for d in shown
        for m, v in reference_study_rows(d).items()
        if v.get("collapsed")
    ]
    text = (
        f"Reference-study rows ({', '.join(shown)}): the study medbench's default benchmark "
        "reproduces; test accuracy only, as it reported."
    )
    if collapsed:
        text += f" '(collapsed)' marks a run that predicted one class: {', '.join(collapsed)}."
    return text


def _published_study_rows(unit: str, dataset: str) -> list[tuple[str, ...]]:
    """MedMNIST v2's published rows; * marks those not cross-checked."""
    checked = set((load_published()["datasets"].get(dataset) or {}).get("checked") or [])
    rows: list[tuple[str, ...]] = []
    for method, vals in published_rows(dataset).items():
        mark = "" if method in checked else " *"
        auc = NO_VALUE if vals.get("auc") is None else f"{vals['auc']:.3f}"
        source = f"published: MedMNIST v2{mark}"
        rows.append((unit, method, source, _pub(vals.get("acc")), auc) + (NO_VALUE,) * 4)
    return rows


def _reference_study_rows(unit: str, dataset: str) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for model, vals in reference_study_rows(dataset).items():
        acc = _pub(vals.get("acc")) + (" (collapsed)" if vals.get("collapsed") else "")
        rows.append((unit, model, "reference study", acc) + (NO_VALUE,) * 5)
    return rows


def run_rows(runs: list[Run], findings: Findings) -> list[tuple[str, ...]]:
    """One row per finished run, with what it really trained; unfinished cells are in
    their own table."""
    out: list[tuple[str, ...]] = []
    for r in (r for r in runs if r.finished):
        official = {True: "yes", False: "NO (MD5 differs)", None: "unknown"}[
            None if r["data_md5_matches"] is None else bool(r["data_md5_matches"])
        ]
        base = findings.baselines.get(dataset_unit(r))
        above = (
            NO_VALUE
            if base is None
            else (
                f"{100 * (r['test_acc'] - base.acc):+.1f} pts"
                if base.beaten_by(r["test_acc"])
                else "NO (≤ baseline)"
            )
        )
        epochs = r["epochs_trained"]
        ci = findings.significance.runs.get(str(r.run_dir), {}) if findings.significance else {}
        out.append(
            (
                str(r["dataset"]),
                str(r["model"]),
                str(r["seed"]),
                _pub(r["test_acc"]) + _bracket(ci.get("acc"), 100, 1),
                NO_VALUE
                if r["test_auc"] is None
                else f"{r['test_auc']:.3f}" + _bracket(ci.get("auc"), 1, 3),
                _pub(r["val_acc"]),
                NO_VALUE if r["steps"] is None else str(r["steps"]),
                NO_VALUE if epochs is None else f"{epochs:.2f}",
                fmt_seconds(r["train_seconds"]),
                above,
                "YES" if r["collapsed"] else "no",
                official,
            )
        )
    return out


def ensemble_rows(ensembles: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for e in ensembles:
        t, b, m = e["metrics"]["test"], e["best_single"], e["model"]
        latency = e["timing"].get("latency_ms_per_image")
        rows.append(
            (
                e["dataset"]["name"],
                e["method"] + (" + TTA" if e.get("tta") else ""),
                str(m["n_members"]),
                f"{100 * t['acc']:.1f}%",
                f"{t['auc']:.3f}",
                f"{100 * (t['acc'] - b['test_acc']):+.1f} pts, {t['auc'] - b['test_auc']:+.3f}",
                fmt_params(m["n_params"]),
                "-" if latency is None else f"{latency:.2f} ms",
            )
        )
    return rows


def _md_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _context(groups: list[Group], runs: list[Run]) -> dict[str, Any]:
    pub = load_published()
    first = next((r.results for r in runs if r.finished and r.results is not None), None)
    env = first.environment if first is not None else {}
    counts = {
        s: sum(1 for r in runs if r["status"] == s)
        for s in ("finished", "failed", "running", "pending")
    }
    return {"pub": pub, "env": env, "counts": counts}


def _intro(ctx: dict[str, Any]) -> str:
    c = ctx["counts"]
    return (
        f"Cells: {c['finished']} finished, {c['failed']} failed, {c['running']} running, "
        f"{c['pending']} pending. Accuracy and AUC are on each dataset's official test split, "
        "mean ± sample standard deviation over seeds (n = number of seeds), with a 95% "
        "interval in brackets: for a row over seeds and test-set sampling (a two-level "
        "bootstrap), for a run over test-set sampling (a bootstrap within each class). "
        "Efficiency = test "
        "accuracy (%) per million parameters. 'Trained' is what the runs really trained."
    )


def _table_note(groups: list[Group], ctx: dict[str, Any]) -> str:
    pub = ctx["pub"]
    return " ".join(
        t
        for t in (
            f"Published rows: {pub['label']}, test ACC/AUC as published, not measured here "
            f"(rows marked * were not cross-checked against a second transcription). "
            f"Citation: {pub['citation']}.",
            reference_note(groups),
            "The majority-class baseline always predicts the test split's most common class.",
        )
        if t
    )


def _md_details(findings: Findings) -> list[str]:
    """The ranking and the tables behind the findings (those with rows)."""
    parts = []
    if findings.ranking:
        parts += ["### Overall ranking", "", _md_table(RANKING_HEAD, ranking_rows(findings)), ""]
    for t in findings.tables:
        if t.rows:
            parts += [f"### {t.title}", "", _md_table(t.head, t.rows), "", t.note, ""]
    return parts


def render_markdown(
    groups: list[Group],
    runs: list[Run],
    findings: Findings,
    plots: list[FigureFile],
    folder: Path,
    ensembles: list[dict[str, Any]] | None = None,
    sections: list[str] | None = None,
) -> str:
    """The report in markdown; `sections` (robustness, explanations) go after the runs'
    figures."""
    ctx = _context(groups, runs)
    parts = [
        "# medbench benchmark report",
        "",
        _intro(ctx),
        "",
        "## Results",
        "",
        _md_table(TABLE_HEAD, study_rows(groups, findings)),
        "",
        _table_note(groups, ctx),
        "",
        *_md_ensembles(ensembles),
        "## Key findings",
        "",
        *[f"- {s}" for s in findings.findings],
        "",
        "## Recommendations",
        "",
        *([f"- {s}" for s in findings.recommendations] or ["- None: no finished runs."]),
        "",
        *_md_details(findings),
        "## Runs",
        "",
        _md_table(RUN_HEAD, run_rows(runs, findings)),
        "",
    ]
    if ctx["env"]:
        e = ctx["env"]
        parts += ["Environment: " + ", ".join(f"{k} {v}" for k, v in e.items()), ""]
    if plots:
        parts += ["## Figures", ""]
        for fig in plots:
            p = fig.path
            rel = p.relative_to(folder) if p.is_relative_to(folder) else p
            parts += [f"![{fig.caption}]({rel.as_posix()})", "", f"*{fig.caption}*", ""]
    parts += [text for section in sections or [] for text in (section, "")]
    parts += [
        "Files: `results.csv` and `results.json` (one row per run), `summary.json` (groups and "
        "findings), `report.html` (this report with the figures embedded).",
        "",
    ]
    return "\n".join(parts)


def _html_table(
    head: tuple[str, ...], rows: list[tuple[str, ...]], published_col: int | None = None
) -> str:
    out = [
        "<table><thead><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
    ]
    for row in rows:
        cls = ""
        if published_col is not None and row[published_col].startswith("baseline"):
            cls = ' class="baseline"'
        elif published_col is not None and not row[published_col].startswith("this study"):
            cls = ' class="published"'
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f0f0f0} tr.baseline td{background:#fff6e0}
tr.published td{color:#555;font-style:italic;background:#fafafa}
img{max-width:100%;margin:1em 0 0.3em;border:1px solid #eee}
figcaption{font-size:14px;color:#444;margin-bottom:2em}
"""


_ENSEMBLE_NOTE = (
    "Each ensemble combines the dataset's finished runs (weights chosen on the validation "
    "split); 'vs best single' compares it with the run that has the best validation score. "
    "Latency is the sum of the members' (ms per image at batch 1)."
)


def _md_ensembles(ensembles: list[dict[str, Any]] | None) -> list[str]:
    if not ensembles:
        return []
    return [
        "## Ensembles",
        "",
        _md_table(ENSEMBLE_HEAD, ensemble_rows(ensembles)),
        "",
        _ENSEMBLE_NOTE,
        "",
    ]


def _html_details(findings: Findings) -> list[str]:
    e = html.escape
    parts = []
    if findings.ranking:
        parts += ["<h3>Overall ranking</h3>", _html_table(RANKING_HEAD, ranking_rows(findings))]
    for t in findings.tables:
        if t.rows:
            parts += [
                f"<h3>{e(t.title)}</h3>",
                _html_table(t.head, t.rows),
                f"<p><small>{e(t.note)}</small></p>",
            ]
    return parts


def figure_html(path: Path, caption: str) -> str:
    """A PNG embedded as base64 in a <figure> with its caption."""
    e = html.escape
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{e(caption)}</figcaption></figure>"
    )


def _html_figures(plots: list[FigureFile]) -> list[str]:
    parts = ["<h2>Figures</h2>"] if plots else []
    return parts + [figure_html(fig.path, fig.caption) for fig in plots]


def render_html(
    groups: list[Group],
    runs: list[Run],
    findings: Findings,
    plots: list[FigureFile],
    ensembles: list[dict[str, Any]] | None = None,
    sections: list[str] | None = None,
) -> str:
    ctx = _context(groups, runs)
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>medbench benchmark report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>medbench benchmark report</h1>",
        f"<p>{e(_intro(ctx))}</p>",
        "<h2>Results</h2>",
        _html_table(TABLE_HEAD, study_rows(groups, findings), published_col=2),
        f"<p><small>{e(_table_note(groups, ctx))}</small></p>",
        *(
            [
                "<h2>Ensembles</h2>",
                _html_table(ENSEMBLE_HEAD, ensemble_rows(ensembles)),
                f"<p><small>{e(_ENSEMBLE_NOTE)}</small></p>",
            ]
            if ensembles
            else []
        ),
        "<h2>Key findings</h2><ul>",
        *[f"<li>{e(s)}</li>" for s in findings.findings],
        "</ul>",
        "<h2>Recommendations</h2><ul>",
        *[f"<li>{e(s)}</li>" for s in findings.recommendations],
        "</ul>",
        *_html_details(findings),
        "<h2>Runs</h2>",
        _html_table(RUN_HEAD, run_rows(runs, findings)),
    ]
    if ctx["env"]:
        parts.append(
            "<p><small>Environment: "
            + e(", ".join(f"{k} {v}" for k, v in ctx["env"].items()))
            + "</small></p>"
        )
    parts += _html_figures(plots)
    parts += sections or []
    parts.append("</body></html>")
    return "\n".join(parts)
