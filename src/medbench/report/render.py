"""The report as text: the study table (ours beside the published and reference-study rows),
findings, per-run table and provenance, in Markdown and in one self-contained HTML file."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from medbench.config import format_seconds
from medbench.report.collect import Group, Run, Stat
from medbench.report.findings import Findings, dataset_unit
from medbench.report.published import load_published, published_rows, reference_study_rows

TABLE_HEAD = (
    "Dataset",
    "Model",
    "Source",
    "Test accuracy",
    "Test AUC",
    "Parameters",
    "FLOPs",
    "Efficiency",
    "Train time",
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
    "Epochs",
    "Train time",
    "Collapsed",
    "Official data",
)


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


def study_rows(groups: list[Group]) -> list[tuple[str, ...]]:
    """The study table: per dataset our groups (mean ± std, n), then the published
    MedMNIST v2 rows and the reference study's rows for that dataset."""
    rows: list[tuple[str, ...]] = []
    for unit in dict.fromkeys(dataset_unit(g) for g in groups):
        gs = [g for g in groups if dataset_unit(g) == unit]
        rows += [_our_row(unit, g) for g in gs]
        rows += _published_study_rows(unit, gs[0].dataset)
        rows += _reference_study_rows(unit, gs[0].dataset)
    return rows


def _our_row(unit: str, g: Group) -> tuple[str, ...]:
    return (
        unit,
        g.label,
        f"this study (n={g.n})",
        fmt_stat(g.stat("test_acc")),
        fmt_stat(g.stat("test_auc"), scale=1.0, digits=3, suffix=""),
        fmt_params(g.stat("n_params").mean),
        fmt_flops(g.stat("gflops").mean),
        fmt_stat(g.stat("efficiency"), scale=1.0, suffix=" %/M"),
        fmt_seconds(g.stat("train_seconds").mean),
    )


def _published_study_rows(unit: str, dataset: str) -> list[tuple[str, ...]]:
    """MedMNIST v2's published rows; * marks those not cross-checked."""
    checked = set((load_published()["datasets"].get(dataset) or {}).get("checked") or [])
    rows = []
    for method, vals in published_rows(dataset).items():
        mark = "" if method in checked else " *"
        auc = NO_VALUE if vals.get("auc") is None else f"{vals['auc']:.3f}"
        source = f"published: MedMNIST v2{mark}"
        rows.append((unit, method, source, _pub(vals.get("acc")), auc) + (NO_VALUE,) * 4)
    return rows


def _reference_study_rows(unit: str, dataset: str) -> list[tuple[str, ...]]:
    rows = []
    for model, vals in reference_study_rows(dataset).items():
        acc = _pub(vals.get("acc")) + (" (collapsed)" if vals.get("collapsed") else "")
        rows.append((unit, model, "reference study", acc) + (NO_VALUE,) * 5)
    return rows


def run_rows(runs: list[Run]) -> list[tuple[str, ...]]:
    out = []
    for r in runs:
        if r["status"] != "finished":
            out.append(
                (
                    str(r["dataset"]),
                    str(r["model"]),
                    str(r["seed"]),
                    f"{r['status']}: {r['error'] or ''}",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                )
            )
            continue
        official = {True: "yes", False: "NO (MD5 differs)", None: "unknown"}[
            None if r["data_md5_matches"] is None else bool(r["data_md5_matches"])
        ]
        out.append(
            (
                str(r["dataset"]),
                str(r["model"]),
                str(r["seed"]),
                _pub(r["test_acc"]),
                "–" if r["test_auc"] is None else f"{r['test_auc']:.3f}",
                _pub(r["val_acc"]),
                str(r["epochs_completed"] or "–"),
                fmt_seconds(r["train_seconds"]),
                "YES" if r["collapsed"] else "no",
                official,
            )
        )
    return out


def ensemble_rows(ensembles: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows = []
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
    done = [r for r in runs if r.finished]
    env = done[0].results.environment if done else {}
    counts = {
        s: sum(1 for r in runs if r["status"] == s)
        for s in ("finished", "failed", "running", "pending")
    }
    return {"pub": pub, "env": env, "counts": counts}


def render_markdown(
    groups: list[Group],
    runs: list[Run],
    findings: Findings,
    plots: list[Path],
    folder: Path,
    ensembles: list[dict[str, Any]] | None = None,
) -> str:
    ctx = _context(groups, runs)
    c = ctx["counts"]
    parts = [
        "# medbench benchmark report",
        "",
        f"Runs: {c['finished']} finished, {c['failed']} failed, {c['running']} running, {c['pending']} pending. "
        "Accuracy and AUC are on each dataset's official test split, mean ± sample standard deviation over "
        "seeds (n = number of seeds). Efficiency = test accuracy (%) per million parameters.",
        "",
        "## Results",
        "",
        _md_table(TABLE_HEAD, study_rows(groups)),
        "",
        f"Published rows: {ctx['pub']['label']}, test ACC/AUC as published, not measured here "
        f"(rows marked * were not cross-checked against a second transcription). Citation: {ctx['pub']['citation']}. "
        f"Reference-study rows: {ctx['pub']['reference_study']['notes']}",
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
        "## Runs",
        "",
        _md_table(RUN_HEAD, run_rows(runs)),
        "",
    ]
    if ctx["env"]:
        e = ctx["env"]
        parts += ["Environment: " + ", ".join(f"{k} {v}" for k, v in e.items()), ""]
    if plots:
        parts += ["## Figures", ""]
        for p in plots:
            rel = p.relative_to(folder) if p.is_relative_to(folder) else p
            parts += [f"![{p.stem}]({rel.as_posix()})", ""]
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
        if published_col is not None and not row[published_col].startswith("this study"):
            cls = ' class="published"'
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f0f0f0} tr.published td{color:#555;font-style:italic;background:#fafafa}
img{max-width:100%;margin:1em 0;border:1px solid #eee}
"""


_ENSEMBLE_NOTE = (
    "Each ensemble combines the dataset's finished runs (weights chosen on the validation "
    "split); 'vs best single' compares it with the run that has the best validation score. "
    "Latency is the sum of the members' (ms per image at batch 1)."
)


def _md_ensembles(ensembles: list[dict[str, Any]] | None) -> list[str]:
    if not ensembles:
        return []
    return ["## Ensembles", "", _md_table(ENSEMBLE_HEAD, ensemble_rows(ensembles)), "",
            _ENSEMBLE_NOTE, ""]  # fmt: skip


def render_html(
    groups: list[Group],
    runs: list[Run],
    findings: Findings,
    plots: list[Path],
    ensembles: list[dict[str, Any]] | None = None,
) -> str:
    ctx = _context(groups, runs)
    c = ctx["counts"]
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>medbench benchmark report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>medbench benchmark report</h1>",
        f"<p>Runs: {c['finished']} finished, {c['failed']} failed, {c['running']} running, {c['pending']} pending. "
        "Test accuracy and AUC on the official test split, mean ± sample standard deviation over seeds. "
        "Efficiency = test accuracy (%) per million parameters.</p>",
        "<h2>Results</h2>",
        _html_table(TABLE_HEAD, study_rows(groups), published_col=2),
        f"<p><small>Published rows (italic): {e(ctx['pub']['label'])}, as published, not measured here; rows "
        f"marked * were not cross-checked against a second transcription. {e(ctx['pub']['citation'])}. "
        f"Reference study: {e(ctx['pub']['reference_study']['notes'])}</small></p>",
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
        "<h2>Runs</h2>",
        _html_table(RUN_HEAD, run_rows(runs)),
    ]
    if ctx["env"]:
        parts.append(
            "<p><small>Environment: "
            + e(", ".join(f"{k} {v}" for k, v in ctx["env"].items()))
            + "</small></p>"
        )
    if plots:
        parts.append("<h2>Figures</h2>")
        for p in plots:
            data = base64.b64encode(p.read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img alt='{e(p.stem)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{e(p.stem)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)
