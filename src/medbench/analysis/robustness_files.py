"""The files and figures of a robustness evaluation (`medbench.analysis.robustness` computes
the scores and summaries they hold).

    robustness.json           the runs' scores, the summaries and the figures' names
    robustness-runs.csv       one row per run, corruption and severity
    robustness-summary.csv    one row per model and corruption, with an 'all' row
    robustness-<d>-<size>.png balanced error by severity and BE per corruption
    report.md                 the robustness section (`report_markdown`)

`load_written` reads such a folder back; `plot_gallery` draws one image under every
corruption of its dataset.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medbench.analysis.robustness import (
    DEFAULT_BASELINE,
    ModelSummary,
    RunRobustness,
    summarize,
    undefined_rbe,
)
from medbench.data.corruptions import corrupt, dataset_corruptions, image_scale
from medbench.utils.fsutil import atomic_path, atomic_write_json, atomic_write_text

SCHEMA_VERSION = 1


# ----------------------------------------------------------------------------- files


def rows(results: Sequence[RunRobustness]) -> list[dict[str, Any]]:
    """One flat row per run, corruption and severity (clean as severity 0)."""
    out = []
    for r in results:
        for s in [r.clean, *r.scores]:
            out.append(
                {
                    "dataset": r.dataset,
                    "image_size": r.image_size,
                    "model": r.model,
                    "seed": r.seed,
                    "run_dir": r.run_dir,
                    **asdict(s),
                }
            )
    return out


def _csv_text(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if table:
        writer = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    return buf.getvalue()


def summary_rows(summaries: Sequence[ModelSummary]) -> list[dict[str, Any]]:
    """One row per model and corruption (and an 'all' row with the means)."""
    out = []
    for m in summaries:
        head = {
            "dataset": m.dataset,
            "image_size": m.image_size,
            "model": m.model,
            "baseline": m.baseline,
            "n_seeds": m.n_seeds,
        }
        out.append(
            {
                **head,
                "corruption": "all",
                "clean_error": m.clean_error.mean,
                "clean_error_std": m.clean_error.std,
                "error": m.corrupted_error.mean,
                "error_std": m.corrupted_error.std,
                "be": m.be.mean,
                "be_std": m.be.std,
                "rbe": m.rbe.mean,
                "rbe_std": m.rbe.std,
            }
        )
        for c, v in m.per_corruption.items():
            out.append(
                {
                    **head,
                    "corruption": c,
                    "clean_error": m.clean_error.mean,
                    "clean_error_std": m.clean_error.std,
                    "error": v["error"].mean,
                    "error_std": v["error"].std,
                    "be": v["be"].mean,
                    "be_std": v["be"].std,
                    "rbe": v["rbe"].mean,
                    "rbe_std": v["rbe"].std,
                }
            )
    return out


def report_markdown(
    summaries: Sequence[ModelSummary], figures: Sequence[tuple[str, str]] = ()
) -> str:
    """The robustness section: per dataset, the summary table and the BE per corruption."""
    if not summaries:
        return ""
    base = summaries[0].baseline
    lines = [
        "## Robustness (MedMNIST-C corruptions)",
        "",
        f"Balanced error E = 1 - balanced accuracy on the test split, clean and under each "
        f"corruption at severities 1-5; BE and rBE relative to {base} trained at the same size "
        f"(so {base}'s own BE and rBE average to 1). Mean ± std over seeds.",
        "",
    ]
    for key in dict.fromkeys((m.dataset, m.image_size) for m in summaries):
        group = [m for m in summaries if (m.dataset, m.image_size) == key]
        lines += [
            f"### {key[0]} ({key[1]} px)",
            "",
            "| model | seeds | clean E | corrupted E | BE | rBE |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {m.model} | {m.n_seeds} | {m.clean_error.text()} | {m.corrupted_error.text()} "
            f"| {m.be.text()} | {m.rbe.text()} |"
            for m in group
        ]
        names = list(group[0].per_corruption)
        if undefined := undefined_rbe(group[0]):
            lines += [
                "",
                f"rBE leaves out {', '.join(undefined)}: {base}'s error is the same with and "
                f"without it at {key[1]} px, so its rBE is undefined (0/0).",
            ]
        lines += [
            "",
            "BE per corruption:",
            "",
            "| corruption | " + " | ".join(m.model for m in group) + " |",
            "|---|" + "---|" * len(group),
        ]
        lines += [
            f"| {c} | " + " | ".join(m.per_corruption[c]["be"].text(2) for m in group) + " |"
            for c in names
        ]
        lines.append("")
    lines += [f"![{caption}]({path})\n" for path, caption in figures]
    return "\n".join(lines)


def write_robustness(
    results: Sequence[RunRobustness], summaries: Sequence[ModelSummary], out_dir: str | Path
) -> list[Path]:
    """robustness.json, robustness-runs.csv, robustness-summary.csv, figures, report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = plot_robustness(summaries, out)
    written = [out / p for p, _ in figures]
    written += [
        atomic_write_json(
            out / "robustness.json",
            {
                "schema_version": SCHEMA_VERSION,
                "baseline": summaries[0].baseline if summaries else DEFAULT_BASELINE,
                "runs": [r.to_json() for r in results],
                "summaries": [m.to_json() for m in summaries],
                "figures": [list(f) for f in figures],  # [file, caption]
            },
        ),
        atomic_write_text(out / "robustness-runs.csv", _csv_text(rows(results))),
        atomic_write_text(out / "robustness-summary.csv", _csv_text(summary_rows(summaries))),
    ]
    written.append(
        atomic_write_text(
            out / "report.md", "# Robustness\n\n" + report_markdown(summaries, figures)
        )
    )
    return written


def load_robustness(path: str | Path) -> list[RunRobustness]:
    obj = json.loads(Path(path).read_text())
    return [RunRobustness.from_json(r) for r in obj["runs"]]


def load_written(folder: str | Path) -> tuple[list[ModelSummary], list[tuple[str, str]]]:
    """The summaries (recomputed from the runs' scores) and the figures [(file, caption)]
    of a folder `write_robustness` wrote."""
    obj = json.loads((Path(folder) / "robustness.json").read_text())
    runs = [RunRobustness.from_json(r) for r in obj["runs"]]
    baseline = obj.get("baseline") or DEFAULT_BASELINE
    figures = [(str(f), str(c)) for f, c in obj.get("figures") or []]
    return summarize(runs, baseline), figures


# ----------------------------------------------------------------------------- figures


def plot_robustness(summaries: Sequence[ModelSummary], out_dir: Path) -> list[tuple[str, str]]:
    """Per dataset: balanced error against severity, and BE per corruption, per model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figures = []
    for key in dict.fromkeys((m.dataset, m.image_size) for m in summaries):
        group = [m for m in summaries if (m.dataset, m.image_size) == key]
        fig = Figure(figsize=(11, 4), layout="constrained")
        FigureCanvasAgg(fig)
        ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 2])
        for m in group:
            sev = [0, *m.per_severity]
            mean = [m.clean_error.mean, *(v.mean for v in m.per_severity.values())]
            std = [m.clean_error.std, *(v.std for v in m.per_severity.values())]
            ax1.errorbar(sev, mean, yerr=std, marker="o", capsize=3, label=m.model)
        ax1.set(
            xlabel="severity (0 = clean)",
            ylabel="balanced error (mean over corruptions)",
            title=f"{key[0]} {key[1]} px",
        )
        ax1.legend()
        names = list(group[0].per_corruption)
        width = 0.8 / len(group)
        for i, m in enumerate(group):
            xs = np.arange(len(names)) + (i - (len(group) - 1) / 2) * width
            ax2.bar(
                xs,
                [m.per_corruption[c]["be"].mean for c in names],
                width,
                yerr=[m.per_corruption[c]["be"].std for c in names],
                capsize=2,
                label=m.model,
            )
        ax2.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax2.set_xticks(np.arange(len(names)), names, rotation=35, ha="right")
        ax2.set(ylabel=f"BE (relative to {group[0].baseline})", title="BE per corruption")
        name = f"robustness-{key[0]}-{key[1]}.png"
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        figures.append(
            (name, f"{key[0]} at {key[1]} px: balanced error by severity and BE per corruption")
        )
    return figures


def plot_gallery(image: np.ndarray, dataset: str, path: str | Path, seed: int = 0) -> Path:
    """One uint8 (H, W, C) image under each corruption of `dataset` at severities 1-5."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    specs = dataset_corruptions(dataset)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    fig = Figure(figsize=(7, 1.3 * (len(specs) + 1)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(specs) + 1, 6, squeeze=False)
    gen = torch.Generator().manual_seed(seed)
    cmap = "gray" if x.shape[1] == 1 else None
    for row, spec in enumerate([None, *specs]):
        for col in range(6):
            ax = axes[row][col]
            ax.set_xticks([]), ax.set_yticks([])
            if spec is None and col > 0:
                ax.axis("off")
                continue
            img = (
                x
                if spec is None or col == 0
                else corrupt(x, spec, col, gen, image_scale(x.shape[-1]))
            )
            ax.imshow(img[0].permute(1, 2, 0).squeeze(-1).numpy(), cmap=cmap, vmin=0, vmax=1)
            if row == 0 or (row == 1 and col > 0):
                ax.set_title("clean" if col == 0 else f"severity {col}", fontsize=8)
            if col == 0 and spec is not None:
                ax.set_ylabel(spec.name, fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(path)
