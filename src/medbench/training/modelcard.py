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

from medbench.data import dataset_info
from medbench.errors import MedbenchError
from medbench.runs.results import RunResults, read_predictions, read_results
from medbench.scoring import metrics
from medbench.utils.fsutil import atomic_write_text

CARD_NAME = "MODEL_CARD.md"
N_BOOT = 1000
CITATION = (
    'Jiancheng Yang, Rui Shi, Donglai Wei, et al. "MedMNIST v2 - A large-scale lightweight '
    'benchmark for 2D and 3D biomedical image classification." Scientific Data, 2023.'
)

INTENDED_USE = [
    "- For research and education: benchmarking methods on MedMNIST and teaching.",
    "- Not for diagnosis, screening or any clinical decision. The model has not been "
    "validated on patients, other hospitals or other devices, and its probabilities are "
    "not clinical risk estimates.",
]


def write_model_card(run_dir: str | os.PathLike) -> Path:
    """Write `MODEL_CARD.md` into a finished run folder (atomically) and return its path."""
    run_dir = Path(run_dir)
    predictions_path = run_dir / "predictions.npz"
    for path in (run_dir / "results.json", predictions_path):
        if not path.is_file():
            raise MedbenchError(
                f"{run_dir} has no {path.name}; a model card needs a finished run "
                f"(finish it with 'medbench train --resume')"
            )
    results = read_results(run_dir)
    arrays = read_predictions(run_dir)
    try:
        card = render_model_card(results, arrays)
    except KeyError as exc:  # a results.json or predictions.npz of another shape
        raise MedbenchError(
            f"{run_dir} lacks {exc} in its results.json or predictions.npz; it was not "
            "written by a finished medbench run of this version: re-run 'medbench evaluate'"
        ) from None
    return atomic_write_text(run_dir / CARD_NAME, card)


def render_model_card(results: RunResults, arrays: dict[str, np.ndarray]) -> str:
    """The card's Markdown for a run's results and predictions arrays."""
    lines = [
        *_title(results),
        *_section("Model", _model(results)),
        *_section("Training data", _training_data(results)),
        *_section("Training", _training(results)),
        *_section("Performance", _performance(results, arrays)),
        *_section("Calibration", _calibration(results)),
        *_section("Collapse guard", _collapse_guard(results)),
        *_section("Known limits", [f"- {item}" for item in _limits(results, arrays)]),
        *_section("Intended use", INTENDED_USE),
    ]
    return "\n".join(lines)


def _section(title: str, body: list[str]) -> list[str]:
    return [f"## {title}", "", *body, ""]


def _size(results: RunResults) -> int:
    return int(results.dataset["size"])


def _shape(results: RunResults) -> str:
    """ "28x28" for images, "28x28x28" for the volumes of a 3D set."""
    size = _size(results)
    return "x".join([str(size)] * (3 if _volumetric(results) else 2))


def _volumetric(results: RunResults) -> bool:
    try:
        return dataset_info(results.dataset["name"]).volumetric
    except MedbenchError:  # a dataset medbench does not know: its card is still written
        return False


def _temperature(results: RunResults) -> float:
    return float(results.metrics["temperature"])


def _title(results: RunResults) -> list[str]:
    return [
        f"# Model card: {results.model.name} on {results.dataset['name']} ({_shape(results)})",
        "",
        f"Written by medbench from `results.json` and `predictions.npz` of run "
        f"`{Path(results.run_dir or '.').name}`.",
        "",
    ]


def _model(results: RunResults) -> list[str]:
    data, model = results.dataset, results.model
    task, names = data["task"], list(data["label_names"])
    kind = "labels" if task == metrics.MULTI_LABEL else "classes"
    sample, unit = ("volume", "voxels") if _volumetric(results) else ("image", "pixels")
    return [
        f"- Architecture: `{model.name}`, {model.params_m:.2f} M parameters, "
        f"{model.gflops:.3f} GFLOPs per {sample}; options {json.dumps(model.options)}",
        f"- Input: {_shape(results)} {unit}, {data['n_channels']} channel(s), uint8 {unit} "
        "normalised as (x / 255 - 0.5) / 0.5",
        f"- Output: {task}, {len(names)} {kind}: "
        + ", ".join(f"{i}: {n}" for i, n in enumerate(names)),
        f"- Calibration temperature: {_temperature(results):.3f} (fitted on the validation split)",
    ]


def _training_data(results: RunResults) -> list[str]:
    data = results.dataset
    if data.get("md5_matches"):
        official = "the official file (MD5 matches)"
    else:
        official = (
            f"NOT the official file (official MD5 `{data['official_md5']}`), "
            "so results are not comparable with published ones"
        )
    return [
        f"- Dataset: {data['name']} (MedMNIST v2), {_shape(results)}; split sizes "
        + " / ".join(f"{s} {n}" for s, n in data["split_sizes"].items()),
        f"- License: {_license(data)}",
        f"- Data file: `{data['file']}`, MD5 `{data['md5']}`: {official}",
        f"- Cite: {CITATION}",
    ]


def _training(results: RunResults) -> list[str]:
    config = results.config
    device = results.environment.get("device", "unknown device")
    return [
        f"- Trained: {results.steps} steps = {results.epochs_trained:.2f} epochs in "
        f"{results.rounds_completed} of {results.rounds_planned} planned rounds; "
        + _selection(results),
        f"- Training time: {results.timing.train_seconds:.0f} s on {device}",
        "- Configuration:",
        "",
        "| option | value |",
        "|---|---|",
        *(
            f"| {k} | {json.dumps(v)} |"
            for k, v in config.items()
            if v is not None and k not in ("run_dir", "data_dir")
        ),
    ]


def _selection(results: RunResults) -> str:
    """Which weights the run kept, and why it stopped when it stopped early."""
    metric = results.config.get("select_metric", "auc")
    if metric == "last":
        text = "the final epoch's weights (no selection on validation)"
    elif metric == "loss":
        text = f"best (selected) epoch {results.best_round} by lowest validation loss"
    else:
        text = f"best (selected) epoch {results.best_round} by validation {metric.upper()}"
    if results.stopped_early:
        text += "; stopped early"
    if results.over_budget:
        text += "; stopped at the time budget"
    return text


def _performance(results: RunResults, arrays: dict[str, np.ndarray]) -> list[str]:
    """Test and val metrics; test ACC and AUC with bootstrap intervals from the saved logits."""
    task = results.dataset["task"]
    test_y = arrays["test_labels"]
    test_probs = metrics.probabilities_from_logits(arrays["test_logits"], task)
    ci = {
        m: metrics.bootstrap_ci(test_y, test_probs, task, m, n_boot=N_BOOT, seed=0)
        for m in ("acc", "auc")
    }
    test, val = results.test, results.val
    return [
        f"Official MedMNIST metrics; 95% intervals are percentile bootstraps ({N_BOOT} "
        f"resamples of the {len(test_y)} test images).",
        "",
        "| split | ACC | AUC | balanced ACC | macro F1 |",
        "|---|---|---|---|---|",
        f"| test | {_num(test['acc'])} ({_interval(ci['acc'])}) | "
        f"{_num(test['auc'])} ({_interval(ci['auc'])}) | {_num(test.get('balanced_acc'))} | "
        f"{_num(test.get('macro_f1'))} |",
        f"| val | {_num(val['acc'])} | {_num(val['auc'])} | "
        f"{_num(val.get('balanced_acc'))} | {_num(val.get('macro_f1'))} |",
    ]


def _calibration(results: RunResults) -> list[str]:
    m = results.metrics
    return [
        "Expected calibration error (15 equal-width bins, top label), before and after "
        f"temperature scaling (T = {_temperature(results):.3f}):",
        "",
        "| split | ECE | ECE after scaling |",
        "|---|---|---|",
        f"| test | {_num(results.test['ece'])} | {_num(m.get('test_ece_calibrated'))} |",
        f"| val | {_num(results.val['ece'])} | {_num(m.get('val_ece_calibrated'))} |",
    ]


def _collapse_guard(results: RunResults) -> list[str]:
    """Collapse flags (do not use the model), then missed classes (a per-class recall
    problem of a model that did not collapse), each with its own advice."""
    lines = [f"- FLAG: {f}" for f in results.flags] or [
        "- No flags: predictions are not collapsed."
    ]
    if results.flags:
        return lines + [f"- What to do: {metrics.COLLAPSE_ADVICE}."]
    missed = metrics.missed_classes(results.test) if results.test.get("true_counts") else []
    lines += [f"- Missed class (test): {m.describe('test')}" for m in missed]
    if missed:
        lines.append(f"- What to do: {metrics.MISSED_CLASS_ADVICE}.")
    return lines


RESOLUTION_LIMIT = (
    "Resolution: 28x28 pixels. Fine structure visible at full resolution is lost; "
    "the model has never seen larger images (medbench downsizes any input to 28x28)."
)
LESION_DUPLICATES = (
    "DermaMNIST comes from HAM10000, which has several images of the same lesion; the "
    "MedMNIST splits are by image, not by lesion, so near-duplicates of a lesion can "
    "sit in both training and test and test scores are likely optimistic."
)
UNOFFICIAL_DATA = (
    "Trained and tested on a data file that is not the official one: scores are not "
    "comparable with published MedMNIST results."
)
COLLAPSE_LIMIT = "The collapse guard raised flags (above): do not rely on this model."


def _limits(results: RunResults, arrays: dict[str, np.ndarray]) -> list[str]:
    """What the card's reader must know before trusting the numbers, from the run's data."""
    data = results.dataset
    items = [
        RESOLUTION_LIMIT if _size(results) == 28 and not _volumetric(results) else None,
        LESION_DUPLICATES if data["name"] == "dermamnist" else None,
        _class_imbalance(data, arrays),
        UNOFFICIAL_DATA if not data.get("md5_matches") else None,
        COLLAPSE_LIMIT if results.flags else None,
    ]
    return [item for item in items if item]


def _class_imbalance(data: dict[str, Any], arrays: dict[str, np.ndarray]) -> str | None:
    """Class shares (or positives per label) in the val + test labels, most common first."""
    task, names = data["task"], list(data["label_names"])
    counts = _class_counts(arrays, task, len(names))
    if counts is None or counts.min() < 0:
        return None
    order = np.argsort(-counts)
    if task == metrics.MULTI_LABEL:
        total = len(arrays["test_labels"]) + len(arrays["val_labels"])
    else:
        total = counts.sum()
    shares = ", ".join(f"{names[i]} {counts[i] / total:.1%}" for i in order)
    lo = counts[order[-1]]
    ratio = f"{counts[order[0]] / lo:.1f}:1" if lo else "unbounded (a class has no images)"
    kind = "positives per label" if task == metrics.MULTI_LABEL else "class shares"
    return (
        f"Class imbalance ({kind} in the val + test labels): {shares}; most to least "
        f"common {ratio}. Accuracy favours common classes; read balanced ACC and the "
        "per-class results too."
    )


def _class_counts(arrays: dict[str, np.ndarray], task: str, n: int) -> np.ndarray | None:
    labels = [arrays[k] for k in ("val_labels", "test_labels") if k in arrays]
    if not labels:
        return None
    y = np.concatenate(labels)
    if task == metrics.MULTI_LABEL:
        return y.sum(axis=0).astype(np.int64)
    return np.bincount(y.reshape(-1).astype(np.int64), minlength=n)


def _license(data: dict[str, Any]) -> str:
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
