"""Which rows may be ranked against each other, and the majority-class baseline they must beat.

Rows (groups of seeds) of one dataset are ranked only when they were trained under the same
length rule and their actual lengths agree: wall seconds for a time-budget grid (each cell
gets an equal share), epochs trained (steps / steps per epoch, a fraction) for an epoch
grid. A model that trained three times as long as another is not beaten by it on merit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medbench.report.collect import Group, Run
from medbench.scoring.metrics import MULTI_LABEL

# Actual lengths agree when the shortest is within this fraction of the longest.
TOLERANCE = {"time budget": 0.2, "epochs": 0.1}
UNIT = {"time budget": "s", "epochs": "epochs"}


@dataclass
class Cohort:
    """The groups of one dataset trained under one length rule, best healthy first."""

    unit: str
    rule: str  # "epochs" or "time budget"
    planned: float | None  # the planned epochs or seconds per cell
    groups: list[Group]
    comparable: bool
    spread: str  # each group's actual lengths, e.g. "advanced_cnn 1-3 epochs, resnet18 3 epochs"

    @property
    def label(self) -> str:
        if self.planned is None:
            return self.rule
        return (
            f"{self.planned:g} {UNIT[self.rule]}"
            if self.rule == "epochs"
            else (f"{self.planned:g} s budget")
        )

    @property
    def healthy(self) -> list[Group]:
        return [g for g in self.groups if not g.collapsed_runs]

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.rule]


def length_rule(run: Run) -> tuple[str, float | None]:
    """("time budget", None) or ("epochs", planned epochs) of a run's config. Budgeted runs
    form one cohort whatever their budgets (a grid behind its plan gives its last runs
    smaller shares): what they really trained, in seconds, decides whether they compare."""
    config = (run.results.config if run.results else None) or run.config or {}
    if config.get("time_budget_seconds"):
        return "time budget", None
    return "epochs", float(config["epochs"]) if config.get("epochs") else None


def actual_length(run: Run, rule: str) -> float | None:
    """What the run really trained: wall seconds under a time budget, else epochs."""
    value = run["train_seconds"] if rule == "time budget" else run["epochs_trained"]
    return float(value) if isinstance(value, (int, float)) else None


def lengths_agree(values: list[float], tolerance: float) -> bool:
    if not values:
        return True
    return min(values) >= (1.0 - tolerance) * max(values)


def _span(values: list[float], rule: str) -> str:
    fmt = (lambda v: f"{v:.0f}") if rule == "time budget" else (lambda v: f"{v:.2g}")
    lo, hi = fmt(min(values)), fmt(max(values))
    span = lo if lo == hi else f"{lo}-{hi}"
    return f"{span} {'epoch' if span == '1' else UNIT[rule]}"


def _cohort(unit: str, rule: str, planned: float | None, groups: list[Group]) -> Cohort:
    per_group = {
        g.label: [v for r in g.runs if (v := actual_length(r, rule)) is not None] for g in groups
    }
    every = [v for vs in per_group.values() for v in vs]
    spread = ", ".join(f"{k} {_span(vs, rule)}" for k, vs in per_group.items() if vs)
    ranked = sorted(
        groups, key=lambda g: (bool(g.collapsed_runs), -(g.stat("test_acc").mean or 0.0))
    )
    ok = lengths_agree(every, TOLERANCE[rule])
    return Cohort(unit, rule, planned, ranked, ok, spread)


def cohorts(groups: list[Group], unit_of: Callable[[Group], str]) -> list[Cohort]:
    """Groups split by dataset unit (`unit_of(group)`) and length rule, in first-seen order."""
    keyed: dict[tuple[str, str, float | None], list[Group]] = {}
    for g in groups:
        rule, planned = length_rule(g.runs[0])
        keyed.setdefault((unit_of(g), rule, planned), []).append(g)
    return [_cohort(u, rule, planned, gs) for (u, rule, planned), gs in keyed.items()]


@dataclass
class Baseline:
    """Always predicting the test split's most common class (multi-label: each label's
    most common value): ACC is that class's share, AUC is 0.5."""

    unit: str
    acc: float
    auc: float
    predicts: str
    n: int

    def beaten_by(self, test_acc: float | None) -> bool:
        return test_acc is not None and test_acc > self.acc + 1e-9


def _test_counts(run: Run) -> tuple[list[int], int] | None:
    """(true counts per class or positives per label, test images) of a run: from its
    stored metrics, else from predictions.npz's test labels."""
    test = run.results.test if run.results else {}
    if test.get("true_counts") and test.get("n"):
        return [int(c) for c in test["true_counts"]], int(test["n"])
    npz = run.run_dir / "predictions.npz" if run.run_dir else None
    if npz is None or not npz.is_file():
        return None
    with np.load(npz) as data:
        if "test_labels" not in data:
            return None
        y = data["test_labels"]
    if _task(run) == MULTI_LABEL:
        return [int(c) for c in y.sum(axis=0)], len(y)
    n_classes = len(_names(run)) or int(y.max()) + 1
    return [int(c) for c in np.bincount(y.reshape(-1), minlength=n_classes)], len(y)


def _task(run: Run) -> str:
    return str((run.results.dataset if run.results else {}).get("task") or "multi-class")


def _names(run: Run) -> list[str]:
    return [str(n) for n in (run.results.dataset if run.results else {}).get("label_names") or []]


def majority_baseline(unit: str, groups: list[Group]) -> Baseline | None:
    """The majority-class baseline of a dataset's test split, from the first run that
    stored its test labels' class counts; None when none did."""
    for run in (r for g in groups for r in g.runs):
        found = _test_counts(run)
        if not found or not found[1]:
            continue
        counts, n = found
        names = _names(run) or [str(i) for i in range(len(counts))]
        if _task(run) == MULTI_LABEL:
            acc = float(np.mean([max(c, n - c) / n for c in counts]))
            return Baseline(unit, acc, 0.5, "each label's majority value", n)
        top = int(np.argmax(counts))
        name = names[top] if top < len(names) else str(top)
        return Baseline(unit, counts[top] / n, 0.5, f"always {name!r}", n)
    return None
