"""Evaluation of scores: numpy in, plain JSON-able Python out.

Tasks are MedMNIST's: "multi-class", "binary-class", "multi-label, binary-class",
"ordinal-regression". `y_score` is what MedMNIST's evaluator takes: probabilities of shape
(N, C) (softmax; binary-class has C = 2) or (N, L) sigmoids for multi-label. `y_true` is as
stored in the npz: (N, 1) or (N,) class indices, or (N, L) 0/1 for multi-label.

`official_acc` / `official_auc` reproduce `medmnist.evaluator.getACC` / `getAUC`, so our
numbers are comparable with published ones. AUC is undefined when a class (or, for
multi-label, a label) has only positives or only negatives in `y_true`; it is then NaN
(the only NaN these functions return) instead of a crash.

Calibration follows Guo et al. 2017, "On Calibration of Modern Neural Networks":
top-label expected calibration error with equal-width bins, and temperature scaling.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit, log_softmax, softmax
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
)

from medbench.errors import MedbenchError

TASKS = ("multi-class", "binary-class", "multi-label, binary-class", "ordinal-regression")
MULTI_LABEL = "multi-label, binary-class"
TEMPERATURE_RANGE = (0.05, 20.0)
# Predictions on at most this fraction of the classes a split holds are a collapse...
COLLAPSE_CLASS_FRACTION = 1 / 3
# ...where a class counts as predicted when it takes at least this share of the predictions.
PREDICTED_CLASS_MIN_SHARE = 0.01
# A class with at least this many true images and a recall at most POOR_RECALL is a missed
# class: a per-class recall finding, not a collapse (fewer images is noise on tiny splits).
MISSING_CLASS_MIN_COUNT = 5
POOR_RECALL = 0.1


# --------------------------------------------------------------------------- inputs


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise MedbenchError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def _as_score_matrix(y_score: Any, task: str, what: str = "y_score") -> np.ndarray:
    """Return scores as a float (N, C) matrix; a 1-D binary score is P(class 1)."""
    _check_task(task)
    scores = np.asarray(y_score, dtype=np.float64)
    if task == "binary-class" and scores.ndim == 1:
        scores = np.stack([1.0 - scores, scores], axis=1)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise MedbenchError(
            f"{what} must be a non-empty (N, C) array for task {task!r}, got shape {scores.shape}"
        )
    if task == "binary-class" and scores.shape[1] != 2:
        raise MedbenchError(f"binary-class {what} must have 2 columns, got {scores.shape[1]}")
    if not np.all(np.isfinite(scores)):
        raise MedbenchError(f"{what} contains NaN or infinite values")
    return scores


def _as_inputs(y_true: Any, y_score: Any, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (labels, scores): labels (N,) ints, or (N, L) 0/1 for multi-label."""
    scores = _as_score_matrix(y_score, task)
    labels = np.asarray(y_true)
    n, n_cols = scores.shape
    if task == MULTI_LABEL:
        if labels.shape != scores.shape:
            raise MedbenchError(
                f"multi-label y_true must have the shape of y_score {scores.shape}, got {labels.shape}"
            )
        if not np.isin(labels, (0, 1)).all():
            raise MedbenchError("multi-label y_true must contain only 0 and 1")
        return labels.astype(np.int64), scores
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (n,):
        raise MedbenchError(f"y_true must have shape ({n},) or ({n}, 1), got {labels.shape}")
    if not np.all(np.equal(np.mod(labels, 1), 0)):
        raise MedbenchError("y_true must contain integer class indices")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= n_cols:
        raise MedbenchError(
            f"y_true class indices must lie in [0, {n_cols - 1}] for {n_cols} score columns, "
            f"got [{labels.min()}, {labels.max()}]"
        )
    return labels, scores


def _predict(scores: np.ndarray, task: str) -> np.ndarray:
    if task == MULTI_LABEL:
        return (scores > 0.5).astype(np.int64)
    if task == "binary-class":
        # MedMNIST thresholds the last column rather than taking the argmax.
        return (scores[:, -1] > 0.5).astype(np.int64)
    return np.asarray(np.argmax(scores, axis=1))


# --------------------------------------------------------------------------- official


def _official_acc(labels: np.ndarray, scores: np.ndarray, task: str) -> float:
    pred = _predict(scores, task)
    if task == MULTI_LABEL:
        return float(
            np.mean([accuracy_score(labels[:, j], pred[:, j]) for j in range(labels.shape[1])])
        )
    return float(accuracy_score(labels, pred))


def _binary_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic: equal to sklearn's roc_auc_score, and fast
    enough for bootstrapping."""
    positive = truth == 1
    n_pos = int(positive.sum())
    n_neg = len(truth) - n_pos
    rank_sum = rankdata(score)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _auc_columns(
    labels: np.ndarray, scores: np.ndarray, task: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (0/1 truth, score) columns whose binary AUCs the official AUC averages."""
    if task == MULTI_LABEL:
        return [(labels[:, j], scores[:, j]) for j in range(scores.shape[1])]
    if task == "binary-class":
        return [(labels, scores[:, -1])]
    # one-vs-rest per class, averaged over the score columns (medmnist's rule)
    return [((labels == i).astype(np.int64), scores[:, i]) for i in range(scores.shape[1])]


def _resampled_auc(
    labels: np.ndarray, scores: np.ndarray, task: str, idx: np.ndarray
) -> np.ndarray:
    """The official AUC on each resample (row) of `idx` (rows, N) at once: the
    Mann-Whitney statistic with mid-ranks row by row, equal to `_official_auc` of each
    resample and NaN where a resample leaves some column with one class."""
    parts = []
    for truth, score in _auc_columns(labels, scores, task):
        t = truth[idx] == 1
        n_pos = t.sum(axis=1)
        n_neg = t.shape[1] - n_pos
        rank_sum = (rankdata(score[idx], axis=1) * t).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        parts.append(np.where((n_pos > 0) & (n_neg > 0), auc, np.nan))
    return np.asarray(np.mean(parts, axis=0))


def _official_auc(labels: np.ndarray, scores: np.ndarray, task: str) -> float:
    columns = _auc_columns(labels, scores, task)
    if any(np.unique(truth).size < 2 for truth, _ in columns):
        return math.nan
    return float(np.mean([_binary_auc(truth, score) for truth, score in columns]))


def official_acc(y_true: Any, y_score: Any, task: str) -> float:
    """MedMNIST's official accuracy (`medmnist.evaluator.getACC`, threshold 0.5)."""
    labels, scores = _as_inputs(y_true, y_score, task)
    return _official_acc(labels, scores, task)


def official_auc(y_true: Any, y_score: Any, task: str) -> float:
    """MedMNIST's official AUC (`medmnist.evaluator.getAUC`).

    NaN when AUC is undefined: some class (multi-label: some label) has only positives or
    only negatives in `y_true`.
    """
    labels, scores = _as_inputs(y_true, y_score, task)
    return _official_auc(labels, scores, task)


# --------------------------------------------------------------------------- scores


def probabilities_from_logits(logits: Any, task: str, temperature: float = 1.0) -> np.ndarray:
    """Softmax of `logits / temperature` over classes, or a sigmoid per label for multi-label."""
    if not temperature > 0:
        raise MedbenchError(f"temperature must be positive, got {temperature}")
    z = _as_score_matrix(logits, task, what="logits") / temperature
    probs: np.ndarray = expit(z) if task == MULTI_LABEL else softmax(z, axis=1)
    return probs


def predictions(y_score: Any, task: str) -> np.ndarray:
    """Predicted classes (N,) by argmax, or (N, L) 0/1 by threshold 0.5 for multi-label.

    Binary-class predicts class 1 when the last column exceeds 0.5, as MedMNIST does.
    """
    return _predict(_as_score_matrix(y_score, task), task)


# --------------------------------------------------------------------------- calibration


def _confidence_and_correct(
    labels: np.ndarray, scores: np.ndarray, task: str
) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and correctness; for multi-label, one pair per (sample, label)."""
    pred = _predict(scores, task)
    if task == MULTI_LABEL:
        p = scores.ravel()
        return np.maximum(p, 1.0 - p), (pred.ravel() == labels.ravel())
    confidence = scores[np.arange(len(pred)), pred]
    return confidence, (pred == labels)


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    # Bins are (lo, hi]; the first also holds 0.
    return np.asarray(np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1))


def reliability_bins(
    y_true: Any, y_score: Any, task: str, n_bins: int = 15
) -> dict[str, list[Any]]:
    """Data for a reliability diagram: equal-width bins of top-label confidence.

    Returns `bin_edges` (n_bins + 1 floats), and per bin `accuracy` and mean `confidence`
    (None for an empty bin) and `count`. Multi-label pools every (sample, label) probability.
    """
    if n_bins < 1:
        raise MedbenchError(f"n_bins must be at least 1, got {n_bins}")
    labels, scores = _as_inputs(y_true, y_score, task)
    confidence, correct = _confidence_and_correct(labels, scores, task)
    index = _bin_index(confidence, n_bins)
    count = np.bincount(index, minlength=n_bins)
    hits = np.bincount(index, weights=correct.astype(np.float64), minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    return {
        "bin_edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "accuracy": [float(h / c) if c else None for h, c in zip(hits, count, strict=True)],
        "confidence": [float(s / c) if c else None for s, c in zip(conf_sum, count, strict=True)],
        "count": [int(c) for c in count],
    }


def expected_calibration_error(y_true: Any, y_score: Any, task: str, n_bins: int = 15) -> float:
    """Top-label ECE (Guo et al. 2017): sum over bins of bin share * |accuracy - confidence|.

    Multi-label: the ECE of all label-wise binary probabilities pooled together.
    """
    bins = reliability_bins(y_true, y_score, task, n_bins)
    total = sum(bins["count"])
    return float(
        sum(
            c / total * abs(a - s)
            for a, s, c in zip(bins["accuracy"], bins["confidence"], bins["count"], strict=True)
            if c
        )
    )


def _nll(logits: np.ndarray, labels: np.ndarray, task: str, temperature: float) -> float:
    z = logits / temperature
    if task == MULTI_LABEL:
        # Binary cross-entropy averaged over every (sample, label).
        return float(-np.mean(labels * log_expit(z) + (1 - labels) * log_expit(-z)))
    return float(-np.mean(log_softmax(z, axis=1)[np.arange(len(labels)), labels]))


def fit_temperature(val_logits: Any, val_y_true: Any, task: str) -> float:
    """Temperature scaling (Guo et al. 2017): the T minimising validation NLL of logits / T.

    One temperature for all classes (all sigmoids for multi-label), searched on log T
    within [0.05, 20]. Divide test logits by the result before the softmax/sigmoid.
    """
    labels, logits = _as_inputs(val_y_true, val_logits, task)
    lo, hi = (math.log(t) for t in TEMPERATURE_RANGE)
    # NLL is convex in 1/T, hence unimodal in log T: a bounded scalar search finds the optimum.
    result = minimize_scalar(
        lambda log_t: _nll(logits, labels, task, math.exp(log_t)),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(min(max(math.exp(result.x), TEMPERATURE_RANGE[0]), TEMPERATURE_RANGE[1]))


# --------------------------------------------------------------------------- evaluate


def _names(label_names: Sequence[str] | Mapping[Any, str] | None, n: int) -> list[str]:
    if label_names is None:
        return [str(i) for i in range(n)]
    if isinstance(label_names, Mapping):  # MedMNIST's INFO["label"]: {"0": "name", ...}
        by_index = {int(k): str(v) for k, v in label_names.items()}
        return [by_index.get(i, str(i)) for i in range(n)]
    names = [str(v) for v in label_names]
    if len(names) != n:
        raise MedbenchError(f"got {len(names)} label names for {n} classes")
    return names


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


@dataclass
class _Counts:
    """Per-class (per-label) confusion counts, precision/recall/F1 and what the collapse
    guard needs."""

    confusion: list[Any]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    macro_f1: float
    balanced_acc: float
    prediction_counts: np.ndarray
    true_counts: np.ndarray
    majority_prediction: Any
    majority_fraction: float
    true_majority_fraction: float


def _class_scores(
    labels: np.ndarray, pred: np.ndarray, n_cols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Per-class precision, recall, F1 and support (an undefined one is 0.0), and the macro
    F1 over the classes (labels) that are true or predicted at least once: a class neither
    true nor predicted has F1 0/0, so it is left out of the mean instead of counted as 0."""
    every = list(range(n_cols))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, pred, labels=every, average=None, zero_division=0.0
    )
    if pred.ndim == 2:  # multi-label: a label takes part where it is true or predicted
        seen = np.flatnonzero(labels.any(axis=0) | pred.any(axis=0))
    else:
        seen = np.union1d(labels, pred)
    macro_f1 = float(np.mean(f1[seen])) if len(seen) else 0.0
    return precision, recall, f1, support, macro_f1


def _balanced_accuracy(labels: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's balanced accuracy (mean recall over the classes present in the
    labels), quietly where the predictions hold a class the labels do not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # y_pred contains classes not in y_true
        return float(balanced_accuracy_score(labels, pred))


def _multi_label_counts(labels: np.ndarray, pred: np.ndarray) -> _Counts:
    n, n_cols = pred.shape
    precision, recall, f1, support, macro_f1 = _class_scores(labels, pred, n_cols)
    # Each label is a binary problem; its balanced accuracy is the mean of the label's
    # recall on its negatives and its positives (those present), and the mean over labels.
    balanced_acc = float(
        np.mean([_balanced_accuracy(labels[:, j], pred[:, j]) for j in range(n_cols)])
    )
    predicted_sets = Counter(tuple(np.flatnonzero(row).tolist()) for row in pred)
    true_sets = Counter(tuple(np.flatnonzero(row).tolist()) for row in labels)
    majority_set, majority_count = predicted_sets.most_common(1)[0]
    return _Counts(
        confusion=multilabel_confusion_matrix(labels, pred).tolist(),  # [[tn, fp], [fn, tp]]
        precision=precision,
        recall=recall,
        f1=f1,
        support=support,
        macro_f1=macro_f1,
        balanced_acc=balanced_acc,
        prediction_counts=pred.sum(axis=0),
        true_counts=labels.sum(axis=0),
        majority_prediction=list(majority_set),
        majority_fraction=majority_count / n,
        true_majority_fraction=true_sets.most_common(1)[0][1] / n,
    )


def _single_label_counts(labels: np.ndarray, pred: np.ndarray, n_cols: int) -> _Counts:
    n = len(pred)
    cm = confusion_matrix(labels, pred, labels=list(range(n_cols)))
    precision, recall, f1, support, macro_f1 = _class_scores(labels, pred, n_cols)
    true_counts = cm.sum(axis=1)
    prediction_counts = cm.sum(axis=0)
    return _Counts(
        confusion=cm.tolist(),
        precision=precision,
        recall=recall,
        f1=f1,
        support=support,
        macro_f1=macro_f1,
        balanced_acc=_balanced_accuracy(labels, pred),
        prediction_counts=prediction_counts,
        true_counts=true_counts,
        majority_prediction=int(np.argmax(prediction_counts)),
        majority_fraction=prediction_counts.max() / n,
        true_majority_fraction=true_counts.max() / n,
    )


def _per_class(c: _Counts, names: list[str]) -> list[dict[str, Any]]:
    """Per-class precision/recall/F1 rows."""
    return [
        {
            "name": name,
            "precision": float(c.precision[i]),
            "recall": float(c.recall[i]),
            "f1": float(c.f1[i]),
            "support": int(c.support[i]),
        }
        for i, name in enumerate(names)
    ]


def evaluate(
    y_true: Any,
    y_score: Any,
    task: str,
    label_names: Sequence[str] | Mapping[Any, str] | None = None,
) -> dict[str, Any]:
    """All metrics of one split as a JSON-able dict.

    Keys: `n`, `acc`, `auc` (official; `auc` is NaN when undefined), `balanced_acc` (mean
    recall over classes present in y_true; multi-label: mean over labels of each label's
    balanced accuracy), `macro_f1` (mean F1 over classes that are true or predicted at
    least once), `ece` (15 bins), `per_class` (list of {name, precision, recall, f1,
    support}; an undefined precision/recall/F1 is 0.0), `confusion_matrix` (rows true,
    columns predicted; multi-label: per label [[tn, fp], [fn, tp]]), `prediction_counts`
    and `true_counts` (samples per class; multi-label: positives per label),
    `majority_fraction` / `true_majority_fraction` (largest share of predictions / of true
    labels on one class; multi-label: on one label set), and `majority_prediction` (that
    class index; multi-label: that set as a list of label indices).
    """
    labels, scores = _as_inputs(y_true, y_score, task)
    pred = _predict(scores, task)
    n, n_cols = scores.shape
    if task == MULTI_LABEL:
        counts = _multi_label_counts(labels, pred)
    else:
        counts = _single_label_counts(labels, pred, n_cols)
    per_class = _per_class(counts, _names(label_names, n_cols))
    return {
        "n": int(n),
        "acc": _official_acc(labels, scores, task),
        "auc": _official_auc(labels, scores, task),
        "balanced_acc": counts.balanced_acc,
        "macro_f1": counts.macro_f1,
        "ece": expected_calibration_error(labels, scores, task, n_bins=15),
        "per_class": per_class,
        "confusion_matrix": counts.confusion,
        "prediction_counts": [int(c) for c in counts.prediction_counts],
        "true_counts": [int(c) for c in counts.true_counts],
        "majority_prediction": counts.majority_prediction,
        "majority_fraction": float(counts.majority_fraction),
        "true_majority_fraction": float(counts.true_majority_fraction),
    }


# --------------------------------------------------------------------------- collapse guard
#
# Two different failures, told apart. A *collapse* is a model whose predictions pile up on
# one class (label set), or spread over far fewer classes than the split holds: the
# reference study's OCTMNIST EfficientNet predicted one class for every test image while
# its validation accuracy read 73.5%. Such a model must not be used; `collapse_check` flags
# it (and only it: RunResults.collapsed is bool(flags)). A *missed class* is a class, often
# a rare one, that a model otherwise spread over the classes seldom or never gets right;
# that is a per-class recall finding (`missed_classes`), not a collapse.


def _predicted_classes(result: dict[str, Any]) -> int:
    """Classes that take at least PREDICTED_CLASS_MIN_SHARE of a split's predictions."""
    n = result["n"]
    return sum(1 for p in result["prediction_counts"] if p and p / n >= PREDICTED_CLASS_MIN_SHARE)


def _present_classes(result: dict[str, Any]) -> int:
    return sum(1 for t in result["true_counts"] if t > 0)


# A single-label model whose predictions pile on one class is a collapse only while its
# accuracy stays within this much of always predicting the most common class: one that
# leans towards the majority but beats that baseline still discriminates (its weak class
# is a per-class recall finding, `missed_classes`).
BASELINE_MARGIN = 0.05


def _majority_flag(
    split: str, result: dict[str, Any], task: str, max_majority_fraction: float | None
) -> str | None:
    """A message if one class (label set) takes more of the predictions than allowed."""
    n = result["n"]
    names = _result_names(result)
    true_share = result["true_majority_fraction"]
    # Halfway between the true majority share and total collapse, unless given.
    if max_majority_fraction is None:
        limit = true_share + 0.5 * (1.0 - true_share)
    else:
        limit = max_majority_fraction
    share = result["majority_fraction"]
    if share <= limit:
        return None
    if task != MULTI_LABEL and result["acc"] > true_share + BASELINE_MARGIN:
        return None  # leans towards the majority class, but beats always predicting it
    if task == MULTI_LABEL:
        chosen = result["majority_prediction"]
        what = "label set {" + ", ".join(repr(names[j]) for j in chosen) + "}"
        what = what if chosen else "no label (empty set)"
        truth = f"most common true label set {true_share:.0%}"
    else:
        what = f"class {names[result['majority_prediction']]!r}"
        truth = f"true share {result['true_counts'][result['majority_prediction']] / n:.0%}"
    return (
        f"{split} predictions collapsed: {share:.0%} of {n} {split} images predicted as "
        f"{what} ({truth}; flagged above {limit:.1%})"
    )


def _few_classes_flag(split: str, result: dict[str, Any], task: str) -> str | None:
    """A message if the predictions cover at most COLLAPSE_CLASS_FRACTION of the classes
    the split holds (single-label tasks with at least three classes present)."""
    present = _present_classes(result)
    if task == MULTI_LABEL or present < 3:
        return None
    predicted = _predicted_classes(result)
    if predicted > COLLAPSE_CLASS_FRACTION * present:
        return None
    return (
        f"{split} predictions collapsed onto {predicted} of the {present} classes in the split "
        f"(flagged at {COLLAPSE_CLASS_FRACTION:.0%} or fewer; a class counts when it takes "
        f"{PREDICTED_CLASS_MIN_SHARE:.0%} of the predictions)"
    )


def _collapse_flags(
    split: str, result: dict[str, Any], task: str, max_majority_fraction: float | None
) -> list[str]:
    flags = [
        _majority_flag(split, result, task, max_majority_fraction),
        _few_classes_flag(split, result, task),
    ]
    return [f for f in flags if f is not None]


def _unseen_by_validation(val: dict[str, Any], test: dict[str, Any], margin: float) -> str | None:
    """When test collapsed but validation did not and read much higher: say so, since a
    checkpoint chosen on validation then hides the collapse (the reference study's case)."""
    gap = val["acc"] - test["acc"]
    if gap <= margin:
        return None
    return (
        f"validation did not show the test collapse: val ACC {val['acc']:.3f} vs test ACC "
        f"{test['acc']:.3f} (gap {gap:.3f} > margin {margin:.2f})"
    )


def collapse_check(
    val: dict[str, Any],
    test: dict[str, Any],
    *,
    n_classes: int,
    task: str,
    margin: float = 0.15,
    max_majority_fraction: float | None = None,
) -> list[str]:
    """Messages for a model whose predictions collapsed; empty if they did not.

    Takes two `evaluate()` results. For each split it flags (a) a majority share of
    predictions above `max_majority_fraction`, by default halfway between the true
    majority share and 1 (balanced 4 classes: above 62.5%), unless (single-label) the
    split's accuracy beats always predicting its most common class by more than
    `BASELINE_MARGIN`; (b) single-label predictions
    that cover a third or fewer of the classes the split holds (a class is covered when
    it takes 1% of the predictions). When the test split collapsed and validation did
    not, and validation accuracy exceeds test accuracy by more than `margin`, that is
    said too. A class that is merely missed (a rare one never predicted) is not a
    collapse: see `missed_classes`. A val/test gap alone is not one either: see
    `val_test_gap`.
    """
    _check_task(task)
    for split, result in (("val", val), ("test", test)):
        if len(result["prediction_counts"]) != n_classes:
            raise MedbenchError(
                f"{split} result has {len(result['prediction_counts'])} classes, expected {n_classes}"
            )
    val_flags = _collapse_flags("val", val, task, max_majority_fraction)
    test_flags = _collapse_flags("test", test, task, max_majority_fraction)
    flags = val_flags + test_flags
    if test_flags and not val_flags:
        flags += [m for m in [_unseen_by_validation(val, test, margin)] if m]
    return flags


def val_test_gap(val: dict[str, Any], test: dict[str, Any], margin: float = 0.15) -> str | None:
    """A message when validation and test accuracy differ by more than `margin` (then
    validation is a poor guide to test performance), else None."""
    gap = val["acc"] - test["acc"]
    if abs(gap) <= margin:
        return None
    return (
        f"val/test accuracy gap: val ACC {val['acc']:.3f} vs test ACC {test['acc']:.3f} "
        f"(|gap| {abs(gap):.3f} > margin {margin:.2f})"
    )


@dataclass
class MissedClass:
    """A class (label) of one split that a model rarely or never gets right."""

    index: int
    name: str
    support: int  # true images (multi-label: positives) of the class in the split
    share: float  # support / images in the split
    recall: float
    predicted: int  # images predicted as the class (multi-label: predicted positive)

    @property
    def never_predicted(self) -> bool:
        return self.predicted == 0

    def describe(self, split: str = "test") -> str:
        what = "never predicted" if self.never_predicted else f"recall {self.recall:.0%}"
        return f"{self.name!r} ({self.support} {split} images, {self.share:.1%}): {what}"


def _result_names(result: dict[str, Any]) -> list[str]:
    rows = result.get("per_class") or []
    n = len(result["true_counts"])
    return [str(r["name"]) for r in rows] if len(rows) == n else [str(i) for i in range(n)]


def _recalls(result: dict[str, Any]) -> list[float]:
    rows = result.get("per_class") or []
    if len(rows) == len(result["true_counts"]):
        return [float(r["recall"]) for r in rows]
    # Older or partial results: recall from the confusion matrix's diagonal.
    cm = np.asarray(result.get("confusion_matrix") or [], dtype=np.float64)
    if cm.ndim == 3:
        hits = cm[:, 1, 1]
    elif cm.ndim == 2 and cm.size:
        hits = np.diag(cm)
    else:
        return [math.nan] * len(result["true_counts"])
    return [_ratio(h, t) for h, t in zip(hits, result["true_counts"], strict=True)]


def missed_classes(
    result: dict[str, Any],
    *,
    max_recall: float = POOR_RECALL,
    min_count: int = MISSING_CLASS_MIN_COUNT,
) -> list[MissedClass]:
    """Classes (labels) of one split's stored `evaluate()` result with at least
    `min_count` true images whose recall is at most `max_recall` (never predicted
    included), rarest first. This is a per-class recall finding, not a collapse."""
    n = result["n"]
    names, recalls = _result_names(result), _recalls(result)
    out = [
        MissedClass(i, names[i], int(t), t / n, recalls[i], int(p))
        for i, (t, p) in enumerate(
            zip(result["true_counts"], result["prediction_counts"], strict=True)
        )
        if t >= min_count and (p == 0 or recalls[i] <= max_recall)
    ]
    return sorted(out, key=lambda m: (m.support, m.index))


MISSED_CLASS_ADVICE = (
    "retrain with --class-balance weighted_loss (or sampler) and read per-class recall; "
    "accuracy hides a rare class that is never found"
)
COLLAPSE_ADVICE = (
    "train longer, with --class-balance weighted_loss, and check that the predictions spread "
    "over the classes"
)


# --------------------------------------------------------------------------- uncertainty


def _stratified_draws(
    labels: np.ndarray, task: str, rows: int, rng: np.random.Generator, stratified: bool
) -> np.ndarray:
    """`rows` resamples of the image indices, shape (rows, N): within each class (each
    class keeps its count) when `stratified` and the task is single-label, else plain."""
    n = len(labels)
    if not stratified or task == MULTI_LABEL:
        return rng.integers(0, n, size=(rows, n))
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    return np.concatenate(
        [idx[rng.integers(0, len(idx), size=(rows, len(idx)))] for idx in members], axis=1
    )


def bootstrap_indices(
    y_true: Any, task: str, n_boot: int, seed: int = 0, stratified: bool = True
) -> Iterator[np.ndarray]:
    """Bootstrap resamples of the test images, in chunks of shape (rows, N), n_boot rows
    in all. Single-label tasks resample within each class when `stratified` (each
    resample keeps the split's class counts); multi-label resamples images plainly.

    The draws depend only on the labels, `n_boot` and `seed`: two models scored on the
    same images with the same seed see the same resamples (a paired bootstrap).
    """
    labels = np.asarray(y_true)
    if task != MULTI_LABEL and labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    n = len(labels)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n_boot, chunk):
        yield _stratified_draws(labels, task, min(chunk, n_boot - start), rng, stratified)


def bootstrap_replicates(
    y_true: Any,
    y_scores: Sequence[Any],
    task: str,
    metric: str = "acc",
    n_boot: int = 1000,
    seed: int = 0,
    stratified: bool = True,
) -> np.ndarray:
    """The official "acc" or "auc" of each score matrix in `y_scores` (models scored on the
    same images) on `n_boot` bootstrap resamples of the images (`bootstrap_indices`):
    an array (len(y_scores), n_boot), NaN where AUC is undefined on a resample."""
    if metric not in ("acc", "auc"):
        raise MedbenchError(f"unknown bootstrap metric {metric!r}; expected 'acc' or 'auc'")
    if n_boot < 1:
        raise MedbenchError(f"need n_boot >= 1, got {n_boot}")
    inputs = [_as_inputs(y_true, s, task) for s in y_scores]
    labels = inputs[0][0]
    if metric == "acc":
        # Official ACC is a mean over samples (multi-label: of per-sample label accuracy).
        correct = [(_predict(s, task) == labels).astype(np.float64) for _, s in inputs]
        per_sample = [c.mean(axis=1) if task == MULTI_LABEL else c for c in correct]
    out: list[np.ndarray] = []
    for idx in bootstrap_indices(labels, task, n_boot, seed, stratified):
        if metric == "acc":
            out.append(np.stack([p[idx].mean(axis=1) for p in per_sample]))
        else:
            out.append(np.stack([_resampled_auc(labels, s, task, idx) for _, s in inputs]))
    return np.concatenate(out, axis=1)


def bootstrap_ci(
    y_true: Any,
    y_score: Any,
    task: str,
    metric: str = "acc",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of the official "acc" or "auc", over test
    images resampled within each class (`bootstrap_replicates`; multi-label: plainly).

    Resamples where AUC is undefined are dropped; (nan, nan) if every one is.
    """
    values = bootstrap_replicates(y_true, [y_score], task, metric, n_boot, seed)[0]
    return percentile_bounds(values, alpha)


def percentile_bounds(replicates: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """(low, high) percentile bounds of bootstrap replicates, NaN (undefined) ones dropped;
    (nan, nan) if every one is."""
    if not 0 < alpha < 1:
        raise MedbenchError(f"need 0 < alpha < 1, got {alpha}")
    values = replicates[~np.isnan(replicates)]
    if values.size == 0:
        return (math.nan, math.nan)
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high))


def bootstrap_description(task: str, n_boot: int) -> str:
    """How `bootstrap_replicates` resamples, in the words results and reports print."""
    strata = "images plainly" if task == MULTI_LABEL else "images within each class"
    return f"percentile bootstrap over test {strata}, {n_boot} resamples"
