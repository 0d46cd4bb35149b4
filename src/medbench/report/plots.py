"""The report's figures, as PNG files. Uses matplotlib's object API with the Agg canvas (no
pyplot, no display). Each function returns the paths it wrote (none when nothing to draw)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medbench.fsutil import atomic_savefig
from medbench.metrics import reliability_bins
from medbench.report.collect import Group, Run, Stat

DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    return atomic_savefig(fig, path, dpi=DPI)


def _unit(g: Group) -> str:
    return g.dataset if g.size == 28 else f"{g.dataset}@{g.size}"


def accuracy_heatmap(groups: list[Group], folder: Path) -> list[Path]:
    units = list(dict.fromkeys(_unit(g) for g in groups))
    labels = list(dict.fromkeys(g.label for g in groups))
    grid = np.full((len(units), len(labels)), np.nan)
    for g in groups:
        grid[units.index(_unit(g)), labels.index(g.label)] = 100 * (
            g.stat("test_acc").mean or np.nan
        )
    fig = Figure(figsize=(1.6 + 1.5 * len(labels), 1.2 + 0.8 * len(units)))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_yticks(range(len(units)), units)
    for i in range(len(units)):
        for j in range(len(labels)):
            if not np.isnan(grid[i, j]):
                ax.text(
                    j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="white", fontsize=10
                )
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    ax.set_title("Mean test accuracy")
    return [_save(fig, folder / "accuracy_heatmap.png")]


def _scatter(
    groups: list[Group], folder: Path, x_field: str, x_label: str, name: str
) -> list[Path]:
    """Mean test accuracy (error bars: std over seeds) against `x_field`, one colour per
    dataset, each point labelled with its model."""
    points = _accuracy_points(groups, x_field)
    if not points:
        return []
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    for unit in dict.fromkeys(_unit(g) for g, _, _ in points):
        _scatter_dataset(ax, [(g, x, s) for g, x, s in points if _unit(g) == unit], unit)
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"Accuracy vs {x_label.split(' (')[0]}")
    return [_save(fig, folder / name)]


def _accuracy_points(groups: list[Group], x_field: str) -> list[tuple[Group, float, Stat]]:
    """(group, mean of x_field, test accuracy) of each group that has both."""
    points = [(g, g.stat(x_field).mean, g.stat("test_acc")) for g in groups]
    return [(g, x, s) for g, x, s in points if x and s.mean is not None]


def _scatter_dataset(ax, points: list[tuple[Group, float, Stat]], unit: str) -> None:
    ax.errorbar(
        [x for _, x, _ in points],
        [100 * s.mean for _, _, s in points],
        yerr=[100 * (s.std or 0) for _, _, s in points],
        fmt="o",
        capsize=3,
        label=unit,
    )
    for g, x, s in points:
        ax.annotate(
            g.label, (x, 100 * s.mean), textcoords="offset points", xytext=(4, 4), fontsize=8
        )


def accuracy_vs_params(groups: list[Group], folder: Path) -> list[Path]:
    return _scatter(groups, folder, "n_params", "parameters (log scale)", "accuracy_vs_params.png")


def accuracy_vs_flops(groups: list[Group], folder: Path) -> list[Path]:
    return _scatter(
        groups, folder, "gflops", "GFLOPs per image (log scale)", "accuracy_vs_flops.png"
    )


def efficiency_bars(groups: list[Group], folder: Path) -> list[Path]:
    sel = [g for g in groups if g.stat("efficiency").mean is not None]
    if not sel:
        return []
    fig = Figure(figsize=(max(5.0, 0.9 * len(sel) + 2), 4.2))
    ax = fig.add_subplot()
    names = [f"{g.label}\n{_unit(g)}" for g in sel]
    ax.bar(
        range(len(sel)),
        [g.stat("efficiency").mean for g in sel],
        yerr=[g.stat("efficiency").std or 0 for g in sel],
        capsize=3,
        color="tab:green",
    )
    ax.set_xticks(range(len(sel)), names, fontsize=8)
    ax.set_ylabel("test accuracy (%) per million parameters")
    ax.set_yscale("log")
    ax.set_title("Efficiency")
    return [_save(fig, folder / "efficiency.png")]


def _per_dataset_panels(
    groups: list[Group],
    folder: Path,
    prefix: str,
    draw: Callable,
    height: float = 3.2,
) -> list[Path]:
    paths = []
    for unit in dict.fromkeys(_unit(g) for g in groups):
        gs = [g for g in groups if _unit(g) == unit]
        fig = Figure(figsize=(3.6 * len(gs), height))
        drawn = False
        for i, g in enumerate(gs):
            ax = fig.add_subplot(1, len(gs), i + 1)
            drawn = draw(ax, g) or drawn
            ax.set_title(f"{g.label} ({unit})", fontsize=9)
        if drawn:
            paths.append(_save(fig, folder / f"{prefix}_{unit.replace('@', '_')}.png"))
    return paths


def training_curves(groups: list[Group], folder: Path) -> list[Path]:
    def draw(ax, g: Group) -> bool:
        drawn = False
        for run in g.runs:
            history = run.results.history if run.results else []
            rounds = [h.round for h in history]
            if not rounds:
                continue
            for key, style in (("val_acc", "-"), ("train_loss", ":")):
                ys = [getattr(h, key) for h in history]
                if any(isinstance(y, (int, float)) for y in ys):
                    ax.plot(
                        rounds,
                        [np.nan if y is None else y for y in ys],
                        style,
                        marker=".",
                        label=f"seed {run['seed']} {key}",
                    )
                    drawn = True
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=6)
        return drawn

    return _per_dataset_panels(groups, folder, "curves", draw)


def _confusion(run: Run) -> np.ndarray | None:
    cm = run.results.test.get("confusion_matrix") if run.results else None
    if not cm:
        return None
    arr = np.asarray(cm, dtype=float)
    return arr.sum(axis=0) if arr.ndim == 3 else arr  # multi-label: all labels' 2x2 summed


def confusion_matrices(groups: list[Group], folder: Path) -> list[Path]:
    def draw(ax, g: Group) -> bool:
        run = g.runs[0]
        cm = _confusion(run)
        if cm is None:
            ax.set_axis_off()
            return False
        rows = cm.sum(axis=1, keepdims=True)
        ax.imshow(
            np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0), cmap="Blues", vmin=0, vmax=1
        )
        if cm.shape[0] <= 10:
            for i in range(cm.shape[0]):
                for j in range(cm.shape[1]):
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7)
        ax.set_xlabel(f"predicted (seed {run['seed']})")
        ax.set_ylabel("true")
        return True

    return _per_dataset_panels(groups, folder, "confusion", draw)


def reliability_diagrams(groups: list[Group], folder: Path) -> list[Path]:
    def draw(ax, g: Group) -> bool:
        drawn = False
        for run in g.runs:
            npz = run.run_dir / "predictions.npz" if run.run_dir else None
            task = run.results.dataset.get("task") if run.results else None
            if npz is None or not npz.exists() or not task:
                continue
            with np.load(npz) as data:
                if "test_probs" not in data or "test_labels" not in data:
                    continue
                bins = reliability_bins(data["test_labels"], data["test_probs"], task)
            xs = [c for c, n in zip(bins["confidence"], bins["count"], strict=True) if n]
            ys = [a for a, n in zip(bins["accuracy"], bins["count"], strict=True) if n]
            ax.plot(xs, ys, marker="o", label=f"seed {run['seed']}")
            drawn = True
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (calibrated)")
        ax.set_ylabel("accuracy")
        if drawn:
            ax.legend(fontsize=7)
        return drawn

    return _per_dataset_panels(groups, folder, "reliability", draw)


ALL_PLOTS = (
    accuracy_heatmap,
    accuracy_vs_params,
    accuracy_vs_flops,
    efficiency_bars,
    training_curves,
    confusion_matrices,
    reliability_diagrams,
)


def draw_all(groups: list[Group], folder: Path) -> list[Path]:
    """Every figure for `groups` into `folder`; [] when there is nothing finished."""
    if not groups:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for plot in ALL_PLOTS:
        paths.extend(plot(groups, folder))
    return paths
