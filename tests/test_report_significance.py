"""The report's statistics: an interval on every run and row, paired tests corrected over
the whole report, the resolvable difference beside them, and the ranking across datasets
(with its critical-difference diagram from five datasets on). Runs come from the stand-in
train function, whose saved predictions are right on as many test images as its table of
accuracies says (tests/support/fake_training.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medbench.report import build_report
from medbench.scoring import stats
from support.fake_training import N_IMAGES, make_fake_train
from support.grids import run_benchmark_with

FIVE = ("dermamnist", "octmnist", "bloodmnist", "pathmnist", "tissuemnist")
MODELS = ("advanced_cnn", "efficientnet", "resnet18")
# advanced_cnn first on every dataset, resnet18 last: a ranking Friedman's test detects.
RANKED = {(d, m): acc for d in FIVE for m, acc in zip(MODELS, (0.86, 0.74, 0.62), strict=True)}


def _grid(folder: Path, datasets, accuracy: dict, seeds: int = 2) -> Path:
    run_benchmark_with(
        datasets=",".join(datasets),
        models=",".join(MODELS),
        seeds=seeds,
        epochs=2,
        out=folder,
        progress=False,
        report=False,
        train_fn=make_fake_train(accuracy),
    )
    return folder


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    return build_report(_grid(tmp_path_factory.mktemp("five"), FIVE, RANKED))


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    return build_report(_grid(tmp_path_factory.mktemp("two"), FIVE[:2], RANKED), plots=False)


@pytest.mark.slow
def test_a_grid_over_five_datasets_draws_the_critical_difference_diagram(five):
    names = {p.name for p in five.plots}
    assert "critical_difference.png" in names
    md = five.markdown.read_text()
    assert "![Critical-difference diagram" in md
    assert "### Ranking across datasets" in md
    ranking = json.loads(five.summary.read_text())["findings"]["significance"]["ranking"]
    assert ranking["testable"] and ranking["friedman_p"] < 0.05
    assert ranking["average_ranks"] == [1.0, 2.0, 3.0]
    assert any(s.startswith("Across 5 datasets, average ranks") for s in five.findings.findings)


def test_a_grid_over_fewer_datasets_says_why_it_has_no_ranking_test(two):
    assert not any(p.name == "critical_difference.png" for p in two.plots)
    assert any(
        s.startswith("Across datasets the ranking cannot be tested: 2 datasets")
        and "Demsar 2006" in s
        for s in two.findings.findings
    )
    assert "### Ranking across datasets" not in two.markdown.read_text()


def test_every_run_and_every_row_has_a_95_percent_interval(two):
    sig = json.loads(two.summary.read_text())["findings"]["significance"]
    runs = json.loads(two.json.read_text())
    assert {r["run_dir"] for r in runs} == set(sig["runs"])
    for row in runs:
        acc = sig["runs"][row["run_dir"]]["test_acc"]
        assert acc["low"] <= row["test_acc"] <= acc["high"]
        assert acc["estimate"] == pytest.approx(row["test_acc"], abs=0.5 / N_IMAGES)
    assert len(sig["rows"]) == 2 * len(MODELS)
    for row in sig["rows"]:
        interval = row["test_auc"]
        assert interval["low"] <= interval["estimate"] <= interval["high"]
        assert interval["n_seeds"] == 2 and "two-level bootstrap" in interval["method"]
    md = two.markdown.read_text()
    assert "interval in brackets" in md
    table = md.split("## Results", 1)[1].split("## ", 1)[0]
    assert all("[" in line for line in table.splitlines() if "this study" in line)


def test_holm_counts_every_comparison_of_the_report(two):
    comparisons = json.loads(two.summary.read_text())["findings"]["significance"]["comparisons"]
    pairs = [p for d in comparisons for p in d["pairs"]]
    assert len(pairs) == 2 * 3  # three pairs of models on each of two datasets
    for key in ("delong_p", "mcnemar_p"):
        raw = [p[key] for p in pairs]
        assert [p[f"{key}_holm"] for p in pairs] == pytest.approx(stats.holm(raw))
    md = two.markdown.read_text()
    assert "### Paired comparisons: dermamnist" in md and "### Paired comparisons: octmnist" in md
    assert "Holm over the 6 comparisons of this report" in md


def test_the_resolvable_difference_is_stated_beside_the_comparisons(two):
    comparisons = json.loads(two.summary.read_text())["findings"]["significance"]["comparisons"]
    derma = next(d for d in comparisons if d["dataset"] == "dermamnist")
    resolvable = derma["resolvable"]
    assert 0 < resolvable["auc"] < 0.5 and 0 < resolvable["acc"] < 0.5
    assert derma["n_test"] == N_IMAGES
    sentence = next(
        s for s in two.findings.findings if s.startswith("dermamnist: differences under")
    )
    assert f"{resolvable['auc']:.3f} AUC" in sentence and f"{N_IMAGES} test images" in sentence


def test_findings_follow_the_corrected_tests(tmp_path):
    """A real difference (86% against 62%) is called a win; the same grid with every
    model at 74% is called indistinguishable, with the numbers."""
    real = build_report(_grid(tmp_path / "real", FIVE[:1], RANKED), plots=False)
    none = {k: 0.74 for k in RANKED}
    same = build_report(_grid(tmp_path / "same", FIVE[:1], none), plots=False)
    (win,) = real.findings.comparisons
    (tie,) = same.findings.comparisons
    assert win.paired and win.significant and win.p_value < 0.05
    assert tie.paired and not tie.significant and tie.p_value > 0.05
    win_text = next(
        s for s in real.findings.findings if s.startswith("dermamnist: advanced_cnn leads")
    )
    tie_text = next(
        s for s in same.findings.findings if s.startswith("dermamnist: ") and "leads" in s
    )
    assert "holds on these" in win_text and "indistinguishable" not in win_text
    assert "indistinguishable on this test split" in tie_text and "Holm p" in tie_text
    assert any("use advanced_cnn" in r for r in real.findings.recommendations)
    assert any("indistinguishable" in r for r in same.findings.recommendations)


def test_run_results_keep_plain_test_metrics_beside_their_intervals(two):
    runs = json.loads(two.json.read_text())
    results = json.loads(Path(runs[0]["results_path"]).read_text())
    assert isinstance(results["metrics"]["test"]["acc"], float)
    assert isinstance(results["metrics"]["test"]["auc"], float)
    arrays = np.load(Path(runs[0]["run_dir"]) / "predictions.npz")
    assert {"test_probs", "test_labels"} <= set(arrays.files)
