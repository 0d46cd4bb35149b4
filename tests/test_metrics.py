"""Specifications of medbench.scoring.metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from medmnist.evaluator import Evaluator, getACC, getAUC
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
)

from medbench.errors import MedbenchError
from medbench.scoring.metrics import (
    bootstrap_ci,
    collapse_check,
    evaluate,
    expected_calibration_error,
    fit_temperature,
    missed_classes,
    official_acc,
    official_auc,
    predictions,
    probabilities_from_logits,
    reliability_bins,
    val_test_gap,
)

MULTI_LABEL = "multi-label, binary-class"
# One MedMNIST flag per task: Evaluator reads the task from medmnist's INFO.
FLAGS = {
    "octmnist": ("multi-class", 4),
    "pneumoniamnist": ("binary-class", 2),
    "chestmnist": (MULTI_LABEL, 14),
    "retinamnist": ("ordinal-regression", 5),
}


def random_case(task: str, n_cols: int, n: int = 200, seed: int = 0):
    """Labels in npz layout and random probability scores; every class/label both ways."""
    rng = np.random.default_rng(seed)
    if task == MULTI_LABEL:
        labels = (rng.random((n, n_cols)) < 0.4).astype(np.uint8)
        labels[0], labels[1] = 0, 1
        return labels, rng.random((n, n_cols))
    labels = (np.arange(n) % n_cols).astype(np.uint8)[:, None]
    rng.shuffle(labels)
    return labels, probabilities_from_logits(rng.normal(size=(n, n_cols)), task)


def octmnist_collapse(seed: int = 0):
    """The reference failure: balanced 4-class OCTMNIST test, one class predicted for all."""
    names = {"0": "CNV", "1": "DME", "2": "DRUSEN", "3": "NORMAL"}
    val_labels, val_scores = random_case("multi-class", 4, n=1000, seed=seed)
    val_pred = val_labels[:, 0].copy()
    val_pred[:265] = (val_pred[:265] + 1) % 4  # 73.5% correct, spread over all classes
    val = evaluate(val_labels, np.eye(4)[val_pred], "multi-class", names)
    test_labels = np.repeat(np.arange(4), 250)[:, None]
    test_scores = np.tile([0.7, 0.1, 0.1, 0.1], (1000, 1))
    test = evaluate(test_labels, test_scores, "multi-class", names)
    return val, test


@pytest.mark.parametrize("flag", FLAGS)
def test_official_metrics_equal_medmnist_evaluator(flag, tmp_path):
    task, n_cols = FLAGS[flag]
    labels, scores = random_case(task, n_cols)
    np.savez(tmp_path / f"{flag}.npz", test_labels=labels)
    auc, acc = Evaluator(flag, "test", root=str(tmp_path)).evaluate(scores)
    assert official_acc(labels, scores, task) == pytest.approx(acc, abs=1e-12)
    assert official_auc(labels, scores, task) == pytest.approx(auc, abs=1e-12)


@pytest.mark.parametrize("flag", FLAGS)
def test_official_metrics_accept_flat_labels(flag):
    task, n_cols = FLAGS[flag]
    labels, scores = random_case(task, n_cols, seed=1)
    flat = labels if task == MULTI_LABEL else labels[:, 0]
    assert official_acc(flat, scores, task) == pytest.approx(getACC(labels, scores, task))
    assert official_auc(flat, scores, task) == pytest.approx(getAUC(labels, scores, task))


def test_auc_is_nan_when_a_class_is_missing_from_y_true():
    labels = np.array([0, 1, 0, 1])  # class 2 never true
    scores = probabilities_from_logits(np.random.default_rng(0).normal(size=(4, 3)), "multi-class")
    assert math.isnan(official_auc(labels, scores, "multi-class"))
    assert math.isnan(evaluate(labels, scores, "multi-class")["auc"])


def test_auc_is_nan_when_a_label_has_no_positives():
    labels = np.array([[0, 1], [0, 0], [0, 1]])
    assert math.isnan(official_auc(labels, np.full((3, 2), 0.3), MULTI_LABEL))


def test_label_outside_score_columns_is_a_user_error():
    with pytest.raises(MedbenchError, match=r"\[0, 1\]"):
        official_acc(np.array([0, 2]), np.full((2, 2), 0.5), "multi-class")


def test_unknown_task_is_a_user_error():
    with pytest.raises(MedbenchError, match="unknown task"):
        predictions(np.zeros((2, 2)), "regression")


def test_probabilities_from_logits_softmax_with_temperature():
    probs = probabilities_from_logits(np.array([[0.0, 2.0]]), "multi-class", temperature=2.0)
    np.testing.assert_allclose(probs, [[1 / (1 + math.e), math.e / (1 + math.e)]])


def test_probabilities_from_logits_sigmoid_for_multi_label():
    probs = probabilities_from_logits(np.array([[0.0, math.log(3.0)]]), MULTI_LABEL)
    np.testing.assert_allclose(probs, [[0.5, 0.75]])


def test_predictions_argmax_and_multi_label_threshold():
    np.testing.assert_array_equal(predictions(np.array([[0.2, 0.5, 0.3]]), "multi-class"), [1])
    np.testing.assert_array_equal(
        predictions(np.array([[0.5, 0.51, 0.9]]), MULTI_LABEL), [[0, 1, 1]]
    )


def test_evaluate_single_label_matches_sklearn():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 0, 1, 2, 2, 2, 0])
    result = evaluate(y[:, None], np.eye(4)[pred], "multi-class", ["a", "b", "c", "d"])
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=[0, 1, 2, 3], zero_division=0
    )
    assert result["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1, 2, 3]).tolist()
    assert result["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert result["macro_f1"] == pytest.approx(f1_score(y, pred, labels=[0, 1, 2], average="macro"))
    assert [c["name"] for c in result["per_class"]] == ["a", "b", "c", "d"]
    np.testing.assert_allclose([c["precision"] for c in result["per_class"]], precision)
    np.testing.assert_allclose([c["recall"] for c in result["per_class"]], recall)
    np.testing.assert_allclose([c["f1"] for c in result["per_class"]], f1)
    assert [c["support"] for c in result["per_class"]] == support.tolist()


def test_evaluate_counts_and_majority_fraction():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 0, 1, 2, 2, 2, 0])
    result = evaluate(y, np.eye(3)[pred], "multi-class")
    assert result["n"] == 8
    assert result["prediction_counts"] == [3, 2, 3]
    assert result["true_counts"] == [3, 2, 3]
    assert result["majority_fraction"] == pytest.approx(3 / 8)


def test_evaluate_multi_label_matches_sklearn_per_label():
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [1, 0]])
    pred = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [1, 0]])
    result = evaluate(y, np.where(pred == 1, 0.8, 0.2), MULTI_LABEL)
    assert result["confusion_matrix"] == multilabel_confusion_matrix(y, pred).tolist()
    expected_balanced = np.mean([balanced_accuracy_score(y[:, j], pred[:, j]) for j in range(2)])
    assert result["balanced_acc"] == pytest.approx(expected_balanced)
    assert result["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    np.testing.assert_allclose([c["recall"] for c in result["per_class"]], [2 / 3, 1.0])
    assert result["prediction_counts"] == [2, 3]
    assert result["true_counts"] == [3, 2]
    assert result["majority_fraction"] == pytest.approx(3 / 5)  # {1} predicted for 3 of 5
    assert result["majority_prediction"] == [1]


def test_evaluate_is_json_serialisable_in_strict_json():
    labels, scores = random_case("multi-class", 4, n=40)
    json.dumps(evaluate(labels, scores, "multi-class"), allow_nan=False)


def test_ece_is_zero_for_correct_hard_predictions():
    y = np.array([0, 1, 2, 1])
    assert expected_calibration_error(y, np.eye(3)[y], "multi-class") == 0.0


def test_ece_is_positive_for_overconfident_predictions():
    y = np.array([0, 1, 2, 1])
    pred = np.array([0, 1, 2, 2])  # 75% right at confidence 0.99
    scores = np.full((4, 3), 0.005)
    scores[np.arange(4), pred] = 0.99
    assert expected_calibration_error(y, scores, "multi-class") == pytest.approx(0.24)


def test_ece_multi_label_pools_label_probabilities():
    y = np.array([[1, 0], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.9, 0.1]])  # 3 of 4 right at confidence 0.9
    assert expected_calibration_error(y, scores, MULTI_LABEL) == pytest.approx(0.15)


def test_reliability_bins_put_confidence_in_equal_width_bins():
    y = np.array([0, 1, 0])
    scores = np.array([[0.95, 0.05], [0.55, 0.45], [0.6, 0.4]])
    bins = reliability_bins(y, scores, "multi-class", n_bins=2)
    assert bins["bin_edges"] == [0.0, 0.5, 1.0]
    assert bins["count"] == [0, 3]
    assert bins["accuracy"] == [None, pytest.approx(2 / 3)]
    assert bins["confidence"] == [None, pytest.approx(0.7)]


def calibrated_data(task: str, n: int = 4000, n_cols: int = 4, seed: int = 0):
    """Logits of a calibrated model and labels drawn from its probabilities."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(n, n_cols))
    probs = probabilities_from_logits(logits, task)
    if task == MULTI_LABEL:
        return logits, (rng.random(probs.shape) < probs).astype(int)
    return logits, (probs.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)


@pytest.mark.parametrize("task", ["multi-class", MULTI_LABEL])
def test_fit_temperature_recovers_overconfidence_factor(task):
    logits, y = calibrated_data(task)
    assert fit_temperature(3 * logits, y, task) == pytest.approx(3.0, rel=0.1)


def test_temperature_scaling_reduces_ece():
    logits, y = calibrated_data("multi-class")
    t = fit_temperature(3 * logits, y, "multi-class")
    before = expected_calibration_error(
        y, probabilities_from_logits(3 * logits, "multi-class"), "multi-class"
    )
    after = expected_calibration_error(
        y, probabilities_from_logits(3 * logits, "multi-class", temperature=t), "multi-class"
    )
    assert after < before / 2


def test_collapse_check_flags_octmnist_style_collapse():
    val, test = octmnist_collapse()
    flags = collapse_check(val, test, n_classes=4, task="multi-class")
    assert any(
        "test predictions collapsed: 100% of 1000 test images predicted as class 'CNV'" in f
        and "true share 25%" in f
        for f in flags
    )
    assert any("collapsed onto 1 of the 4 classes" in f for f in flags)
    assert any("validation did not show the test collapse" in f for f in flags)
    assert any("val ACC 0.735 vs test ACC 0.250" in f for f in flags)
    assert not any(f.startswith("val ") for f in flags)


def test_collapse_check_passes_healthy_balanced_predictions():
    val_labels, val_scores = random_case("multi-class", 4, n=400, seed=1)
    test_labels, test_scores = random_case("multi-class", 4, n=400, seed=2)
    sharpen = lambda labels, scores: 0.5 * scores + 0.5 * np.eye(4)[labels[:, 0]]  # noqa: E731
    val = evaluate(val_labels, sharpen(val_labels, val_scores), "multi-class")
    test = evaluate(test_labels, sharpen(test_labels, test_scores), "multi-class")
    assert collapse_check(val, test, n_classes=4, task="multi-class") == []


def test_a_val_test_gap_alone_is_not_a_collapse_but_is_reported_by_val_test_gap():
    y = np.repeat(np.arange(4), 50)
    wrong = (y + 1) % 4
    val = evaluate(y, np.eye(4)[np.where(np.arange(200) % 10 < 9, y, wrong)], "multi-class")
    test = evaluate(y, np.eye(4)[np.where(np.arange(200) % 10 < 6, y, wrong)], "multi-class")
    assert collapse_check(val, test, n_classes=4, task="multi-class") == []
    assert val_test_gap(val, test, margin=0.15) == (
        "val/test accuracy gap: val ACC 0.900 vs test ACC 0.600 (|gap| 0.300 > margin 0.15)"
    )
    assert val_test_gap(val, test, margin=0.35) is None


def test_leaning_towards_the_majority_while_beating_it_is_not_a_collapse():
    # BreastMNIST-like: 73% of the split is class 1. Predicting class 1 for 88% of images
    # while right on 83% beats always-class-1 by 10 points: the model still discriminates.
    y = np.repeat([0, 1], [42, 114])
    leaning = np.ones(156, dtype=int)
    leaning[:19] = 0  # 19 of the 42 class-0 images found, none of class 1 missed
    result = evaluate(y, np.eye(2)[leaning], "binary-class")
    assert result["majority_fraction"] > 0.865 and result["acc"] > 0.73 + 0.05
    assert collapse_check(result, result, n_classes=2, task="binary-class") == []
    # Piling on class 1 without beating it (one class-0 image found) is a collapse.
    piled = np.ones(156, dtype=int)
    piled[0] = 0
    flagged = evaluate(y, np.eye(2)[piled], "binary-class")
    assert any("predictions collapsed" in f for f in collapse_check(
        flagged, flagged, n_classes=2, task="binary-class"))  # fmt: skip


def test_collapse_check_flags_multi_label_all_negative_predictions():
    y = np.zeros((100, 3), dtype=int)
    y[:40, 0] = 1
    y[30:70, 1] = 1
    y[60:, 2] = 1
    result = evaluate(y, np.full((100, 3), 0.1), MULTI_LABEL)
    flags = collapse_check(result, result, n_classes=3, task=MULTI_LABEL)
    assert any("100% of 100 val images predicted as no label" in f for f in flags)


def rare_class_case(rare_found: bool):
    """Seven classes, the last one 3% of the split; the model is right on 80% of every
    common class and spreads its predictions over them, and finds the rare class or not."""
    counts = [300, 150, 120, 100, 80, 60, 30]
    y = np.repeat(np.arange(7), counts)
    pred = y.copy()
    for c in range(6):
        idx = np.flatnonzero(y == c)
        pred[idx[: len(idx) // 5]] = (c + 1) % 6  # 20% of each common class confused
    if not rare_found:
        pred[y == 6] = 0
    names = ["nevus", "melanoma", "bkl", "bcc", "akiec", "vasc", "df"]
    return evaluate(y, np.eye(7)[pred], "multi-class", names)


def test_a_missed_rare_class_is_not_a_collapse():
    result = rare_class_case(rare_found=False)
    assert collapse_check(result, result, n_classes=7, task="multi-class") == []


def test_a_missed_rare_class_is_a_per_class_recall_finding():
    (missed,) = missed_classes(rare_class_case(rare_found=False))
    assert (missed.name, missed.support, missed.never_predicted) == ("df", 30, True)
    assert missed.describe("test") == "'df' (30 test images, 3.6%): never predicted"
    assert missed_classes(rare_class_case(rare_found=True)) == []


def test_a_poorly_recalled_class_is_reported_with_its_recall():
    y = np.repeat([0, 1], [90, 10])
    pred = np.zeros(100, dtype=int)
    pred[90] = 1  # one of the ten found
    pred[:3] = 1
    (missed,) = missed_classes(evaluate(y, np.eye(2)[pred], "binary-class"))
    assert (missed.index, missed.never_predicted, missed.recall) == (1, False, 0.1)
    assert "recall 10%" in missed.describe()


def test_predictions_on_far_fewer_classes_than_the_split_holds_are_a_collapse():
    y = np.repeat(np.arange(8), 50)
    pred = np.where(y < 4, 0, 1)  # two of eight classes predicted, neither above 62.5%
    result = evaluate(y, np.eye(8)[pred], "multi-class")
    flags = collapse_check(result, result, n_classes=8, task="multi-class")
    assert flags == [
        "val predictions collapsed onto 2 of the 8 classes in the split (flagged at 33% or "
        "fewer; a class counts when it takes 1% of the predictions)",
        "test predictions collapsed onto 2 of the 8 classes in the split (flagged at 33% or "
        "fewer; a class counts when it takes 1% of the predictions)",
    ]


def test_bootstrap_ci_contains_point_estimate():
    labels, scores = random_case("multi-class", 4, n=300)
    for metric, point in (("acc", official_acc), ("auc", official_auc)):
        low, high = bootstrap_ci(labels, scores, "multi-class", metric=metric, n_boot=200)
        assert low < point(labels, scores, "multi-class") < high


def test_bootstrap_ci_narrows_with_more_data():
    small = random_case("binary-class", 2, n=50)
    large = random_case("binary-class", 2, n=2000)
    low_s, high_s = bootstrap_ci(*small, "binary-class", n_boot=500)
    low_l, high_l = bootstrap_ci(*large, "binary-class", n_boot=500)
    assert high_l - low_l < (high_s - low_s) / 3


def test_bootstrap_ci_is_reproducible_with_a_seed():
    labels, scores = random_case(MULTI_LABEL, 3, n=60)
    assert bootstrap_ci(labels, scores, MULTI_LABEL, seed=7) == bootstrap_ci(
        labels, scores, MULTI_LABEL, seed=7
    )


@pytest.mark.parametrize(
    "task,n_classes", [("binary-class", 2), ("multi-class", 5), (MULTI_LABEL, 4)]
)
def test_resampled_auc_equals_the_official_auc_of_each_resample(task, n_classes):
    """The bootstrap scores every resample at once; each value is the official AUC of that
    resample (ties and resamples that lose a class included: NaN where it is undefined)."""
    from medbench.scoring.metrics import bootstrap_indices, bootstrap_replicates

    labels, scores = random_case(task, n_classes, n=80)
    scores = np.round(scores, 1)  # many ties
    if task == MULTI_LABEL:
        labels[:, 3] = 0
        labels[:2, 3] = 1  # a rare label: some resamples have no positive
    fast = bootstrap_replicates(labels, [scores], task, "auc", n_boot=200, seed=3)[0]
    idx = np.concatenate(list(bootstrap_indices(labels, task, 200, seed=3)))
    slow = np.array([official_auc(labels[i], scores[i], task) for i in idx])
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
    assert np.array_equal(np.isnan(fast), np.isnan(slow))
    if task == MULTI_LABEL:
        assert np.isnan(fast).any()
