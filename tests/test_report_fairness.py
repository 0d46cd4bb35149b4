"""What the report may claim: rows ranked only when they trained to comparable lengths, a
majority-class baseline per dataset, collapse told apart from a missed rare class, "best"
and "most efficient" never a collapsed model, unfinished cells listed with their reasons,
and findings that are short and whole. Result folders come from support.report_fixtures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medbench.report import build_report
from support.report_fixtures import Cell, write_grid


def _report(tmp_path: Path, cells: list[Cell]):
    return build_report(write_grid(tmp_path / "grid", cells), plots=False)


def _pair(dataset: str, **kw) -> list[Cell]:
    a = {k[2:]: v for k, v in kw.items() if k.startswith("a_")}
    b = {k[2:]: v for k, v in kw.items() if k.startswith("b_")}
    return [
        *(Cell(dataset, "advanced_cnn", s, n_params=400_000, **a) for s in range(2)),
        *(Cell(dataset, "resnet18", s, n_params=11_000_000, **b) for s in range(2)),
    ]


def test_epoch_rows_that_trained_unequal_epochs_are_not_ranked(tmp_path):
    report = _report(
        tmp_path, _pair("breastmnist", a_accuracy=0.9, a_epochs_trained=1.0, b_epochs_trained=3.0)
    )
    assert report.findings.winners == {}
    assert any(
        "breastmnist: rows not ranked" in s and "advanced_cnn 1 epoch, resnet18 3 epochs" in s
        for s in report.findings.findings
    )
    assert report.findings.best_overall is None


def test_time_budget_rows_are_ranked_when_their_wall_seconds_agree(tmp_path):
    budget = {"epochs": None, "time_budget_seconds": 120}
    cells = _pair(
        "breastmnist",
        a_accuracy=0.9,
        b_accuracy=0.75,
        **{f"a_{k}": v for k, v in budget.items()},
        **{f"b_{k}": v for k, v in budget.items()},
        a_train_seconds=118,
        b_train_seconds=121,
        a_epochs_trained=3.0,
        b_epochs_trained=0.5,
    )
    report = _report(tmp_path, cells)
    assert report.findings.winners == {"breastmnist": "advanced_cnn"}


def test_time_budget_rows_with_unequal_wall_seconds_are_not_ranked(tmp_path):
    budget = {"a_epochs": None, "b_epochs": None}
    cells = _pair("breastmnist", **budget, a_time_budget_seconds=120, b_time_budget_seconds=120,
                  a_train_seconds=40, b_train_seconds=120)  # fmt: skip
    report = _report(tmp_path, cells)
    assert report.findings.winners == {}
    assert any("differ by more than 20%" in s for s in report.findings.findings)
    assert any(
        "did not use their budgets evenly" in r and "--epochs N" in r
        for r in report.findings.recommendations
    )


def test_rows_under_different_length_rules_are_not_ranked_against_each_other(tmp_path):
    cells = _pair("breastmnist", b_epochs=None, b_time_budget_seconds=60)
    report = _report(tmp_path, cells)
    assert set(report.findings.winners) == {"breastmnist (3 epochs)", "breastmnist (time budget)"}
    assert all(c.runner_up is None for c in report.findings.comparisons)


def test_each_dataset_gets_a_majority_class_baseline_row(tmp_path):
    report = _report(tmp_path, _pair("dermamnist"))
    b = report.findings.baselines["dermamnist"]
    assert b.acc == pytest.approx(0.670, abs=0.002) and b.auc == 0.5
    md = report.markdown.read_text()
    assert re.search(
        r"\| dermamnist \| majority-class baseline \| baseline: always 'melanocytic nevi' "
        r"\(test labels\) \| 66\.\d% \| 0\.500 \|",
        md,
    )


def test_a_run_no_better_than_the_baseline_is_marked(tmp_path):
    cells = _pair("dermamnist", b_accuracy=0.0, b_miss=None)  # resnet18 is always wrong
    report = _report(tmp_path, cells)
    md = report.markdown.read_text()
    assert "| dermamnist | resnet18 | 0 |" in md and "NO (≤ baseline)" in md
    assert any("2 of 4 runs are no better" in s for s in report.findings.findings)
    assert any("no better than always predicting" in r for r in report.findings.recommendations)


def test_a_collapse_and_a_missed_rare_class_are_reported_apart(tmp_path):
    cells = [
        *(Cell("dermamnist", "advanced_cnn", s, miss=6) for s in range(2)),
        *(Cell("dermamnist", "efficientnet", s, collapse=True) for s in range(2)),
    ]
    report = _report(tmp_path, cells)
    text = report.findings.findings
    assert any("2 of 4 runs collapsed: efficientnet on dermamnist (2)" in s for s in text)
    assert any("still miss a class" in s and "'vascular lesions'" in s for s in text)
    tables = {t.title: t for t in report.findings.tables}
    assert {r[1] for r in tables["Collapsed runs"].rows} == {"efficientnet"}
    assert {(r[1], r[3]) for r in tables["Missed classes (per-class recall)"].rows} == {
        ("advanced_cnn", "vascular lesions")
    }
    recs = report.findings.recommendations
    assert any("Do not use as trained (collapsed): efficientnet" in r for r in recs)
    assert any("missed classes 'vascular lesions'" in r and "weighted_loss" in r for r in recs)
    assert report.findings.winners == {"dermamnist": "advanced_cnn"}


def test_best_and_most_efficient_skip_collapsed_runs(tmp_path):
    cells = [
        *(Cell("octmnist", "tiny", s, collapse=True, n_params=20_000) for s in range(2)),
        *(Cell("octmnist", "resnet18", s, accuracy=0.7, n_params=11_000_000) for s in range(2)),
        *(Cell("octmnist", "advanced_cnn", s, accuracy=0.6, n_params=400_000) for s in range(2)),
    ]
    report = _report(tmp_path, cells)
    # tiny has by far the most accuracy per parameter, but it collapsed.
    assert report.findings.most_efficient == "advanced_cnn"
    assert report.findings.best_overall == "resnet18"
    assert [lab for lab, _, _ in report.findings.ranking] == ["resnet18", "advanced_cnn"]


def test_pending_and_failed_cells_are_listed_apart_with_their_reasons(tmp_path):
    cells = [
        Cell("breastmnist", "advanced_cnn"),
        Cell("breastmnist", "resnet18", status="failed", error="RuntimeError: out of memory"),
        Cell("breastmnist", "efficientnet", status="pending"),
    ]
    report = _report(tmp_path, cells)
    md = report.markdown.read_text()
    assert "| breastmnist | resnet18 | 0 | failed | RuntimeError: out of memory |" in md
    assert "| breastmnist | efficientnet | 0 | pending | not started yet; re-run" in md
    runs_table = md.split("## Runs", 1)[1]
    assert "resnet18" not in runs_table and "efficientnet" not in runs_table
    assert any("1 failed, 1 pending" in s for s in report.findings.findings)


def _busy_grid() -> list[Cell]:
    """Many models collapsing, missing classes and with big gaps: the case where findings
    used to be cut."""
    cells = []
    for i in range(8):
        cells += [Cell("octmnist", f"model{i}", s, collapse=i % 2 == 0, accuracy=0.6)
                  for s in range(2)]  # fmt: skip
        cells += [Cell("dermamnist", f"model{i}", s, miss=6, accuracy=0.7) for s in range(2)]
    return cells


@pytest.mark.slow
def test_no_finding_is_cut_mid_phrase_and_each_is_at_most_two_lines(tmp_path):
    report = _report(tmp_path, _busy_grid())
    for s in report.findings.findings + report.findings.recommendations:
        assert "…" not in s and "..." not in s, s
        assert s.count("(") == s.count(")"), s
        assert s.rstrip().endswith((".", ")")), s
        assert len(s) <= 260, s


@pytest.mark.slow
def test_every_run_a_finding_counts_is_listed_in_its_table(tmp_path):
    report = _report(tmp_path, _busy_grid())
    tables = {t.title: t for t in report.findings.tables}
    collapsed = {(r[1], r[2]) for r in tables["Collapsed runs"].rows}
    assert any(
        s.startswith(f"{len(collapsed)} of 32 runs collapsed") for s in report.findings.findings
    )
    gaps = tables["Validation/test gaps"].rows
    assert any(f"in {len(gaps)} of 32 runs" in s for s in report.findings.findings)


def test_tables_and_recommendations_use_what_the_runs_really_trained(tmp_path):
    cells = [Cell("octmnist", "advanced_cnn", s, accuracy=0.5, epochs=10, epochs_trained=e)
             for s, e in enumerate((2.5, 2.5))]  # fmt: skip
    report = _report(tmp_path, cells)
    md = report.markdown.read_text()
    assert "| octmnist | advanced_cnn | 0 | " in md and "| 50 | 2.50 |" in md
    assert any("trained 2.5 epochs (50 steps" in r for r in report.findings.recommendations)
    assert not any("10 epochs" in r for r in report.findings.recommendations)


def test_budgeted_runs_with_different_shares_are_compared_by_the_seconds_they_trained(tmp_path):
    # A grid behind its plan gives its last runs smaller shares: they are one cohort, and
    # what they really trained decides whether they can be ranked.
    cells = _pair(
        "breastmnist",
        a_accuracy=0.9,
        b_accuracy=0.75,
        a_epochs=None,
        b_epochs=None,
        a_time_budget_seconds=60,
        b_time_budget_seconds=54,
        a_train_seconds=58,
        b_train_seconds=53,
    )
    report = _report(tmp_path, cells)
    assert set(report.findings.winners) == {"breastmnist"}


def test_pretrained_rows_are_marked_with_their_weights_source(tmp_path):
    report = _report(tmp_path, [
        Cell("breastmnist", "resnet18", seed=s) for s in (0, 1)
    ] + [
        Cell("breastmnist", "resnet18", seed=s, pretrained="/w/pneumonia-run") for s in (0, 1)
    ] + [
        Cell("breastmnist", "resnet18", seed=0, pretrained="hub", finetune="linear-probe")
    ]).markdown.read_text()  # fmt: skip
    assert re.search(
        r"\| breastmnist \| resnet18 \[\w{6}\] \(pretrained: pneumonia-run\) \|", report
    )
    assert re.search(r"resnet18 \[\w{6}\] \(pretrained: timm hub, linear probe\) \|", report)
    assert re.search(r"\| breastmnist \| resnet18 \[\w{6}\] \| this study", report)
