"""The tables behind the findings: every run a finding counts is a row here, so a finding
can stay one or two lines and still say where the full list is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from medbench.report.collect import Run
from medbench.report.compare import Baseline
from medbench.scoring.metrics import MissedClass, missed_classes

GAP_POINTS = 5.0  # a val-vs-test accuracy gap above this many points is reported


@dataclass
class Table:
    """A titled table of the report (rows of strings), with a note under it."""

    title: str
    head: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    note: str = ""


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def finished(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.finished]


def unfinished(runs: list[Run]) -> list[Run]:
    return [r for r in runs if not r.finished]


def gap(r: Run) -> float | None:
    if r["val_acc"] is None or r["test_acc"] is None:
        return None
    return abs(r["val_acc"] - r["test_acc"])


def gaps(runs: list[Run]) -> list[tuple[Run, float]]:
    """(run, val-vs-test accuracy gap) of the finished runs that recorded both accuracies."""
    return [(r, g) for r in finished(runs) if (g := gap(r)) is not None]


def _big_gaps(runs: list[Run]) -> list[tuple[Run, float]]:
    """(run, gap) of the finished runs whose gap exceeds GAP_POINTS, largest first."""
    found = [(r, g) for r, g in gaps(runs) if g * 100 > GAP_POINTS]
    return sorted(found, key=lambda pair: -pair[1])


def big_gaps(runs: list[Run]) -> list[Run]:
    """Finished runs whose val and test accuracy differ by more than GAP_POINTS, largest first."""
    return [r for r, _ in _big_gaps(runs)]


def collapsed(runs: list[Run]) -> list[Run]:
    return [r for r in finished(runs) if r["collapsed"]]


def run_missed(r: Run) -> list[MissedClass]:
    """The test classes a healthy (not collapsed) run misses; a collapsed run misses
    classes because it collapsed, which the collapse table says."""
    test = r.results.test if r.results else {}
    if r["collapsed"] or not test.get("true_counts") or not test.get("prediction_counts"):
        return []
    return missed_classes(test)


def below_baseline(
    runs: list[Run], baselines: dict[str, Baseline], unit_of: Callable[[Run], str]
) -> list[Run]:
    out = []
    for r in finished(runs):
        b = baselines.get(unit_of(r))
        if b is not None and not b.beaten_by(r["test_acc"]):
            out.append(r)
    return out


def _id(r: Run) -> tuple[str, str, str]:
    return (str(r["dataset"]), str(r["model"]), str(r["seed"]))


def collapse_table(runs: list[Run]) -> Table:
    rows: list[tuple[str, ...]] = [
        _id(r) + (flag,) for r in collapsed(runs) for flag in (r["flags"] or ["flagged"])
    ]
    return Table(
        "Collapsed runs",
        ("Dataset", "Model", "Seed", "Collapse guard flag"),
        rows,
        "A collapse: predictions piled on one class, or spread over a third or fewer of the "
        "classes the split holds. Do not use these runs as trained.",
    )


def gap_table(runs: list[Run]) -> Table:
    rows: list[tuple[str, ...]] = [
        _id(r) + (pct(r["val_acc"]), pct(r["test_acc"]), f"{100 * g:.1f}")
        for r, g in _big_gaps(runs)
    ]
    return Table(
        "Validation/test gaps",
        ("Dataset", "Model", "Seed", "Val acc", "Test acc", "Gap (points)"),
        rows,
        f"Runs whose validation accuracy misses test accuracy by more than {GAP_POINTS:.0f} "
        "points: validation is then a poor guide to choosing them.",
    )


def missed_table(runs: list[Run]) -> Table:
    rows: list[tuple[str, ...]] = [
        _id(r) + (m.name, str(m.support), f"{m.share:.1%}", pct(m.recall, 0), str(m.predicted))
        for r in finished(runs)
        for m in run_missed(r)
    ]
    return Table(
        "Missed classes (per-class recall)",
        ("Dataset", "Model", "Seed", "Class", "Test images", "Share", "Recall", "Predicted"),
        rows,
        "Classes with at least 5 test images that a run not collapsed finds in at most 10% of "
        "cases. Not a collapse: the model spreads its predictions but misses these classes.",
    )


def unfinished_table(runs: list[Run]) -> Table:
    rows: list[tuple[str, ...]] = [_id(r) + (str(r["status"]), r.reason) for r in unfinished(runs)]
    return Table(
        "Cells not finished",
        ("Dataset", "Model", "Seed", "Status", "Reason"),
        rows,
        "These cells have no numbers and are left out of every other table.",
    )


def baseline_table(
    runs: list[Run], baselines: dict[str, Baseline], unit_of: Callable[[Run], str]
) -> Table:
    rows: list[tuple[str, ...]] = []
    for r in below_baseline(runs, baselines, unit_of):
        b = baselines[unit_of(r)]
        rows.append(_id(r) + (pct(r["test_acc"]), f"{pct(b.acc)} ({b.predicts})"))
    return Table(
        "Runs no better than the majority-class baseline",
        ("Dataset", "Model", "Seed", "Test acc", "Baseline acc"),
        rows,
        "The baseline always predicts the test split's most common class (ACC = its share, "
        "AUC = 0.5); a run at or below it has learned nothing accuracy can show.",
    )
