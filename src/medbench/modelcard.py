"""A model card (Markdown) for a finished run, after Mitchell et al. 2019, "Model Cards for
Model Reporting": what the model is, what it was trained on (and under which license), how
well it does with uncertainty, how well calibrated it is, its known limits and intended use.

Everything comes from the run folder's `results.json` and `predictions.npz`; nothing is
re-trained or re-evaluated except the bootstrap intervals, which are computed from the
saved test logits.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from medbench import metrics
from medbench.errors import MedbenchError
from medbench.fsutil import atomic_write_text

CARD_NAME = "MODEL_CARD.md"
N_BOOT = 1000
CITATION = (
    'Jiancheng Yang, Rui Shi, Donglai Wei, et al. "MedMNIST v2 - A large-scale lightweight '
    'benchmark for 2D and 3D biomedical image classification." Scientific Data, 2023.'
)


def write_model_card(run_dir: str | os.PathLike) -> Path:
    """Write `MODEL_CARD.md` into a finished run folder (atomically) and return its path."""
    run_dir = Path(run_dir)
    results_path, predictions_path = run_dir / "results.json", run_dir / "predictions.npz"
    for path in (results_path, predictions_path):
        if not path.is_file():
            raise MedbenchError(
                f"{run_dir} has no {path.name}; a model card needs a finished run "
                f"(finish it with 'medbench train --resume')"
            )
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
        with np.load(predictions_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise MedbenchError(
            f"cannot read the results of {run_dir} (corrupt?): {str(exc)[:160]}"
        ) from None
    return atomic_write_text(run_dir / CARD_NAME, render_model_card(results, arrays))


def render_model_card(results: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    """The card's Markdown for a run's results and predictions arrays."""
    data = results["dataset"]
    config = results["config"]
    task, names = data["task"], list(data["label_names"])
    name, size = data["name"], int(data["size"])
    test_m, val_m = results["metrics"]["test"], results["metrics"]["val"]
    temperature = float(results["metrics"]["temperature"])
    test_probs = metrics.probabilities_from_logits(arrays["test_logits"], task)
    test_y = arrays["test_labels"]
    ci = {
        m: metrics.bootstrap_ci(test_y, test_probs, task, m, n_boot=N_BOOT, seed=0)
        for m in ("acc", "auc")
    }
    model = results["model"]
    lines = [
        f"# Model card: {model['name']} on {name} ({size}x{size})",
        "",
        f"Written by medbench from `results.json` and `predictions.npz` of run "
        f"`{Path(results.get('run_dir', '.')).name}`.",
        "",
        "## Model",
        "",
        f"- Architecture: `{model['name']}`, {model['params_m']:.2f} M parameters, "
        f"{model['gflops']:.3f} GFLOPs per image; options {json.dumps(model.get('options', {}))}",
        f"- Input: {size}x{size} pixels, {data['n_channels']} channel(s), uint8 pixels "
        "normalised as (x / 255 - 0.5) / 0.5",
        f"- Output: {task}, {len(names)} {'labels' if task == metrics.MULTI_LABEL else 'classes'}: "
        + ", ".join(f"{i}: {n}" for i, n in enumerate(names)),
        f"- Calibration temperature: {temperature:.3f} (fitted on the validation split)",
        "",
        "## Training data",
        "",
        f"- Dataset: {name} (MedMNIST v2), {size}x{size}; split sizes "
        + " / ".join(f"{s} {n}" for s, n in data["split_sizes"].items()),
        f"- License: {_license(data)}",
        f"- Data file: `{data['file']}`, MD5 `{data['md5']}`: "
        + (
            "the official file (MD5 matches)"
            if data.get("md5_matches")
            else f"NOT the official file (official MD5 `{data['official_md5']}`), "
            "so results are not comparable with published ones"
        ),
        f"- Cite: {CITATION}",
        "",
        "## Training",
        "",
        f"- Epochs: {results.get('epochs_completed')} of {results.get('epochs_planned')} planned; "
        + (
            "the final epoch's weights (no selection on validation)"
            if config.get("select_metric") == "last"
            else f"best (selected) epoch {results.get('best_epoch')} by validation "
            f"{config.get('select_metric', 'auc').upper()}"
        )
        + ("; stopped early" if results.get("stopped_early") else "")
        + ("; stopped at the time budget" if results.get("over_budget") else ""),
        f"- Training time: {results['timing']['train_seconds']:.0f} s on "
        f"{results.get('environment', {}).get('device', 'unknown device')}",
        "- Configuration:",
        "",
        "| option | value |",
        "|---|---|",
        *(
            f"| {k} | {json.dumps(v)} |"
            for k, v in config.items()
            if v is not None and k not in ("run_dir", "data_dir")
        ),
        "",
        "## Performance",
        "",
        f"Official MedMNIST metrics; 95% intervals are percentile bootstraps ({N_BOOT} "
        f"resamples of the {len(test_y)} test images).",
        "",
        "| split | ACC | AUC | balanced ACC | macro F1 |",
        "|---|---|---|---|---|",
        f"| test | {_num(test_m['acc'])} ({_interval(ci['acc'])}) | "
        f"{_num(test_m['auc'])} ({_interval(ci['auc'])}) | {_num(test_m.get('balanced_acc'))} | "
        f"{_num(test_m.get('macro_f1'))} |",
        f"| val | {_num(val_m['acc'])} | {_num(val_m['auc'])} | "
        f"{_num(val_m.get('balanced_acc'))} | {_num(val_m.get('macro_f1'))} |",
        "",
        "## Calibration",
        "",
        "Expected calibration error (15 equal-width bins, top label), before and after "
        f"temperature scaling (T = {temperature:.3f}):",
        "",
        "| split | ECE | ECE after scaling |",
        "|---|---|---|",
        f"| test | {_num(test_m['ece'])} | {_num(results['metrics'].get('test_ece_calibrated'))} |",
        f"| val | {_num(val_m['ece'])} | {_num(results['metrics'].get('val_ece_calibrated'))} |",
        "",
        "## Collapse guard",
        "",
    ]
    flags = results.get("flags") or []
    lines += [f"- FLAG: {f}" for f in flags] or ["- No flags: predictions are not collapsed."]
    lines += ["", "## Known limits", ""]
    lines += [f"- {item}" for item in _limits(results, arrays, names, task, flags)]
    lines += [
        "",
        "## Intended use",
        "",
        "- For research and education: benchmarking methods on MedMNIST and teaching.",
        "- Not for diagnosis, screening or any clinical decision. The model has not been "
        "validated on patients, other hospitals or other devices, and its probabilities are "
        "not clinical risk estimates.",
        "",
    ]
    return "\n".join(lines)


def _limits(
    results: dict[str, Any],
    arrays: dict[str, np.ndarray],
    names: list[str],
    task: str,
    flags: list[str],
) -> list[str]:
    data = results["dataset"]
    size = int(data["size"])
    items = []
    if size == 28:
        items.append(
            "Resolution: 28x28 pixels. Fine structure visible at full resolution is lost; "
            "the model has never seen larger images (medbench downsizes any input to 28x28)."
        )
    if data["name"] == "dermamnist":
        items.append(
            "DermaMNIST comes from HAM10000, which has several images of the same lesion; the "
            "MedMNIST splits are by image, not by lesion, so near-duplicates of a lesion can "
            "sit in both training and test and test scores are likely optimistic."
        )
    counts = _class_counts(arrays, task, len(names))
    if counts is not None and counts.min() >= 0:
        order = np.argsort(-counts)
        total = (
            counts.sum()
            if task != metrics.MULTI_LABEL
            else len(arrays["test_labels"]) + len(arrays["val_labels"])
        )
        shares = ", ".join(f"{names[i]} {counts[i] / total:.1%}" for i in order)
        lo = counts[order[-1]]
        ratio = f"{counts[order[0]] / lo:.1f}:1" if lo else "unbounded (a class has no images)"
        kind = "positives per label" if task == metrics.MULTI_LABEL else "class shares"
        items.append(
            f"Class imbalance ({kind} in the val + test labels): {shares}; most to least "
            f"common {ratio}. Accuracy favours common classes; read balanced ACC and the "
            "per-class results too."
        )
    if not data.get("md5_matches"):
        items.append(
            "Trained and tested on a data file that is not the official one: scores are not "
            "comparable with published MedMNIST results."
        )
    if flags:
        items.append("The collapse guard raised flags (above): do not rely on this model.")
    return items


def _class_counts(arrays: dict[str, np.ndarray], task: str, n: int) -> np.ndarray | None:
    labels = [arrays[k] for k in ("val_labels", "test_labels") if k in arrays]
    if not labels:
        return None
    y = np.concatenate(labels)
    if task == metrics.MULTI_LABEL:
        return y.sum(axis=0).astype(np.int64)
    return np.bincount(y.reshape(-1).astype(np.int64), minlength=n)


def _license(data: dict[str, Any]) -> str:
    from medbench.data import dataset_info

    license_ = data.get("license") or dataset_info(data["name"]).license
    if "NC" in license_:
        return f"{license_} (non-commercial use only; attribution required)"
    return f"{license_} (attribution required)"


def _num(value: Any) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    return "undefined" if math.isnan(value) else f"{value:.3f}"


def _interval(ci: tuple[float, float]) -> str:
    low, high = ci
    if math.isnan(low):
        return "CI undefined"
    return f"95% CI {low:.3f}-{high:.3f}"
