"""The files and figures of an explanation (`medbench.analysis.explain` computes the numbers):
the per-case and faithfulness CSV tables, one gallery figure per class, the report's markdown
section and a self-standing HTML page, and `explain_run`, which computes and writes them all.

    >>> from medbench.analysis.explain_files import explain_run, explain_section
    >>> result = explain_run("runs/breastmnist-28/resnet18/seed0-...", "explain-out")
    >>> explain_section(result, "explain-out/")   # the report section as markdown
"""

from __future__ import annotations

import csv
import html
import io
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medbench.analysis.explain import (
    DEFAULT_PER_CLASS,
    DEFAULT_STEPS,
    METHODS,
    RANDOM,
    ExplainedRow,
    ExplainResult,
    compute_explanations,
)
from medbench.training.inference import is_multilabel
from medbench.utils.fsutil import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)

METHOD_TITLES = {"gradcam": "Grad-CAM", "occlusion": "Occlusion", "random": "random"}


def explain_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    methods: Sequence[str] = METHODS,
    per_class: int = DEFAULT_PER_CLASS,
    steps: int = DEFAULT_STEPS,
    layer_name: str | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = False,
) -> ExplainResult:
    """Explain a finished run's test predictions and write the gallery and report to `out_dir`.

    Up to `per_class` correct and `per_class` wrong test images per class (see
    `select_cases`) get a map per method (Grad-CAM on `layer_name` when given, else on
    `choose_target_layer`'s choice); each (image, class) pair gets deletion and
    insertion AUCs for every method and for a random map. The data comes from `data_dir`,
    else the folder the run recorded, else the default data folder. Written: report.md,
    report.html, one gallery-<class>.png per class, explain.json, cases.csv,
    faithfulness.csv and explanations.npz (the maps)."""
    result, images = compute_explanations(
        run_dir,
        out_dir,
        methods=methods,
        per_class=per_class,
        steps=steps,
        layer_name=layer_name,
        data_dir=data_dir,
        device=device,
        seed=seed,
        progress=progress,
    )
    write_explanations(result, images, out_dir)
    return result


# --------------------------------------------------------------------------- files


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "class"


def gallery_name(result: ExplainResult, c: int) -> str:
    return f"gallery-{c}-{_slug(result.label_names[c])}.png"


def write_explanations(
    result: ExplainResult, images: np.ndarray, out_dir: str | Path
) -> dict[str, str]:
    """Write the gallery PNGs, maps, tables and the report into `out_dir` (each file
    atomically); `images` are the rows' uint8 (N, H, W, C) images. Returns name -> path."""
    out = Path(out_dir)
    files: dict[str, str] = {}
    for c in range(len(result.label_names)):
        fig = gallery_figure(result, images, c)
        if fig is not None:
            name = gallery_name(result, c)
            files[name] = str(_write_png(fig, out / name))
    result.files = files
    with atomic_path(out / "explanations.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            index=np.array([r.index for r in result.rows]),
            target=np.array([r.target for r in result.rows]),
            # numpy's stub types allow_pickle: bool beside **kwds, and mypy matches this
            # dict of arrays against it too; its keys all end in "_maps".
            **{f"{m}_maps": v for m, v in result.maps.items()},  # type: ignore[arg-type]
        )
    files["explanations.npz"] = str(out / "explanations.npz")
    files["cases.csv"] = str(atomic_write_text(out / "cases.csv", cases_csv(result)))
    files["faithfulness.csv"] = str(
        atomic_write_text(out / "faithfulness.csv", faithfulness_csv(result))
    )
    files["report.md"] = str(
        atomic_write_text(out / "report.md", f"# Explanations\n\n{explain_section(result)}")
    )
    files["report.html"] = str(atomic_write_text(out / "report.html", report_html(result)))
    files["explain.json"] = str(out / "explain.json")
    atomic_write_json(out / "explain.json", result.to_json())
    return files


def _write_png(fig: Figure, path: Path, dpi: int = 110) -> Path:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def cases_csv(result: ExplainResult) -> str:
    """One line per explained (image, class): its AUCs per method and for the random map."""
    methods = [*result.methods, RANDOM]
    header = ["index", "target", "target_name", "role", "correct", "probability"]
    header += [f"{k}_{m}" for m in methods for k in ("deletion", "insertion")]
    rows = [
        [r.index, r.target, result.label_names[r.target], r.role, r.correct, f"{r.probability:.4f}"]
        + [f"{getattr(r, k)[m]:.4f}" for m in methods for k in ("deletion", "insertion")]
        for r in result.rows
    ]
    return _csv_text(header, rows)


def faithfulness_csv(result: ExplainResult) -> str:
    header = [
        "dataset",
        "model",
        "method",
        "n",
        "deletion_auc",
        "deletion_sd",
        "insertion_auc",
        "insertion_sd",
        "deletion_beats_random",
        "insertion_beats_random",
    ]
    rows = [
        [
            result.dataset,
            result.model,
            s.method,
            s.n,
            _f(s.deletion_mean),
            _f(s.deletion_sd),
            _f(s.insertion_mean),
            _f(s.insertion_sd),
            _f(s.deletion_beats_random),
            _f(s.insertion_beats_random),
        ]
        for s in result.summary
    ]
    return _csv_text(header, rows)


def _f(value: float | None, digits: int = 3) -> str:
    return "" if value is None or value != value else f"{value:.{digits}f}"


# --------------------------------------------------------------------------- gallery


def _gallery_cases(result: ExplainResult, c: int) -> list[tuple[int, int | None]]:
    """(row of the map shown first, row of the true-class map of a wrong case or None) for
    the images of class `c`, correct ones first."""
    if is_multilabel(result.task):
        return [(k, None) for k, r in enumerate(result.rows) if r.target == c]
    cases: list[tuple[int, int | None]] = []
    for k, r in enumerate(result.rows):
        if r.role == "predicted" and r.true == [c]:
            cases.append((k, None))
        elif (
            r.role == "true"
            and r.target == c
            and cases
            and result.rows[cases[-1][0]].index == r.index
        ):
            cases[-1] = (cases[-1][0], k)
    return cases


def _display(saliency: np.ndarray) -> np.ndarray:
    """A map for display: its positive part over its maximum (0 where there is none)."""
    m = np.clip(np.nan_to_num(saliency), 0, None)
    top = float(m.max())
    return m / top if top > 0 else m


def _show_image(ax: Any, image: np.ndarray) -> None:
    # Nearest-neighbour display: every image pixel stays a visible square.
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(
    ax: Any, image: np.ndarray, saliency: np.ndarray, row: ExplainedRow, method: str
) -> None:
    _show_image(ax, image)
    ax.imshow(_display(saliency), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel(f"del {row.deletion[method]:.2f} · ins {row.insertion[method]:.2f}", fontsize=7)


def _case_label(result: ExplainResult, row: ExplainedRow) -> str:
    names = result.label_names
    true = ", ".join(names[t] for t in row.true) or "none"
    if is_multilabel(result.task):
        verdict = "found" if row.correct else "missed"
        labels = textwrap.fill(textwrap.shorten(f"labels: {true}", 60), 30)
        return f"test #{row.index} · {verdict} (p={row.probability:.2f})\n{labels}"
    mark = "correct" if row.correct else "WRONG"
    return f"test #{row.index} · {mark}\ntrue: {true}\npred: {names[row.target]} ({row.probability:.2f})"


def gallery_figure(result: ExplainResult, images: np.ndarray, c: int) -> Figure | None:
    """The gallery of class `c`: one line per explained test image (correct first), the image
    and each method's map over it for the predicted class (and, for a wrong case, for the
    true class), at the image's own resolution; None when no image of `c` was explained."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cases = _gallery_cases(result, c)
    if not cases:
        return None
    methods = result.methods
    show_true = any(t is not None for _, t in cases)
    ncols = 1 + len(methods) * (2 if show_true else 1)
    width = max(1.75 * ncols + 1.6, 5.5)  # room for the title and the colour bar
    fig = Figure(figsize=(width, 1.75 * len(cases) + 0.9), layout="constrained")
    axes = fig.subplots(len(cases), ncols, squeeze=False)
    target = "label" if is_multilabel(result.task) else "predicted"
    axes[0, 0].set_title("test image", fontsize=9)
    for j, m in enumerate(methods):
        axes[0, 1 + j].set_title(f"{METHOD_TITLES[m]} · {target}", fontsize=9)
        if show_true:
            axes[0, 1 + len(methods) + j].set_title(f"{METHOD_TITLES[m]} · true", fontsize=9)
    for r, (k, t) in enumerate(cases):
        _show_image(axes[r, 0], images[k])
        axes[r, 0].set_ylabel(_case_label(result, result.rows[k]), fontsize=7)
        for j, m in enumerate(methods):
            _overlay(axes[r, 1 + j], images[k], result.maps[m][k], result.rows[k], m)
            if not show_true:
                continue
            ax = axes[r, 1 + len(methods) + j]
            if t is None:
                ax.axis("off")
                ax.text(
                    0.5,
                    0.5,
                    "correct:\ntrue = predicted",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="0.4",
                )
            else:
                _overlay(ax, images[t], result.maps[m][t], result.rows[t], m)
    bar = fig.colorbar(
        ScalarMappable(Normalize(0, 1), cmap="jet"),
        ax=axes,
        shrink=min(0.9, 2.5 / len(cases) + 0.3),
    )
    bar.set_label("saliency (each map over its maximum)", fontsize=8)
    correct = sum(result.rows[k].correct for k, _ in cases)
    words = ("found", "missed") if is_multilabel(result.task) else ("correct", "wrong")
    fig.suptitle(
        f"{result.model} on {result.dataset} test · {result.label_names[c]}\n"
        f"{correct} {words[0]}, {len(cases) - correct} {words[1]} · "
        "del / ins: deletion / insertion AUC",
        fontsize=9,
    )
    return fig


# --------------------------------------------------------------------------- report


def _method_line(result: ExplainResult) -> str:
    parts = []
    layer = result.target_layer
    if "gradcam" in result.methods and layer:
        h, w = layer["grid"]
        parts.append(f"Grad-CAM on `{layer['name']}` (a {h}x{w} {layer['kind']})")
    if "occlusion" in result.methods:
        s = result.settings
        parts.append(
            f"occlusion with a {s['occlusion_window']} px square set to the image's mean "
            f"(stride {s['occlusion_stride']} px)"
        )
    return " and ".join(parts)


def summary_table(result: ExplainResult) -> list[list[str]]:
    """The faithfulness table's header and rows (random last), as strings."""
    table = [
        [
            "Method",
            "Pairs",
            "Deletion AUC (lower is better)",
            "Insertion AUC (higher is better)",
            "Deletion beats random",
            "Insertion beats random",
        ]
    ]
    for s in result.summary:
        wins = [
            _f(v * 100, 0) + "%" if v is not None else "-"
            for v in (s.deletion_beats_random, s.insertion_beats_random)
        ]
        table.append(
            [
                METHOD_TITLES[s.method],
                str(s.n),
                f"{_f(s.deletion_mean)} ± {_f(s.deletion_sd)}",
                f"{_f(s.insertion_mean)} ± {_f(s.insertion_sd)}",
                *wins,
            ]
        )
    return table


def explain_section(result: ExplainResult, image_prefix: str = "") -> str:
    """The report's markdown section for `result`: what was explained and how, the
    faithfulness table and the galleries (image paths prefixed by `image_prefix`, e.g. the
    folder of the explain output relative to the page that includes the section)."""
    n_images = len({r.index for r in result.rows})
    lines = [
        f"## Explanations: {result.model} on {result.dataset}",
        "",
        f"{n_images} test images (up to {result.settings['per_class']} correct and "
        f"{result.settings['per_class']} wrong per class, in test order), explained with "
        f"{_method_line(result)}. Maps are computed at the model's input size "
        f"({result.image_size} px) and drawn over the image pixel for pixel.",
        "",
        f"Faithfulness (Petsiuk et al. 2018): the class probability integrated while the most "
        f"salient pixels are deleted (set to the image's mean) or inserted (into a blurred "
        f"copy), in {result.settings['steps']} steps, for the class the model predicted"
        f"{' (each positive label)' if is_multilabel(result.task) else ''}. "
        "Random: a uniformly random map, the chance level; mean ± sd over the pairs.",
        "",
    ]
    table = summary_table(result)
    lines += ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    if result.target_layer.get("grid") == [1, 1]:
        lines += [
            "",
            "The Grad-CAM layer's grid is 1x1: its map is one value per image and "
            "shows no location; read the occlusion maps.",
        ]
    for c, name in enumerate(result.label_names):
        file = gallery_name(result, c)
        if file in result.files:
            lines += [
                "",
                f"### {name}",
                "",
                f"![{result.model} on {result.dataset}: {name}]({image_prefix}{file})",
            ]
    return "\n".join(lines) + "\n"


def report_html(result: ExplainResult) -> str:
    """A self-standing HTML page of the section: the table and the gallery images."""
    e = html.escape
    table = summary_table(result)
    head = "".join(f"<th>{e(h)}</th>" for h in table[0])
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table[1:])
    images = "".join(
        f'<h3>{e(name)}</h3><img src="{e(gallery_name(result, c))}" alt="{e(name)}">'
        for c, name in enumerate(result.label_names)
        if gallery_name(result, c) in result.files
    )
    title = f"Explanations: {result.model} on {result.dataset}"
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title>'
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>{e(title)}</h1><p>{e(_method_line(result).replace('`', ''))}.</p>"
        f"<table><tr>{head}</tr>{body}</table>{images}</body></html>\n"
    )
