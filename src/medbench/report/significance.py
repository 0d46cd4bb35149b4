"""Intervals and paired tests for the report, from each finished run's predictions.npz.

- every finished run: its test ACC and AUC with a 95% percentile bootstrap interval over
  the test images, resampled within each class (`medbench.scoring.stats.bootstrap_interval`);
- every grid row (a model over seeds): the seed mean with an interval that accounts for
  both the seeds and test-set sampling (a two-level bootstrap,
  `medbench.scoring.stats.seed_and_sampling_interval`);
- every pair of models on one dataset: tested on the same test images, seed-matched
  (`medbench.analysis.comparison.compare_pair`: DeLong / McNemar, paired bootstraps where those do
  not apply), with Holm's correction over every comparison in the report;
- each dataset's resolvable differences at 80% power (`medbench.analysis.comparison.resolvable`);
- across datasets: average ranks, Friedman's test and post-hocs
  (`medbench.scoring.stats.friedman_nemenyi`) when a grid has at least five datasets.

Nothing is re-trained or re-run; the statistics themselves live in `medbench.scoring.stats`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medbench.analysis.comparison import (
    ModelGroup,
    PairComparison,
    RunPredictions,
    compare_pair,
    correct_pairs,
    json_safe,
    load_run,
    resolvable,
)
from medbench.errors import MedbenchError
from medbench.report.collect import Group
from medbench.report.compare import Cohort
from medbench.scoring import metrics, stats

if TYPE_CHECKING:
    from medbench.report.details import Table

ALPHA = 0.05
POWER = 0.8
N_BOOT = 1000
METRICS = ("acc", "auc")
RANKING_METRIC = "test accuracy"


@dataclass
class DatasetTests:
    """The paired comparisons of one cohort (one dataset, one length rule)."""

    name: str  # the cohort's name in the findings
    task: str
    n_test: int
    pairs: list[PairComparison]
    resolvable: dict[str, Any] | None
    left_out: list[str] = field(default_factory=list)  # runs without usable predictions

    def pair(self, a: str, b: str) -> PairComparison | None:
        for p in self.pairs:
            if {p.model_a, p.model_b} == {a, b}:
                return p
        return None


@dataclass
class Significance:
    """Everything the report says about uncertainty, keyed so the renderer and the
    findings can look it up: runs by run folder, rows by (dataset unit, model label)."""

    alpha: float
    n_boot: int
    runs: dict[str, dict[str, stats.Interval]] = field(default_factory=dict)
    rows: dict[tuple[str, str], dict[str, stats.Interval]] = field(default_factory=dict)
    datasets: list[DatasetTests] = field(default_factory=list)
    ranking: stats.RankingTest | None = None
    ranking_reason: str = ""

    @property
    def n_comparisons(self) -> int:
        return sum(len(d.pairs) for d in self.datasets)

    def dataset(self, name: str) -> DatasetTests | None:
        return next((d for d in self.datasets if d.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return json_safe(
            {
                "alpha": self.alpha,
                "n_boot": self.n_boot,
                "methods": methods(self),
                "runs": {k: _intervals_json(v) for k, v in self.runs.items()},
                "rows": [
                    {"dataset": name, "model": label, **_intervals_json(v)}
                    for (name, label), v in self.rows.items()
                ],
                "comparisons": [_dataset_json(d) for d in self.datasets],
                "ranking": None if self.ranking is None else self.ranking.to_json(),
                "ranking_reason": self.ranking_reason,
            }
        )


def _intervals_json(intervals: dict[str, stats.Interval]) -> dict[str, Any]:
    return {f"test_{m}": i.to_json() for m, i in intervals.items()}


def _dataset_json(d: DatasetTests) -> dict[str, Any]:
    return {
        "dataset": d.name,
        "task": d.task,
        "n_test": d.n_test,
        "resolvable": d.resolvable,
        "left_out": d.left_out,
        "pairs": [p.to_json() for p in d.pairs],
    }


def methods(sig: Significance) -> dict[str, str]:
    """How each number was made, in words the report prints."""
    n = sig.n_comparisons
    return {
        "run_interval": f"95% percentile bootstrap over the test images, resampled within each "
        f"class (multi-label: plainly), {sig.n_boot} resamples",
        "row_interval": "95% two-level bootstrap of the seed mean: seeds resampled, then the "
        f"test images ({sig.n_boot} draws), so it counts seed spread and test-set sampling",
        "pairing": "seed-matched: each model's test probabilities averaged over the seeds both "
        "models have, compared image by image",
        "auc": "DeLong's test (binary); a paired bootstrap of the official averaged AUC "
        "(multi-class, multi-label)",
        "acc": "McNemar's test (exact under 25 discordant images); a paired bootstrap for "
        "multi-label accuracy",
        "correction": f"Holm over the {n} comparison{'s' if n != 1 else ''} of this report, "
        "separately for AUC and accuracy",
        "ranking": f"average ranks of {RANKING_METRIC} over datasets; Friedman's test with "
        "Nemenyi and Wilcoxon-Holm post-hocs (Demsar 2006) from "
        f"{stats.MIN_DATASETS} datasets",
    }


# --------------------------------------------------------------------------- loading


def _load_group(
    g: Group, labels: np.ndarray | None, left_out: list[str]
) -> tuple[ModelGroup, np.ndarray | None]:
    """The group's runs with predictions, by seed; runs without readable predictions, or
    scored on other test images than the cohort's first, are listed in `left_out`."""
    runs: dict[int, RunPredictions] = {}
    for r in g.runs:
        if r.run_dir is None:
            left_out.append(f"{g.label} seed {r['seed']}: no run folder recorded")
            continue
        try:
            p = load_run(r.run_dir)
        except (MedbenchError, OSError, ValueError, KeyError) as exc:
            left_out.append(f"{g.label} seed {r['seed']}: {exc}")
            continue
        if labels is None:
            labels = p.labels
        if not np.array_equal(p.labels, labels):
            left_out.append(f"{g.label} seed {r['seed']}: scored on other test images")
            continue
        runs.setdefault(p.seed, p)
    return ModelGroup(g.label, runs), labels


# --------------------------------------------------------------------------- intervals


def _intervals(
    sig: Significance, group: ModelGroup, labels: np.ndarray, task: str
) -> dict[str, stats.Interval]:
    """Each run's interval and the group's seed-and-sampling interval, from one set of
    bootstrap resamples shared by the group's seeds (row s is seed s's own bootstrap)."""
    runs = list(group.runs.values())
    rows: dict[str, stats.Interval] = {}
    for m in METRICS:
        point = metrics.official_acc if m == "acc" else metrics.official_auc
        values = [point(labels, r.probs, task) for r in runs]
        reps = metrics.bootstrap_replicates(labels, [r.probs for r in runs], task, m, sig.n_boot, 0)
        for r, value, row in zip(runs, values, reps, strict=True):
            sig.runs.setdefault(str(r.run_dir), {})[m] = stats.percentile_interval(
                value, row, task, sig.alpha
            )
        rows[m] = stats.seed_and_sampling_interval(values, reps, sig.n_boot, 0, sig.alpha)
    return rows


# --------------------------------------------------------------------------- the report's


def _cohort_tests(sig: Significance, name: str, cohort: Cohort) -> DatasetTests | None:
    left_out: list[str] = []
    labels = None
    groups = []
    for g in cohort.groups:
        model_group, labels = _load_group(g, labels, left_out)
        if model_group.runs:
            groups.append(model_group)
    if not groups or labels is None:
        return None
    task = next(iter(groups[0].runs.values())).task
    for mg in groups:
        sig.rows[(cohort.unit, mg.label)] = _intervals(sig, mg, labels, task)
    pairs = (
        [compare_pair(a, b, task, 2 * sig.n_boot, 0) for a, b in itertools.combinations(groups, 2)]
        if cohort.comparable
        else []
    )
    n_classes = next(iter(groups[0].runs.values())).probs.shape[1]
    resolvable_ = resolvable(pairs, labels, task, n_classes, sig.alpha, POWER) if pairs else None
    return DatasetTests(name, task, len(labels), pairs, resolvable_, left_out)


def _ranking(sig: Significance, cohorts: list[tuple[str, Cohort]]) -> None:
    """Ranks of each model's mean test accuracy over datasets (one cohort per dataset,
    comparable ones only), for the models run on every one of them."""
    per_unit: dict[str, Cohort] = {}
    for _, c in cohorts:
        if c.comparable:
            per_unit.setdefault(c.unit, c)
    if len(per_unit) < 1:
        sig.ranking_reason = "no dataset has rows trained to comparable lengths"
        return
    labels = [{g.label for g in c.groups} for c in per_unit.values()]
    common = sorted(set.intersection(*labels))
    if len(common) < 2:
        sig.ranking_reason = "fewer than two models were run on every dataset"
        return
    scores = [
        [next(g for g in c.groups if g.label == m).stat("test_acc").mean for m in common]
        for c in per_unit.values()
    ]
    sig.ranking = stats.friedman_nemenyi(scores, common, list(per_unit), sig.alpha)
    sig.ranking_reason = sig.ranking.reason


def compute_significance(
    cohorts: list[tuple[str, Cohort]], alpha: float = ALPHA, n_boot: int = N_BOOT
) -> Significance:
    """Intervals, paired tests (Holm-corrected over all of them) and the ranking across
    datasets for the report's cohorts, given as (name, cohort) pairs."""
    sig = Significance(alpha, n_boot)
    for name, cohort in cohorts:
        d = _cohort_tests(sig, name, cohort)
        if d is not None:
            sig.datasets.append(d)
    correct_pairs([p for d in sig.datasets for p in d.pairs], alpha)
    _ranking(sig, cohorts)
    return sig


# --------------------------------------------------------------------------- tables

PAIR_HEAD = (
    "Model A",
    "Model B",
    "Seeds paired",
    "AUC A / B",
    "ΔAUC",
    "AUC p (Holm)",
    "Acc A / B",
    "ΔAcc",
    "Acc p (Holm)",
    "Verdict",
)
RANK_HEAD = ("Model", "Average rank", "Datasets")


def _p(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3g}"


def _verdict(p: PairComparison) -> str:
    parts = [f"{p.auc_better} higher AUC"] if p.auc_better else []
    parts += [f"{p.acc_better} higher accuracy"] if p.acc_better else []
    return "; ".join(parts) or "indistinguishable"


def _pair_row(p: PairComparison) -> tuple[str, ...]:
    return (
        p.model_a,
        p.model_b,
        ", ".join(map(str, p.seeds)) or "none (all seeds averaged)",
        f"{p.auc_a:.3f} / {p.auc_b:.3f}",
        f"{p.auc_diff:+.3f}",
        f"{_p(p.delong_p)} ({_p(p.delong_p_holm)})",
        f"{100 * p.acc_a:.1f}% / {100 * p.acc_b:.1f}%",
        f"{100 * p.acc_diff:+.1f} pts",
        f"{_p(p.mcnemar_p)} ({_p(p.mcnemar_p_holm)})",
        _verdict(p),
    )


def resolvable_sentence(d: DatasetTests) -> str:
    """ "differences under X AUC and Y accuracy points cannot be resolved on its N test
    images (...)", or "" where the resolvable AUC difference is undefined."""
    r = d.resolvable
    if not r or r.get("auc") is None or math.isnan(r["auc"]):
        return ""
    acc = r.get("acc")
    acc_text = "" if acc is None or math.isnan(acc) else f" and {100 * acc:.1f} accuracy points"
    return (
        f"differences under {r['auc']:.3f} AUC{acc_text} cannot be resolved on its {d.n_test} "
        f"test images ({100 * r['power']:.0f}% power, alpha {r['alpha']:g}; base AUC "
        f"{r['base_auc']:.3f} and paired-AUC correlation {r['auc_correlation']:.2f} estimated "
        "from these runs)"
    )


def _capital(sentence: str) -> str:
    return f"{sentence[0].upper()}{sentence[1:]}." if sentence else ""


def comparison_tables(sig: Significance, table_cls: type[Table]) -> list[Table]:
    """One table per cohort of its pairs, and the ranking across datasets where there is
    one; `table_cls` is the report's Table (title, head, rows, note)."""
    m = methods(sig)
    note = (
        f"p before correction, Holm-corrected in brackets ({m['correction']}); a model is "
        f"called better only where the corrected p < {sig.alpha:g}. AUC: {m['auc']}. "
        f"Accuracy: {m['acc']}. Pairing: {m['pairing']}."
    )
    tables: list[Table] = []
    for d in sig.datasets:
        if not d.pairs:
            continue
        left = f" Left out: {'; '.join(d.left_out)}." if d.left_out else ""
        how = note if not tables else "Tests and correction as in the first comparison table."
        tables.append(
            table_cls(
                f"Paired comparisons: {d.name}",
                PAIR_HEAD,
                [_pair_row(p) for p in d.pairs],
                f"{_capital(resolvable_sentence(d))} {how}{left}".strip(),
            )
        )
    r = sig.ranking
    if r is not None and r.testable:
        order = sorted(zip(r.average_ranks, r.models, strict=True))
        rows: list[tuple[str, ...]] = [
            (model, f"{rank:.2f}", str(len(r.datasets))) for rank, model in order
        ]
        tables.append(table_cls("Ranking across datasets", RANK_HEAD, rows, m["ranking"] + "."))
    return tables
