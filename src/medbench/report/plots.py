"""The report's figures, as PNG files with a caption each. Uses matplotlib's object API with
the Agg canvas (no pyplot, no display) and scikit-learn's displays (ConfusionMatrixDisplay,
RocCurveDisplay) where they fit, so classes and axes are labelled for us. Each function
returns the figures it wrote (none when nothing to draw)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay, multilabel_confusion_matrix

from medbench.report.collect import Group, Run
from medbench.scoring.metrics import MULTI_LABEL, reliability_bins
from medbench.scoring.stats import RankingTest, critical_difference_diagram
from medbench.utils.fsutil import atomic_path

DPI = 110
MARKERS = "osD^vP*XhH<>p"


@dataclass
class FigureFile:
    path: Path
    caption: str


def _save(fig: Figure, path: Path, caption: str) -> FigureFile:
    """Write the figure (laid out by its own constrained layout) atomically; the tight
    bounding box keeps legends placed outside the axes inside the image."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1)
    return FigureFile(Path(path), caption)


def _unit(g: Group) -> str:
    return g.dataset if g.size == 28 else f"{g.dataset}@{g.size}"


def _units(groups: list[Group]) -> list[str]:
    return list(dict.fromkeys(_unit(g) for g in groups))


def _slug(unit: str) -> str:
    return unit.replace("@", "_")


def _rotate(ax: Axes, degrees: int = 35) -> None:
    for label in ax.get_xticklabels():
        label.set_rotation(degrees)
        label.set_horizontalalignment("right")


def accuracy_heatmap(groups: list[Group], folder: Path) -> list[FigureFile]:
    units = _units(groups)
    labels = list(dict.fromkeys(g.label for g in groups))
    grid = np.full((len(units), len(labels)), np.nan)
    for g in groups:
        grid[units.index(_unit(g)), labels.index(g.label)] = 100 * (
            g.stat("test_acc").mean or np.nan
        )
    fig = Figure(figsize=(2.4 + 1.3 * len(labels), 1.6 + 0.6 * len(units)), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto", vmin=0, vmax=100)
    ax.set_xticks(range(len(labels)), labels)
    _rotate(ax)
    ax.set_yticks(range(len(units)), units)
    for i in range(len(units)):
        for j in range(len(labels)):
            if not np.isnan(grid[i, j]):
                colour = "white" if grid[i, j] < 60 else "black"
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color=colour)
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    ax.set_xlabel("model")
    ax.set_ylabel("dataset")
    return [
        _save(
            fig,
            folder / "accuracy_heatmap.png",
            "Mean test accuracy (%) of each model (columns) on each dataset (rows), over seeds.",
        )
    ]


def _accuracy_points(groups: list[Group], x_field: str) -> list[tuple[Group, float, float, float]]:
    """(group, mean of x_field, mean test accuracy, its standard deviation over seeds, 0
    with one seed) of each group that has both means."""
    points = []
    for g in groups:
        x, acc = g.stat(x_field).mean, g.stat("test_acc")
        if x and acc.mean is not None:
            points.append((g, x, acc.mean, acc.std or 0))
    return points


def _scatter(
    groups: list[Group], folder: Path, x_field: str, x_label: str, name: str
) -> list[FigureFile]:
    """Mean test accuracy (error bars: std over seeds) against `x_field`: colour per dataset,
    marker per model, both in legends (no text on the points, so nothing overlaps); a
    model with collapsed runs is drawn hollow."""
    points = _accuracy_points(groups, x_field)
    if not points:
        return []
    models = list(dict.fromkeys(g.label for g, _, _, _ in points))
    units = list(dict.fromkeys(_unit(g) for g, _, _, _ in points))
    colours = {u: f"C{i % 10}" for i, u in enumerate(units)}
    fig = Figure(figsize=(7.5, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for g, x, acc, spread in points:
        colour, marker = colours[_unit(g)], MARKERS[models.index(g.label) % len(MARKERS)]
        face = "none" if g.collapsed_runs else colour
        ax.errorbar(
            x,
            100 * acc,
            yerr=100 * spread,
            fmt=marker,
            color=colour,
            mfc=face,
            ms=8,
            capsize=3,
        )
    _two_legends(ax, fig, units, models, colours)
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    what = x_label.split(" (")[0]
    caption = (
        f"Mean test accuracy against {what} (log scale); error bars are the standard deviation "
        "over seeds. Colour: dataset; marker: model; hollow: the model collapsed in a run."
    )
    return [_save(fig, folder / name, caption)]


def _two_legends(ax: Axes, fig: Figure, units: list[str], models: list[str], colours) -> None:
    data = [Line2D([], [], color=colours[u], marker="o", ls="", label=u) for u in units]
    kinds = [
        Line2D([], [], color="0.3", marker=MARKERS[i % len(MARKERS)], ls="", label=m)
        for i, m in enumerate(models)
    ]
    first = ax.legend(handles=data, title="dataset", loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.add_artist(first)
    ax.legend(handles=kinds, title="model", loc="lower left", bbox_to_anchor=(1.01, 0))


def accuracy_vs_params(groups: list[Group], folder: Path) -> list[FigureFile]:
    return _scatter(groups, folder, "n_params", "parameters (log scale)", "accuracy_vs_params.png")


def accuracy_vs_flops(groups: list[Group], folder: Path) -> list[FigureFile]:
    return _scatter(
        groups, folder, "gflops", "GFLOPs per image (log scale)", "accuracy_vs_flops.png"
    )


def _efficiencies(groups: list[Group]) -> list[tuple[Group, float, float]]:
    """(group, mean efficiency, its standard deviation over seeds, 0 with one seed) of each
    group that has a mean efficiency."""
    found = []
    for g in groups:
        s = g.stat("efficiency")
        if s.mean is not None:
            found.append((g, s.mean, s.std or 0))
    return found


def efficiency_bars(groups: list[Group], folder: Path) -> list[FigureFile]:
    bars = _efficiencies(groups)
    if not bars:
        return []
    sel = [g for g, _, _ in bars]
    fig = Figure(figsize=(max(5.0, 0.7 * len(sel) + 2.5), 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(
        range(len(sel)),
        [mean for _, mean, _ in bars],
        yerr=[spread for _, _, spread in bars],
        capsize=3,
        color=["0.75" if g.collapsed_runs else "tab:green" for g in sel],
    )
    ax.set_xticks(range(len(sel)), [f"{g.label} ({_unit(g)})" for g in sel], fontsize=8)
    _rotate(ax, 40)
    ax.set_ylabel("test accuracy (%) per million parameters")
    ax.set_yscale("log")
    caption = (
        "Efficiency: mean test accuracy (%) per million parameters (log scale), error bars over "
        "seeds; grey bars are models that collapsed in a run."
    )
    return [_save(fig, folder / "efficiency.png", caption)]


def _history_x(run: Run) -> list[float]:
    """Epochs trained at the end of each round (rounds when the file has no epochs)."""
    history = run.results.history if run.results else []
    return [h.epochs if h.epochs is not None else float(h.round) for h in history]


def _curve(ax: Axes, xs: list[float], ys: list, **style) -> bool:
    values = [np.nan if y is None else float(y) for y in ys]
    if not xs or all(np.isnan(values)):
        return False
    ax.plot(xs, values, marker="o", ms=4, **style)
    return True


def _draw_curves(loss_ax: Axes, acc_ax: Axes, gs: list[Group]) -> bool:
    drawn = False
    for i, g in enumerate(gs):
        colour = f"C{i % 10}"
        for k, run in enumerate(g.runs):
            xs, history = _history_x(run), run.results.history if run.results else []
            label = g.label if k == 0 else None
            drawn |= _curve(loss_ax, xs, [h.train_loss for h in history], color=colour, label=label)
            _curve(loss_ax, xs, [h.val_loss for h in history], color=colour, ls="--")
            _curve(acc_ax, xs, [h.val_acc for h in history], color=colour, label=label)
    return drawn


def training_curves(groups: list[Group], folder: Path) -> list[FigureFile]:
    """Per dataset: loss (train solid, validation dashed) and validation accuracy, on
    separate axes, against epochs trained (one line per seed, one colour per model)."""
    out = []
    for unit in _units(groups):
        gs = [g for g in groups if _unit(g) == unit]
        fig = Figure(figsize=(11, 4.0), layout="constrained")
        loss_ax, acc_ax = fig.subplots(1, 2)
        if not _draw_curves(loss_ax, acc_ax, gs):
            continue
        longest = max((max(_history_x(r), default=0) for g in gs for r in g.runs), default=1)
        for ax, ylabel in ((loss_ax, "loss"), (acc_ax, "validation accuracy")):
            ax.set_xlim(0, 1.08 * longest)  # from 0, so a one-round run is a point, not a zoom
            ax.set_xlabel("epochs trained")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        acc_ax.set_ylim(0, 1)
        loss_ax.set_ylim(bottom=0)
        loss_ax.set_title("loss (solid: train, dashed: validation)", fontsize=10)
        acc_ax.set_title("validation accuracy", fontsize=10)
        acc_ax.legend(fontsize=8, title="model", loc="lower right")
        caption = (
            f"Training curves on {unit}: loss (left; solid train, dashed validation) and "
            "validation accuracy (right) at the end of each round, against epochs trained; "
            "one line per seed, one colour per model."
        )
        out.append(_save(fig, folder / f"curves_{_slug(unit)}.png", caption))
    return out


def _class_names(run: Run, n: int) -> list[str]:
    """The catalogue's class names, long ones wrapped onto lines of about 18 characters."""
    names = list((run.results.dataset if run.results else {}).get("label_names") or [])
    names = [str(x) for x in names] if len(names) == n else [str(i) for i in range(n)]
    return [textwrap.fill(x, 18) for x in names]


def _single_label_confusion(run: Run) -> np.ndarray | None:
    if not run.results or run.results.dataset.get("task") == MULTI_LABEL:
        return None
    cm = np.asarray(run.results.test.get("confusion_matrix") or [], dtype=np.int64)
    return cm if cm.ndim == 2 and cm.size else None


def _draw_confusion(axes, run: Run, cm: np.ndarray, label: str) -> None:
    names = _class_names(run, cm.shape[0])
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    small = cm.shape[0] <= 12
    for ax, values, fmt, what in (
        (axes[0], cm, "d", "counts"),
        (axes[1], share, ".0%", "row-normalised"),
    ):
        disp = ConfusionMatrixDisplay(values, display_labels=names)
        disp.plot(ax=ax, cmap="Blues", values_format=fmt, colorbar=False, include_values=small)
        _rotate(ax, 45)
        ax.tick_params(labelsize=8)
        ax.set_title(f"{label}, seed {run['seed']}: {what}", fontsize=9)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")


def confusion_matrices(groups: list[Group], folder: Path) -> list[FigureFile]:
    """Per dataset: each model's first seed, test split, as counts and row-normalised."""
    out = []
    for unit in _units(groups):
        drawn = [
            (g, g.runs[0], cm)
            for g in groups
            if _unit(g) == unit and (cm := _single_label_confusion(g.runs[0])) is not None
        ]
        if not drawn:
            continue
        side = 1.5 + 0.55 * drawn[0][2].shape[0]
        fig = Figure(figsize=(2 * side + 4, (side + 1.5) * len(drawn)), layout="constrained")
        axes = fig.subplots(len(drawn), 2, squeeze=False)
        for row, (g, run, cm) in zip(axes, drawn, strict=True):
            _draw_confusion(row, run, cm, g.label)
        caption = (
            f"Confusion matrices on the {unit} test split, one row per model (its first seed): "
            "counts (left) and row-normalised shares (right, recall on the diagonal); rows are "
            "the true class, columns the predicted one."
        )
        out.append(_save(fig, folder / f"confusion_{_slug(unit)}.png", caption))
    return out


def _test_predictions(run: Run) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(test labels, test probabilities, task) from a run's predictions.npz, or None."""
    npz = run.run_dir / "predictions.npz" if run.run_dir else None
    task = run.results.dataset.get("task") if run.results else None
    if npz is None or not npz.exists() or not task:
        return None
    with np.load(npz) as data:
        if "test_probs" not in data or "test_labels" not in data:
            return None
        return data["test_labels"], data["test_probs"], str(task)


def _roc_inputs(labels: np.ndarray, probs: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Binary-class: P(class 1). Otherwise micro-averaged one-vs-rest (every class or label
    a binary problem, pooled)."""
    if task == "binary-class":
        return labels.reshape(-1), probs[:, -1]
    if task == MULTI_LABEL:
        return labels.ravel(), probs.ravel()
    onehot = np.eye(probs.shape[1], dtype=np.int64)[labels.reshape(-1).astype(np.int64)]
    return onehot.ravel(), probs.ravel()


def _with_predictions(groups: list[Group], unit: str) -> list[tuple[int, Group, tuple]]:
    """(colour index, group, its first run's test predictions) for each model of `unit`
    with saved predictions; the colour index counts every model, so colours agree between
    figures."""
    found = []
    for i, g in enumerate(g for g in groups if _unit(g) == unit):
        first = next((p for p in map(_test_predictions, g.runs) if p is not None), None)
        if first is not None:
            found.append((i, g, first))
    return found


def roc_curves(groups: list[Group], folder: Path) -> list[FigureFile]:
    """Per dataset: the test ROC curve of each model's first seed with saved predictions."""
    out = []
    for unit in _units(groups):
        drawn = _with_predictions(groups, unit)
        if not drawn:
            continue
        fig = Figure(figsize=(6.2, 5.4), layout="constrained")
        ax = fig.add_subplot()
        for n, (i, g, found) in enumerate(drawn):
            y, score = _roc_inputs(*found)
            RocCurveDisplay.from_predictions(
                y,
                score,
                ax=ax,
                name=g.label,
                curve_kwargs={"color": f"C{i % 10}"},
                plot_chance_level=n == 0,
            )
        task = drawn[0][2][2]
        how = "" if task == "binary-class" else " (micro-averaged one-vs-rest over classes)"
        ax.set_title(f"ROC on the {unit} test split{how}", fontsize=10)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=8, loc="lower right")
        caption = (
            f"ROC curves on the {unit} test split{how}, one per model (its first seed), from the "
            "saved test probabilities; the legend gives each curve's area. The tables give the "
            "official MedMNIST AUC."
        )
        out.append(_save(fig, folder / f"roc_{_slug(unit)}.png", caption))
    return out


def reliability_diagrams(groups: list[Group], folder: Path) -> list[FigureFile]:
    """Per dataset: top-label reliability of each model (first seed with predictions).

    Drawn from `metrics.reliability_bins`, the bins behind the reported ECE, rather than
    scikit-learn's CalibrationDisplay, which plots one class's probability (binary
    calibration), not the top-label confidence a multi-class ECE measures."""
    out = []
    for unit in _units(groups):
        drawn = _with_predictions(groups, unit)
        if not drawn:
            continue
        fig = Figure(figsize=(6.2, 5.4), layout="constrained")
        ax = fig.add_subplot()
        for i, g, found in drawn:
            bins = reliability_bins(*found)
            keep = [k for k, n in enumerate(bins["count"]) if n]
            ax.plot(
                [bins["confidence"][k] for k in keep],
                [bins["accuracy"][k] for k in keep],
                marker="o",
                color=f"C{i % 10}",
                label=g.label,
            )
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="top-label confidence (temperature-scaled)",
            ylabel="accuracy in the bin",
        )
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
        caption = (
            f"Reliability diagram on the {unit} test split: accuracy against confidence in 15 "
            "equal-width bins (empty bins left out), after temperature scaling; one line per "
            "model (its first seed)."
        )
        out.append(_save(fig, folder / f"reliability_{_slug(unit)}.png", caption))
    return out


def _label_outcomes(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per label of a multi-label task: the shares of TN, FP, FN, TP at the 0.5 threshold
    the official ACC uses, each row of counts divided by the test split's size."""
    cms = multilabel_confusion_matrix(labels.astype(np.int64), (probs >= 0.5).astype(np.int64))
    counts = cms.reshape(len(cms), 4)  # [[tn, fp], [fn, tp]] per label -> tn fp fn tp
    return counts / max(1, len(labels))


def label_confusion(groups: list[Group], folder: Path) -> list[FigureFile]:
    """Per multi-label dataset (e.g. ChestMNIST): each model's per-label outcomes."""
    out = []
    for unit in _units(groups):
        drawn = [d for d in _with_predictions(groups, unit) if d[2][2] == MULTI_LABEL]
        if not drawn:
            continue
        n_labels = drawn[0][2][1].shape[1]
        fig = Figure(figsize=(4.2 * len(drawn) + 2, 1.2 + 0.38 * n_labels), layout="constrained")
        axes = fig.subplots(1, len(drawn), squeeze=False)[0]
        for ax, (_, g, (labels, probs, _task)) in zip(axes, drawn, strict=True):
            shares = _label_outcomes(labels, probs)
            image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
            for (r, c), value in np.ndenumerate(shares):
                ax.text(
                    c,
                    r,
                    f"{value:.0%}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > 0.6 else "black",
                )
            ax.set_xticks(range(4), ["TN", "FP", "FN", "TP"])
            ax.set_yticks(range(n_labels), _class_names(g.runs[0], n_labels), fontsize=7)
            ax.set_title(f"{g.label}, seed {g.runs[0]['seed']}", fontsize=9)
            ax.set_xlabel("outcome at threshold 0.5")
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="share of test images")
        caption = (
            f"Per-label outcomes on the {unit} test split (multi-label: each label is its own "
            "yes/no decision at the 0.5 threshold of the official ACC), one panel per model "
            "(its first seed): shares of true negatives, false positives, false negatives and "
            "true positives; a label the model never predicts has an empty TP column."
        )
        out.append(_save(fig, folder / f"confusion_{_slug(unit)}.png", caption))
    return out


ALL_PLOTS = (
    accuracy_heatmap,
    accuracy_vs_params,
    accuracy_vs_flops,
    efficiency_bars,
    training_curves,
    confusion_matrices,
    label_confusion,
    roc_curves,
    reliability_diagrams,
)


def draw_all(groups: list[Group], folder: Path) -> list[FigureFile]:
    """Every figure for `groups` into `folder`; [] when there is nothing finished."""
    if not groups:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    figures: list[FigureFile] = []
    for plot in ALL_PLOTS:
        figures.extend(plot(groups, folder))
    return figures


def critical_difference(ranking: RankingTest | None, folder: Path) -> list[FigureFile]:
    """The critical-difference diagram of the ranking across datasets, when it was tested."""
    if ranking is None or not ranking.testable:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    path = critical_difference_diagram(ranking, folder / "critical_difference.png")
    caption = (
        f"Critical-difference diagram (Demsar 2006): each model's average rank of test accuracy "
        f"over {len(ranking.datasets)} datasets (1 = best); a bar joins models the Nemenyi "
        f"test does not separate at alpha {ranking.alpha:g} (critical difference "
        f"{ranking.critical_difference:.2f})."
    )
    return [FigureFile(path, caption)]
