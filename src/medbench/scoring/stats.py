"""Statistics for comparing models on MedMNIST test splits: numpy in, small result types out.

- Intervals: a percentile bootstrap over test images stratified by class
  (`bootstrap_interval`), and for a grid row of seeds an interval of the seed mean that
  resamples seeds and test images both (`seed_and_sampling_interval`).
- Paired tests on the same test images: DeLong's test for binary AUC (`delong_test`; a
  paired bootstrap of the official averaged AUC for multi-class and multi-label sets),
  McNemar's test for accuracy (`mcnemar_test`), a paired bootstrap for any official metric
  (`paired_bootstrap`), and Holm's correction over a family of tests (`holm`).
- Across datasets: average ranks, Friedman's test, the Nemenyi critical difference and a
  Wilcoxon-Holm post-hoc (`friedman_nemenyi`), drawn as a critical-difference diagram
  (`critical_difference_diagram`), after Demsar (2006).
- Power: the smallest AUC or accuracy difference a test split can resolve
  (`resolvable_difference`, `resolvable_accuracy_difference`).

Metrics are MedMNIST's official ACC and AUC (`medbench.scoring.metrics`), so every number here is
comparable with the ones a run reports. docs/statistics.md describes each method.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats as sps
from scipy.optimize import brentq

from medbench.errors import MedbenchError
from medbench.scoring import metrics
from medbench.utils.fsutil import atomic_path

MIN_DATASETS = 5  # Demsar (2006): Friedman's test needs "enough" data sets; fewer are refused
EXACT_MCNEMAR_BELOW = 25  # discordant pairs under which McNemar's test is the exact binomial


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise MedbenchError(f"need 0 < alpha < 1, got {alpha}")


# --------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """A point estimate with a (1 - alpha) interval and the method that made it."""

    estimate: float
    low: float
    high: float
    method: str
    sd: float | None = None  # the spread over seeds, where the estimate is a seed mean
    n_seeds: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_interval(
    labels: Any,
    probs: Any,
    task: str,
    metric: str,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """Percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13) of the official
    "acc" or "auc" over the test images.

    Single-label tasks resample within each class, so every resample keeps the split's
    class counts (and AUC stays defined); multi-label sets resample images plainly. The
    resamples come from `metrics.bootstrap_replicates`, the one implementation that
    `metrics.bootstrap_ci` uses too; resamples where AUC is undefined are dropped.
    """
    _check_alpha(alpha)
    point = (metrics.official_acc if metric == "acc" else metrics.official_auc)(labels, probs, task)
    replicates = metrics.bootstrap_replicates(labels, [probs], task, metric, n_boot, seed)[0]
    return percentile_interval(point, replicates, task, alpha)


def percentile_interval(
    estimate: float, replicates: Any, task: str, alpha: float = 0.05
) -> Interval:
    """The percentile interval of one run's bootstrap `replicates` (a row of
    `metrics.bootstrap_replicates`; undefined resamples dropped) around `estimate`."""
    low, high = metrics.percentile_bounds(np.asarray(replicates, dtype=np.float64), alpha)
    method = metrics.bootstrap_description(task, int(np.size(replicates)))
    return Interval(float(estimate), low, high, method)


def seed_and_sampling_interval(
    per_seed_values: Sequence[float],
    per_seed_boot_samples: Any,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """An interval of a grid row's seed mean that accounts for seed spread and test-set
    sampling: a two-level (hierarchical) bootstrap, Davison & Hinkley (1997) §3.8.

    Each of `n_boot` draws resamples the seeds with replacement, then one resample of the
    test images, and averages the chosen seeds' metric on that resample. Row s of
    `per_seed_boot_samples` (seeds x resamples) holds seed s's metric on the bootstrap
    resamples; column b must be the same resample of the test images for every seed, as
    `metrics.bootstrap_replicates(labels, [probs of each seed], task, metric)` returns
    them (one `seed`, one test split). Columns where
    a seed's metric is undefined (NaN) are left out. The estimate is the plain seed mean,
    `sd` the seeds' standard deviation; the interval is the draws' percentile interval.
    """
    _check_alpha(alpha)
    values = np.asarray(per_seed_values, dtype=np.float64)
    samples = np.asarray(per_seed_boot_samples, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or samples.shape[:1] != values.shape:
        raise MedbenchError(
            f"need one value and one row of bootstrap samples per seed, got {values.shape} "
            f"values and samples of shape {samples.shape}"
        )
    samples = samples[:, ~np.isnan(samples).any(axis=0)]
    if samples.shape[1] == 0:
        return Interval(float(values.mean()), math.nan, math.nan, "no defined resample")
    rng = np.random.default_rng(seed)
    chosen_seeds = rng.integers(0, values.size, size=(n_boot, values.size))
    chosen_resample = rng.integers(0, samples.shape[1], size=(n_boot, 1))
    draws = samples[chosen_seeds, chosen_resample].mean(axis=1)
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
    method = (
        f"two-level bootstrap: {values.size} seeds resampled, then the test images ({n_boot} draws)"
    )
    return Interval(float(values.mean()), float(low), float(high), method, sd, int(values.size))


# --------------------------------------------------------------------------- paired tests


@dataclass(frozen=True)
class PairedBootstrap:
    """The difference `a - b` of one official metric on the same images, its interval
    and two-sided p-value, and the correlation of the two models' resampled metric."""

    metric: str
    value_a: float
    value_b: float
    difference: float
    low: float
    high: float
    p: float
    se: float  # the standard deviation of the resampled differences
    correlation: float
    n_boot: int
    method: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    labels: Any,
    probs_a: Any,
    probs_b: Any,
    task: str,
    metric: str,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedBootstrap:
    """Paired bootstrap of the difference of an official metric ("acc" or "auc") between
    two models scored on the same test images (Efron & Tibshirani 1993, §16.4).

    Both models are scored on each resample of the images (stratified by class for
    single-label tasks). The interval is the percentile interval of the resampled
    differences d*; the two-sided p-value tests d = 0 with the differences shifted to the
    null, p = (1 + #{|d* - d| >= |d|}) / (1 + n_boot), so it is never 0.
    """
    _check_alpha(alpha)
    point = metrics.official_acc if metric == "acc" else metrics.official_auc
    value_a, value_b = point(labels, probs_a, task), point(labels, probs_b, task)
    reps = metrics.bootstrap_replicates(labels, [probs_a, probs_b], task, metric, n_boot, seed)
    reps = reps[:, ~np.isnan(reps).any(axis=0)]
    diff = value_a - value_b
    if reps.shape[1] == 0:
        nan = math.nan
        return PairedBootstrap(
            metric, value_a, value_b, diff, nan, nan, nan, nan, nan, 0, "no defined resample"
        )
    d = reps[0] - reps[1]
    low, high = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    extreme = np.sum(np.abs(d - diff) >= abs(diff) - 1e-12)
    p = float((1 + extreme) / (1 + d.size))
    correlation = _correlation(reps[0], reps[1])
    method = f"paired bootstrap of the official {metric.upper()} difference, {d.size} resamples"
    return PairedBootstrap(
        metric=metric,
        value_a=value_a,
        value_b=value_b,
        difference=diff,
        low=float(low),
        high=float(high),
        p=min(p, 1.0),
        se=float(d.std()),
        correlation=correlation,
        n_boot=int(d.size),
        method=method,
    )


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    if np.std(x) == 0 or np.std(y) == 0:
        return 1.0 if np.array_equal(x, y) else 0.0
    return float(np.corrcoef(x, y)[0, 1])


@dataclass(frozen=True)
class AucTest:
    """Two models' AUC on the same images, the z statistic and two-sided p-value of their
    difference, the correlation of the two AUC estimates, and the method used."""

    auc_a: float
    auc_b: float
    z: float
    p: float
    correlation: float
    se_difference: float
    method: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def delong_components(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for k score vectors of one binary truth.

    The fast algorithm of Sun & Xu (2014), "Fast implementation of DeLong's algorithm for
    comparing the areas under correlated receiver operating characteristic curves", IEEE
    Signal Processing Letters 21(11): midranks of the positives among themselves (Tx), of
    the negatives among themselves (Ty) and of all together (Tz) give the structural
    components V10 = (Tz - Tx) / n and V01 = 1 - (Tz - Ty) / m of DeLong, DeLong &
    Clarke-Pearson (1988) in O(N log N); the covariance is S10 / m + S01 / n.
    `scores` is (k, N); returns (aucs (k,), covariance (k, k)).
    """
    truth = np.asarray(truth)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    positive = truth == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise MedbenchError(
            f"DeLong's test needs at least 2 positive and 2 negative images, got {m} and {n}"
        )
    x, y = scores[:, positive], scores[:, ~positive]
    tx, ty = sps.rankdata(x, axis=1), sps.rankdata(y, axis=1)
    tz = sps.rankdata(np.concatenate([x, y], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, covariance


def delong_test(
    labels: Any,
    probs_a: Any,
    probs_b: Any,
    task: str = "binary-class",
    n_boot: int = 2000,
    seed: int = 0,
) -> AucTest:
    """Paired test of two models' official AUC on the same test images.

    Binary: DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837-845, computed by
    Sun & Xu's (2014) fast algorithm (`delong_components`): z = (A - B) / sqrt(Var A +
    Var B - 2 Cov(A, B)), two-sided normal p-value. Multi-class (the one-vs-rest AUC
    averaged over classes, as the official metric does) and multi-label (averaged over
    labels): a paired bootstrap of that averaged AUC's difference (`paired_bootstrap`),
    with z = difference / bootstrap SE; the `method` field says which was used.
    """
    labels_a, scores_a = metrics._as_inputs(labels, probs_a, task)
    _, scores_b = metrics._as_inputs(labels, probs_b, task)
    if task != "binary-class":
        boot = paired_bootstrap(labels_a, scores_a, scores_b, task, "auc", n_boot, seed)
        z = boot.difference / boot.se if boot.se > 0 else 0.0
        average = "labels" if task == metrics.MULTI_LABEL else "classes, one-vs-rest"
        method = f"{boot.method} (AUC averaged over {average})"
        return AucTest(boot.value_a, boot.value_b, z, boot.p, boot.correlation, boot.se, method)
    aucs, cov = delong_components(labels_a, np.stack([scores_a[:, -1], scores_b[:, -1]]))
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-15:  # the same ranking of the images: no difference to test
        z, p = 0.0, 1.0
    else:
        z = diff / math.sqrt(var)
        p = float(2 * sps.norm.sf(abs(z)))
    denom = math.sqrt(cov[0, 0] * cov[1, 1])
    correlation = float(cov[0, 1] / denom) if denom > 0 else 1.0
    method = "DeLong test (Sun & Xu 2014 fast algorithm)"
    return AucTest(
        float(aucs[0]), float(aucs[1]), z, p, correlation, math.sqrt(max(var, 0)), method
    )


@dataclass(frozen=True)
class McNemarTest:
    """McNemar's test of paired accuracy: `a_only` images only model a gets right,
    `b_only` images only b gets right; the statistic is the chi-square (None when exact)."""

    a_only: int
    b_only: int
    statistic: float | None
    p: float
    method: str

    @property
    def discordant(self) -> int:
        return self.a_only + self.b_only

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "discordant": self.discordant}


def mcnemar_test(
    correct_a: Any, correct_b: Any, exact_below: int = EXACT_MCNEMAR_BELOW
) -> McNemarTest:
    """McNemar's (1947) test on paired right/wrong outcomes of two models.

    With fewer than `exact_below` (25) discordant pairs, the exact conditional test: a
    two-sided binomial test of the discordant counts against 1/2 (scipy.stats.binomtest);
    otherwise the chi-square statistic with Edwards' continuity correction,
    (|b - c| - 1)^2 / (b + c) on 1 degree of freedom. No discordant pair: p = 1.
    """
    a = np.asarray(correct_a, dtype=bool).ravel()
    b = np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != b.shape:
        raise MedbenchError(f"paired outcomes differ in length: {a.size} and {b.size}")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = a_only + b_only
    if n == 0:
        return McNemarTest(0, 0, None, 1.0, "McNemar exact (no discordant pair)")
    if n < exact_below:
        p = sps.binomtest(a_only, n, 0.5).pvalue
        return McNemarTest(a_only, b_only, None, float(min(p, 1.0)), "McNemar exact binomial")
    statistic = (abs(a_only - b_only) - 1) ** 2 / n
    p = float(sps.chi2.sf(statistic, 1))
    return McNemarTest(
        a_only, b_only, float(statistic), p, "McNemar chi-square, continuity corrected"
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values: the i-th smallest p times (m - i + 1),
    made monotone non-decreasing in that order and capped at 1; NaN stays NaN and is not
    counted in m."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    defined = np.flatnonzero(~np.isnan(p))
    order = defined[np.argsort(p[defined], kind="stable")]
    m = order.size
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return [float(v) for v in out]


# --------------------------------------------------------------------------- across datasets


@dataclass
class RankingTest:
    """Models ranked over datasets (rank 1 = best), with Friedman's test and post-hocs.

    `testable` is False, with the `reason`, when the ranking cannot be tested (fewer than
    MIN_DATASETS datasets, or fewer than two models); the average ranks are still given.
    """

    models: list[str]
    datasets: list[str]
    average_ranks: list[float]
    testable: bool
    reason: str
    alpha: float
    friedman_statistic: float | None = None
    friedman_p: float | None = None
    q_alpha: float | None = None
    critical_difference: float | None = None
    nemenyi_p: list[list[float]] = field(default_factory=list)
    wilcoxon_p_holm: list[list[float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def groups(self, posthoc: str = "nemenyi") -> list[list[str]]:
        """Maximal runs of models, in rank order, no two of which differ significantly:
        by the Nemenyi critical difference ("nemenyi", Demsar's diagram) or by the
        Holm-corrected Wilcoxon signed-rank tests ("wilcoxon-holm")."""
        if not self.testable:
            return []
        if posthoc == "nemenyi":
            p = np.asarray(self.nemenyi_p)
        elif posthoc == "wilcoxon-holm":
            p = np.asarray(self.wilcoxon_p_holm)
        else:
            raise MedbenchError(f"unknown post-hoc {posthoc!r}; use 'nemenyi' or 'wilcoxon-holm'")
        order = list(np.argsort(self.average_ranks, kind="stable"))
        runs = _nonsignificant_runs(order, p >= self.alpha)
        return [[self.models[i] for i in run] for run in runs]


def _nonsignificant_runs(order: list[int], same: np.ndarray) -> list[list[int]]:
    """Maximal stretches of `order` whose members are pairwise not different (`same`)."""
    runs: list[list[int]] = []
    for start in range(len(order)):
        end = start
        while end + 1 < len(order) and all(same[order[end + 1], j] for j in order[start : end + 1]):
            end += 1
        run = order[start : end + 1]
        if len(run) > 1 and not any(set(run) <= set(r) for r in runs):
            runs.append(run)
    return runs


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """The Nemenyi test's critical value q_alpha for k models: the studentized range
    quantile (infinite degrees of freedom) divided by sqrt(2), as in Demsar (2006) table 5."""
    return float(sps.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def critical_difference(k: int, n_datasets: int, alpha: float = 0.05) -> float:
    """Demsar's (2006) critical difference of average ranks, q_alpha sqrt(k (k+1) / (6 N))."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n_datasets))


def friedman_nemenyi(
    scores: Any,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    alpha: float = 0.05,
    min_datasets: int = MIN_DATASETS,
) -> RankingTest:
    """Average ranks, Friedman's test and post-hocs for a (datasets x models) score
    matrix, higher = better, after Demsar (2006), "Statistical comparisons of classifiers
    over multiple data sets", JMLR 7:1-30.

    Ranks are taken within each dataset (1 = best, ties share the average rank).
    Friedman's chi-square is scipy.stats.friedmanchisquare (three or more models; two are
    compared by the Wilcoxon test alone). Post-hocs: the Nemenyi test (pairwise p-values
    from the studentized range, as scikit-posthocs' posthoc_nemenyi_friedman computes
    them, and the critical difference), and Wilcoxon signed-rank tests of every pair over
    the datasets with Holm's correction (Benavoli et al. 2016, JMLR 17). With fewer than
    `min_datasets` datasets nothing is tested: the result says why.
    """
    _check_alpha(alpha)
    matrix, models, datasets = _score_matrix(scores, models, datasets)
    n, k = matrix.shape
    ranks = sps.rankdata(-matrix, axis=1).mean(axis=0) if n else np.full(k, math.nan)
    result = RankingTest(models, datasets, [float(r) for r in ranks], False, "", alpha)
    if k < 2:
        result.reason = "a ranking needs at least two models"
        return result
    if n < min_datasets:
        result.reason = (
            f"{n} dataset{'s' if n != 1 else ''}: ranks over fewer than {min_datasets} datasets "
            "cannot be tested (Friedman's test has too little power and its chi-square "
            "approximation does not hold; Demsar 2006)"
        )
        return result
    result.testable = True
    if k >= 3:
        result.friedman_statistic, result.friedman_p = (
            float(v) for v in sps.friedmanchisquare(*matrix.T)
        )
    result.q_alpha = nemenyi_q(k, alpha)
    result.critical_difference = critical_difference(k, n, alpha)
    result.nemenyi_p = _nemenyi_p(ranks, n)
    result.wilcoxon_p_holm = _wilcoxon_holm(matrix)
    return result


def _score_matrix(
    scores: Any, models: Sequence[str] | None, datasets: Sequence[str] | None
) -> tuple[np.ndarray, list[str], list[str]]:
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim != 2 or not np.all(np.isfinite(matrix)):
        raise MedbenchError("scores must be a finite (datasets x models) matrix")
    n, k = matrix.shape
    models = list(models) if models is not None else [f"model {j}" for j in range(k)]
    datasets = list(datasets) if datasets is not None else [f"dataset {i}" for i in range(n)]
    if len(models) != k or len(datasets) != n:
        raise MedbenchError(f"need {k} model and {n} dataset names for a {n}x{k} score matrix")
    return matrix, models, datasets


def _nemenyi_p(ranks: np.ndarray, n: int) -> list[list[float]]:
    k = len(ranks)
    q = np.abs(ranks[:, None] - ranks[None, :]) / math.sqrt(k * (k + 1) / (6 * n))
    p = sps.studentized_range.sf(q * math.sqrt(2), k, np.inf)
    np.fill_diagonal(p, 1.0)
    p_values: list[list[float]] = np.minimum(p, 1.0).tolist()
    return p_values


def _wilcoxon_holm(matrix: np.ndarray) -> list[list[float]]:
    k = matrix.shape[1]
    pairs = list(itertools.combinations(range(k), 2))
    raw = []
    for i, j in pairs:
        if np.allclose(matrix[:, i], matrix[:, j]):
            raw.append(1.0)  # no difference on any dataset
        else:
            raw.append(float(sps.wilcoxon(matrix[:, i], matrix[:, j]).pvalue))
    out = np.ones((k, k))
    for (i, j), p in zip(pairs, holm(raw), strict=True):
        out[i, j] = out[j, i] = p
    return out.tolist()


def critical_difference_diagram(
    result: RankingTest, path: str | Path, posthoc: str = "nemenyi", title: str | None = None
) -> Path:
    """Draw `result` as a critical-difference diagram (Demsar 2006, fig. 1) into a PNG.

    Models sit on the average-rank axis (1 = best, on the left), the better half labelled
    on the left and the rest on the right; a thick bar joins each group of models not
    significantly different by `posthoc` ("nemenyi" or "wilcoxon-holm"), and the Nemenyi
    critical difference is drawn to scale above the axis. Refuses an untestable result.
    """
    if not result.testable:
        raise MedbenchError(f"no critical-difference diagram: {result.reason}")
    k = len(result.models)
    order = [int(i) for i in np.argsort(result.average_ranks, kind="stable")]
    groups = result.groups(posthoc)
    labels = [f"{result.models[i]} ({result.average_ranks[i]:.2f})" for i in order]
    margin = 0.08 * max(len(t) for t in labels) + 0.4  # rank units beside the axis for text
    first_label = -0.45 - 0.18 * len(groups)
    lines = (k + 1) // 2
    bottom = first_label - 0.3 * lines
    width = max(5.0, 1.1 * (k - 1 + 2 * margin))
    fig = Figure(figsize=(width, 0.9 + 0.55 * (1.0 - bottom)), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(1 - margin, k + margin)
    ax.set_ylim(bottom, 1.0)
    cd = result.critical_difference if posthoc == "nemenyi" else None
    _draw_rank_axis(ax, k, cd)
    for row, (i, text) in enumerate(zip(order, labels, strict=True)):
        left = row < lines
        y = first_label - 0.3 * (row if left else k - 1 - row)
        _draw_model_label(ax, text, result.average_ranks[i], y, k, left)
    for g, group in enumerate(groups):
        ranks = [result.average_ranks[result.models.index(name)] for name in group]
        y = -0.25 - 0.18 * g
        ax.plot([min(ranks) - 0.03, max(ranks) + 0.03], [y, y], color="black", lw=3.5)
    which = "Nemenyi" if posthoc == "nemenyi" else "Wilcoxon-Holm"
    text = title or (
        f"Average rank over {len(result.datasets)} datasets (1 = best); bars join models "
        f"not significantly different ({which}, alpha {result.alpha:g})"
    )
    ax.set_title(textwrap.fill(text, width=int(12 * width)), fontsize=9)
    FigureCanvasAgg(fig)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", pad_inches=0.1)
    return path


def _draw_rank_axis(ax: Any, k: int, cd: float | None) -> None:
    ax.axis("off")
    ax.plot([1, k], [0, 0], color="black", lw=1)
    for r in range(1, k + 1):
        ax.plot([r, r], [0, 0.08], color="black", lw=1)
        ax.text(r, 0.14, str(r), ha="center", va="bottom", fontsize=9)
    if cd is not None:
        ax.plot([1, 1 + cd], [0.6, 0.6], color="black", lw=1.5)
        for x in (1, 1 + cd):
            ax.plot([x, x], [0.55, 0.65], color="black", lw=1.5)
        ax.text(1 + cd / 2, 0.7, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)


def _draw_model_label(ax: Any, text: str, rank: float, y: float, k: int, left: bool) -> None:
    x_end = 0.9 if left else k + 0.1
    ax.plot([rank, rank, x_end], [0, y, y], color="0.3", lw=0.8)
    x_text = x_end - 0.05 if left else x_end + 0.05
    ax.text(x_text, y, text, ha="right" if left else "left", va="center", fontsize=9)


# --------------------------------------------------------------------------- power


def hanley_mcneil_variance(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil's (1982, Radiology 143:29-36) variance of an AUC estimate:
    [A(1-A) + (n_pos - 1)(Q1 - A^2) + (n_neg - 1)(Q2 - A^2)] / (n_pos n_neg), with
    Q1 = A / (2 - A) and Q2 = 2A^2 / (1 + A)."""
    if n_pos < 1 or n_neg < 1 or not 0 <= auc <= 1:
        raise MedbenchError(
            f"need n_pos, n_neg >= 1 and 0 <= AUC <= 1, got {n_pos}, {n_neg}, {auc}"
        )
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    return (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (
        n_pos * n_neg
    )


def resolvable_difference(
    n_pos: int | Sequence[int],
    n_neg: int | Sequence[int],
    base_auc: float,
    correlation: float,
    power: float = 0.8,
    alpha: float = 0.05,
) -> float:
    """The smallest AUC difference a paired two-sided test at level `alpha` detects with
    probability `power` on a test split of `n_pos` positive and `n_neg` negative images.

    Each model's AUC variance V is Hanley & McNeil's (1982) at `base_auc`; the paired
    difference of two models whose AUC estimates correlate by r has variance
    2V(1 - r) (Hanley & McNeil 1983, Radiology 148:839-843), so the difference is
    delta = (z_{1-alpha/2} + z_{power}) sqrt(2V(1 - r)), both variances taken at the base
    AUC. For an AUC averaged over classes (multi-class one-vs-rest, multi-label), give one
    count per class: V is then the mean of the per-class variances, an upper bound on the
    variance of the average (the classes counted as perfectly correlated).
    """
    _check_alpha(alpha)
    if not 0 < power < 1 or not -1 <= correlation <= 1:
        raise MedbenchError(
            f"need 0 < power < 1 and -1 <= correlation <= 1, got {power}, {correlation}"
        )
    pos, neg = np.atleast_1d(n_pos), np.atleast_1d(n_neg)
    if pos.shape != neg.shape:
        raise MedbenchError("need one negative count per positive count")
    variance = float(
        np.mean([hanley_mcneil_variance(base_auc, p, q) for p, q in zip(pos, neg, strict=True)])
    )
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    return float(z * math.sqrt(max(0.0, 2 * variance * (1 - correlation))))


def resolvable_accuracy_difference(
    n: float,
    base_acc: float,
    discordance: float | None = None,
    power: float = 0.8,
    alpha: float = 0.05,
) -> float:
    """The smallest paired accuracy difference McNemar's test at level `alpha` detects
    with probability `power` on `n` test images.

    Solves Connor's (1987, Biometrics 43:207-211) sample size for McNemar's test,
    n = [z_{1-alpha/2} sqrt(psi) + z_{power} sqrt(psi - delta^2)]^2 / delta^2, for delta,
    where psi is the share of discordant images (one model right, the other wrong).
    `discordance` None takes psi = 2 acc (1 - acc), two models with independent errors
    at `base_acc`. Infinite when no achievable difference (delta <= min(psi, 1 - base_acc))
    can be resolved.
    """
    _check_alpha(alpha)
    if not 0 < power < 1 or not 0 <= base_acc <= 1 or n <= 0:
        raise MedbenchError(
            f"need 0 < power < 1, 0 <= base_acc <= 1, n > 0; got {power}, {base_acc}, {n}"
        )
    psi = 2 * base_acc * (1 - base_acc) if discordance is None else float(discordance)
    if not 0 < psi <= 1:
        return math.inf
    z_a, z_b = sps.norm.ppf(1 - alpha / 2), sps.norm.ppf(power)

    def gap(delta: float) -> float:
        return float(
            math.sqrt(n) * delta - z_a * math.sqrt(psi) - z_b * math.sqrt(max(psi - delta**2, 0))
        )

    top = min(psi, 1 - base_acc)
    if top <= 0 or gap(top) < 0:
        return math.inf
    return float(brentq(gap, 1e-12, top, xtol=1e-12))
