"""The report's figures for a multi-label dataset: one per-label outcome panel per model,
with the catalogue's label names, beside its ROC curve (no single-label confusion matrix,
which a multi-label task does not have)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from medbench.data import dataset_info
from medbench.report.collect import Group, Run
from medbench.report.plots import _label_outcomes, confusion_matrices, label_confusion, roc_curves


def _chest_group(tmp_path, model: str) -> Group:
    info = dataset_info("chestmnist")
    rng = np.random.default_rng(0)
    labels = (rng.random((40, info.n_classes)) < 0.2).astype(np.int64)
    probs = np.clip(labels * 0.7 + rng.random(labels.shape) * 0.4, 0, 1)
    run_dir = tmp_path / model
    run_dir.mkdir()
    np.savez(run_dir / "predictions.npz", test_labels=labels, test_probs=probs)
    dataset = {"task": info.task, "label_names": list(info.label_names)}
    run = Run({"run_dir": str(run_dir), "seed": 0, "status": "finished"},
              results=SimpleNamespace(dataset=dataset))  # fmt: skip
    return Group("chestmnist", 28, model, "h", [run], label=model)


def test_a_multi_label_dataset_gets_per_label_outcomes_and_roc_not_a_class_confusion(tmp_path):
    groups = [_chest_group(tmp_path, "advanced_cnn"), _chest_group(tmp_path, "resnet18")]
    folder = tmp_path / "plots"
    folder.mkdir()
    assert confusion_matrices(groups, folder) == []  # single-label only
    figures = label_confusion(groups, folder) + roc_curves(groups, folder)
    names = {f.path.name: f.caption for f in figures}
    assert "confusion_chestmnist.png" in names and "roc_chestmnist.png" in names
    assert "Per-label outcomes" in names["confusion_chestmnist.png"]


def test_per_label_outcomes_are_shares_of_the_test_split_at_the_official_threshold():
    labels = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    probs = np.array([[0.9, 0.1], [0.4, 0.8], [0.2, 0.6], [0.7, 0.3]])
    shares = _label_outcomes(labels, probs)
    # label 0: TP (row 0), FN (row 1), TN (row 2), FP (row 3); label 1: TN, TP, FP, FN
    assert shares.tolist() == [[0.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]]
    assert _label_outcomes(labels, np.where(labels == 1, 0.9, 0.1)).tolist() == [
        [0.5, 0.0, 0.0, 0.5],
        [0.5, 0.0, 0.0, 0.5],
    ]
