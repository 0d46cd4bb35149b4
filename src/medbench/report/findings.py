"""Key findings and recommendations, computed from the study's numbers.

Every sentence is built from the results it describes (names, values, tests), so two
different result sets give different findings. A finding is one or two lines; the runs it
counts are rows of a table (`Findings.tables`). Rows are ranked only within a cohort whose
trained lengths agree (medbench.report.compare); "best" and "most efficient" skip models
that collapsed. Whether the top two models of a cohort differ is decided by the paired
tests on their test images (medbench.report.significance: McNemar for accuracy, DeLong or a
paired bootstrap for AUC, Holm-corrected over every comparison in the report); a model is
called better only where the corrected test says so. Runs without saved predictions fall
back to Welch's two-sided t-test over seeds (needs >= 2 seeds each).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from scipy.stats import ttest_ind

from medbench.report import details
from medbench.report.collect import Group, Run, Stat
from medbench.report.compare import Baseline, Cohort, cohorts, majority_baseline
from medbench.report.data_checks import leakage_findings
from medbench.report.details import Table, pct
from medbench.report.published import baseline, load_published, reference_study_rows
from medbench.report.significance import (
    DatasetTests,
    Significance,
    comparison_tables,
    compute_significance,
    resolvable_sentence,
)
from medbench.scoring.metrics import COLLAPSE_ADVICE, MISSED_CLASS_ADVICE
from medbench.scoring.stats import holm

ALPHA = 0.05
METHOD = "Welch's t-test (two-sided, alpha 0.05) over seeds"


@dataclass
class Comparison:
    """The top two healthy models of one cohort and whether seeds separate them."""

    dataset: str
    winner: Group
    runner_up: Group | None
    difference: float | None  # winner minus runner-up mean test accuracy (fraction)
    p_value: float | None
    significant: bool | None  # None: not testable (fewer than two seeds)
    overlap: bool | None  # mean +- std intervals overlap
    method: str
    paired: bool = False  # p_value is the Holm-corrected paired test (else Welch over seeds)
    n_test: int | None = None
    auc_difference: float | None = None  # winner minus runner-up, seed-averaged probabilities
    auc_p: float | None = None  # Holm-corrected
    auc_method: str = ""


@dataclass
class Findings:
    findings: list[str] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    best_overall: str | None = None
    most_efficient: str | None = None
    winners: dict[str, str] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    cohorts: list[Cohort] = field(default_factory=list)
    baselines: dict[str, Baseline] = field(default_factory=dict)
    ranking: list[tuple[str, float, int]] = field(default_factory=list)  # label, acc, datasets
    tables: list[Table] = field(default_factory=list)
    significance: Significance | None = None


def points(d: float) -> str:
    return f"{100 * d:+.1f} points"


def mean_std(stat: Stat, scale: float = 100.0, digits: int = 1, unit: str = "%") -> str:
    if stat.mean is None:
        return "n/a"
    text = f"{scale * stat.mean:.{digits}f}"
    if stat.std is not None:
        text += f" ± {scale * stat.std:.{digits}f}"
    return f"{text}{unit} (n={stat.n})"


def dataset_unit(group: Group | Run) -> str:
    size = int(group.size if isinstance(group, Group) else (group["size"] or 28))
    name = group.dataset if isinstance(group, Group) else group["dataset"]
    return name if size == 28 else f"{name}@{size}px"


def compare_top_two(
    a: Group, b: Group | None, name: str | None = None, tests: DatasetTests | None = None
) -> Comparison:
    """Whether the two best groups of a cohort differ: by their Holm-corrected paired
    tests in `tests` (the cohort's comparisons) where it holds the pair, else by Welch's
    t-test on the seeds' test accuracies."""
    unit = name or dataset_unit(a)
    if b is None:
        return Comparison(unit, a, None, None, None, None, None, METHOD)
    sa, sb = a.stat("test_acc"), b.stat("test_acc")
    pair = tests.pair(a.label, b.label) if tests is not None else None
    if tests is None or pair is None or math.isnan(pair.mcnemar_p_holm):
        p = _welch_p_value(sa, sb)
        significant = None if p is None else p < ALPHA
        difference = sa.required_mean() - sb.required_mean()
        return Comparison(unit, a, b, difference, p, significant, _overlap(sa, sb), METHOD)
    sign = 1.0 if pair.model_a == a.label else -1.0
    p, auc_p = pair.mcnemar_p_holm, pair.delong_p_holm
    return Comparison(
        unit,
        a,
        b,
        sa.required_mean() - sb.required_mean(),
        p,
        p < ALPHA,
        _overlap(sa, sb),
        pair.mcnemar_method,
        paired=True,
        n_test=tests.n_test,
        auc_difference=sign * pair.auc_diff,
        auc_p=None if math.isnan(auc_p) else auc_p,
        auc_method="DeLong" if pair.delong_method.startswith("DeLong") else "paired bootstrap",
    )


def _overlap(a: Stat, b: Stat) -> bool | None:
    """Whether a's mean - std reaches b's mean + std; None without both spreads."""
    if a.std is None or b.std is None or a.mean is None or b.mean is None:
        return None  # (Stat.of gives a spread only with a mean)
    return (a.mean - a.std) <= (b.mean + b.std)


def _params(g: Group) -> str:
    n = g.stat("n_params").mean
    return "n/a" if n is None else f"{n / 1e6:.2f} M"


def _cohort_name(c: Cohort, many: bool) -> str:
    return f"{c.unit} ({c.label})" if many else c.unit


def compute_findings(
    groups: list[Group], runs: list[Run], ensembles: list[dict[str, Any]] | None = None
) -> Findings:
    """Findings and recommendations for the finished runs in `groups` (all runs in `runs`,
    unfinished ones included, for the notes on cells left out), and for the `ensembles`
    built over them (results of `medbench.workflows.ensemble.build_ensemble`)."""
    f = Findings()
    f.findings += _present(_unfinished(runs))
    f.tables.append(details.unfinished_table(runs))
    if not groups:
        f.findings.insert(0, "No run has finished yet, so there is nothing to compare.")
        return f
    f.cohorts = cohorts(groups, dataset_unit)
    units = list(dict.fromkeys(c.unit for c in f.cohorts))
    many = Counter(c.unit for c in f.cohorts)
    f.significance = compute_significance(
        [(_cohort_name(c, many[c.unit] > 1), c) for c in f.cohorts]
    )
    f.baselines = {
        u: b
        for u in units
        if (b := majority_baseline(u, [g for g in groups if dataset_unit(g) == u])) is not None
    }
    _best_overall(f)
    _most_efficient(f)
    for c in f.cohorts:
        _rank_cohort(f, c, many=sum(1 for o in f.cohorts if o.unit == c.unit) > 1)
    f.findings += _resolvable_findings(f)
    f.tables += comparison_tables(f.significance, Table)
    f.findings += _present(_ranking_finding(f))
    f.findings += _present(*(_mixed_rules(f, u) for u in units))
    f.findings += _run_checks(f, runs)
    f.findings += _published(f)
    f.findings += _reference_study(groups)
    f.findings += _present(_data_provenance(runs), *_licenses(runs))
    f.findings += leakage_findings(runs, dataset_unit)
    _recommend(f, runs)
    _ensembles(f, ensembles or [])
    return f


def _present(*sentences: str | None) -> list[str]:
    return [s for s in sentences if s]


def _run_checks(f: Findings, runs: list[Run]) -> list[str]:
    """The per-run checks, each a short finding over a table that lists every run it counts."""
    f.tables += [
        details.baseline_table(runs, f.baselines, dataset_unit),
        details.collapse_table(runs),
        details.missed_table(runs),
        details.gap_table(runs),
    ]
    return _present(
        *(_baseline(f, runs, u) for u in f.baselines),
        _collapse(runs),
        _missed(runs),
        _val_test_gap(runs),
    )


def _unfinished(runs: list[Run]) -> str | None:
    left = details.unfinished(runs)
    if not left:
        return None
    counts = Counter(str(r["status"]) for r in left)
    what = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return (
        f"{len(left)} cell(s) have no results and are left out of the comparison ({what}); "
        "each is listed with its reason under 'Cells not finished'."
    )


def _healthy_comparable(f: Findings) -> list[Group]:
    """Groups that never collapsed, in cohorts whose rows may be ranked."""
    return [g for c in f.cohorts if c.comparable for g in c.healthy]


def _best_overall(f: Findings) -> None:
    """The highest mean test accuracy over the datasets a model covers, among models that
    never collapsed and were trained to comparable lengths (models on every dataset first)."""
    pool = _healthy_comparable(f)
    if not pool:
        f.findings.append(
            "No overall ranking: no model both avoided collapse and was trained to a length "
            "comparable with the others on its dataset."
        )
        return
    units = list(dict.fromkeys(dataset_unit(g) for g in pool))
    overall, everywhere = _overall_accuracy(pool, units)
    f.ranking = sorted(
        ((lab, acc, n) for lab, (acc, n) in overall.items()), key=lambda t: (-t[1], t[0])
    )
    best, acc, n = f.ranking[0]
    f.best_overall = best
    tied = [lab for lab, v, _ in f.ranking[1:] if abs(v - acc) < 0.0005]
    tie = f" (tied with {', '.join(tied)})" if tied else ""
    every_unit = {c.unit for c in f.cohorts}
    if everywhere and len(units) == len(every_unit):
        scope = "every dataset"
    else:
        scope = f"{n} dataset(s) with ranked rows ({', '.join(units)})"
    ranking = f.significance.ranking if f.significance else None
    tested = (
        ""
        if ranking is not None and ranking.testable
        else "; an untested ranking, see 'Across datasets'"
    )
    f.findings.append(
        f"Best overall: {best}{tie}, mean test accuracy {pct(acc)} over {scope}, among models "
        f"that never collapsed and trained to comparable lengths (full ranking in its table{tested})."
    )


def _overall_accuracy(
    groups: list[Group], units: list[str]
) -> tuple[dict[str, tuple[float, int]], bool]:
    """Each model's (mean test accuracy over its groups, datasets covered): of the models
    run on every dataset (and True), or, when there is none, of all models (and False)."""
    coverage: dict[str, list[Group]] = {}
    for g in groups:
        coverage.setdefault(g.label, []).append(g)
    everywhere = {
        lab: gs for lab, gs in coverage.items() if len({dataset_unit(g) for g in gs}) == len(units)
    }
    overall = {
        lab: (sum(g.stat("test_acc").required_mean() for g in gs) / len(gs), len(gs))
        for lab, gs in (everywhere or coverage).items()
    }
    return overall, bool(everywhere)


def _most_efficient(f: Findings) -> None:
    """The healthy group with the most accuracy (%) per million parameters."""
    pool = [
        (g, efficiency)
        for c in f.cohorts
        for g in c.healthy
        if (efficiency := g.stat("efficiency").mean) is not None
    ]
    if not pool:
        return
    e, efficiency = max(pool, key=lambda pair: pair[1])
    f.most_efficient = e.label
    f.findings.append(
        f"Most efficient: {e.label} on {dataset_unit(e)}, {efficiency:.1f} accuracy "
        f"points per million parameters ({pct(e.stat('test_acc').mean)} with {_params(e)}); "
        "collapsed models are left out."
    )


def _rank_cohort(f: Findings, c: Cohort, many: bool) -> None:
    """The best healthy group of one cohort, when its rows may be ranked, and whether seeds
    separate it from the runner-up; otherwise why the rows are not ranked."""
    name = _cohort_name(c, many)
    if not c.comparable:
        f.findings.append(
            f"{name}: rows not ranked, their trained lengths differ by more than "
            f"{c.tolerance:.0%} ({c.spread})."
        )
        return
    healthy = c.healthy
    if not healthy:
        return  # the collapse finding covers it
    tests = f.significance.dataset(name) if f.significance else None
    cmp = compare_top_two(healthy[0], healthy[1] if len(healthy) > 1 else None, name, tests)
    f.comparisons.append(cmp)
    f.winners[name] = cmp.winner.label
    text = f"{name}: {cmp.winner.label} leads with {mean_std(cmp.winner.stat('test_acc'))}"
    if cmp.runner_up is None:
        f.findings.append(text + " (the only healthy model run on it).")
        return
    assert cmp.difference is not None  # compare_top_two sets it whenever there is a runner-up
    text += f", {points(cmp.difference)} over {cmp.runner_up.label}"
    f.findings.append(text + _separation(cmp))


def _separation(cmp: Comparison) -> str:
    if cmp.paired:
        return _paired_separation(cmp)
    if cmp.significant is None:
        return "; with one seed per model the difference is untested."
    verdict = "exceeds" if cmp.significant else "is within"
    return f"; the difference {verdict} the seed-to-seed spread (Welch's t-test p = {cmp.p_value:.3g})."


def _paired_separation(cmp: Comparison) -> str:
    """The paired tests' verdict on the top two: the accuracy test decides, the AUC test
    is stated beside it."""
    acc = f"McNemar, Holm p = {cmp.p_value:.2g}"
    auc = (
        "AUC untested"
        if cmp.auc_p is None
        else f"AUC {cmp.auc_difference:+.3f}, {cmp.auc_method} Holm p = {cmp.auc_p:.2g}"
    )
    if cmp.significant:
        return f"; the difference holds on these {cmp.n_test} test images ({acc}; {auc})."
    return f"; indistinguishable on this test split of {cmp.n_test} images ({acc}; {auc})."


def _resolvable_findings(f: Findings) -> list[str]:
    """Per cohort with paired tests: the smallest differences its test split resolves."""
    datasets = f.significance.datasets if f.significance else []
    return [f"{d.name}: {text}." for d in datasets if (text := resolvable_sentence(d))]


def _ranking_finding(f: Findings) -> str | None:
    """Whether the ranking across datasets was tested, and what it says."""
    sig = f.significance
    if sig is None or (sig.ranking is None and not sig.ranking_reason):
        return None
    r = sig.ranking
    if r is None or not r.testable:
        return f"Across datasets the ranking cannot be tested: {sig.ranking_reason}."
    order = sorted(zip(r.average_ranks, r.models, strict=True))
    ranks = ", ".join(f"{m} {rank:.2f}" for rank, m in order)
    friedman = "" if r.friedman_p is None else f"Friedman p = {r.friedman_p:.2g}, "
    groups = "; ".join(" = ".join(g) for g in r.groups("nemenyi") if len(g) > 1)
    tied = f"; not separated by Nemenyi: {groups}" if groups else ""
    return (
        f"Across {len(r.datasets)} datasets, average ranks of test accuracy: {ranks} "
        f"({friedman}Nemenyi critical difference {r.critical_difference:.2f}{tied})."
    )


def _mixed_rules(f: Findings, unit: str) -> str | None:
    mine = [c for c in f.cohorts if c.unit == unit]
    if len(mine) < 2:
        return None
    return (
        f"{unit}: rows trained under different length rules ({', '.join(c.label for c in mine)}) "
        "are ranked only within their own rule."
    )


def _baseline(f: Findings, runs: list[Run], unit: str) -> str:
    b = f.baselines[unit]
    done = [r for r in details.finished(runs) if dataset_unit(r) == unit]
    below = [r for r in details.below_baseline(done, f.baselines, dataset_unit)]
    verdict = (
        f"{len(below)} of {len(done)} runs are no better (listed in their table)"
        if below
        else f"all {len(done)} runs beat it"
    )
    return (
        f"{unit}: the majority-class baseline ({b.predicts}) scores {pct(b.acc)} test accuracy, "
        f"AUC {b.auc:.3f}; {verdict}."
    )


def _collapse(runs: list[Run]) -> str | None:
    done, bad = details.finished(runs), details.collapsed(runs)
    if not done:
        return None
    if not bad:
        return f"No run collapsed ({len(done)} runs checked by the collapse guard)."
    per_group = Counter((r["model"], r["dataset"]) for r in bad)
    listed = ", ".join(f"{m} on {d} ({n})" for (m, d), n in per_group.most_common(4))
    more = f" and {len(per_group) - 4} more models" if len(per_group) > 4 else ""
    return (
        f"{len(bad)} of {len(done)} runs collapsed: {listed}{more}; every flag is in the "
        "'Collapsed runs' table."
    )


def _missed(runs: list[Run]) -> str | None:
    found = [(r, m) for r in details.finished(runs) for m in details.run_missed(r)]
    if not found:
        return None
    per_class = Counter((r["dataset"], m.name) for r, m in found)
    listed = ", ".join(f"{name!r} in {d} ({n} runs)" for (d, name), n in per_class.most_common(3))
    more = f" and {len(per_class) - 3} more classes" if len(per_class) > 3 else ""
    n_runs = len({id(r) for r, _ in found})
    return (
        f"{n_runs} run(s) not collapsed still miss a class (recall at most 10%): {listed}{more}; "
        "a per-class recall problem, listed under 'Missed classes'."
    )


def _val_test_gap(runs: list[Run]) -> str | None:
    done = details.gaps(runs)
    if not done:
        return None
    big = details.big_gaps(runs)
    # The largest gap (the first of `big` where there are big ones).
    worst, largest = max(done, key=lambda pair: pair[1])
    where = f"{worst['model']} on {worst['dataset']}, seed {worst['seed']}"
    if not big:
        return (
            f"Validation accuracy predicts test accuracy within {details.GAP_POINTS:.0f} points "
            f"in every run (largest gap {100 * largest:.1f} points, {where})."
        )
    return (
        f"Validation and test accuracy differ by more than {details.GAP_POINTS:.0f} points in "
        f"{len(big)} of {len(done)} runs (largest {100 * largest:.1f} points, {where}); "
        "all are in the 'Validation/test gaps' table."
    )


def _published(f: Findings) -> list[str]:
    """Each dataset's best healthy, comparable group against the published baseline."""
    method = load_published()["baseline_method"]
    out = []
    best_of: dict[str, Group] = {}
    for c in f.cohorts:
        if c.comparable and c.healthy:
            g = c.healthy[0]
            if (
                c.unit not in best_of
                or g.stat("test_acc").required_mean()
                > best_of[c.unit].stat("test_acc").required_mean()
            ):
                best_of[c.unit] = g
    for unit, best in best_of.items():
        ref = baseline(best.dataset)
        if not ref:
            continue
        acc = best.stat("test_acc").required_mean()
        where = "above" if acc > ref["acc"] else "below"
        text = (
            f"{unit}: our best healthy model, {best.label} at {pct(acc)}, is "
            f"{abs(100 * (acc - ref['acc'])):.1f} points {where} the published {method} ({pct(ref['acc'])})"
        )
        auc = best.stat("test_auc").mean
        if auc is not None and ref.get("auc") is not None:
            text += f"; test AUC {auc:.3f} vs {ref['auc']:.3f}"
        out.append(text + ".")
    return out


def _reference_study(groups: list[Group]) -> list[str]:
    """Each 28-px group against the reference study's run of the same model (those rows
    are in the results table beside ours)."""
    out = []
    for g in groups:
        ref = reference_study_rows(g.dataset).get(g.model)
        if not ref or g.size != 28:
            continue
        acc = g.stat("test_acc")
        text = (
            f"{g.label} on {g.dataset}: {mean_std(acc)} against the reference study's "
            f"{pct(ref['acc'])} ({points(acc.required_mean() - ref['acc'])})"
        )
        if ref.get("collapsed"):
            text += _reference_collapse(g, ref)
        out.append(text + ".")
    return out


def _reference_collapse(g: Group, ref: dict[str, Any]) -> str:
    n_c = len(g.collapsed_runs)
    ours = f"ours in {n_c} of {g.n} runs" if n_c else f"ours in none of {g.n} runs"
    return f"; that run collapsed (validation said {pct(ref.get('val_acc'))}), {ours}"


def _ensembles(f: Findings, ensembles: list[dict[str, Any]]) -> None:
    """The gain of each ensemble over the best single run, the one a user would pick by
    validation score, tested on the same test images (Holm over the ensembles, per
    metric), and whether it pays for its size."""
    versus = [e.get("versus_best_single") or {} for e in ensembles]
    auc_holm = _holm_or_none([v.get("auc_p") for v in versus])
    acc_holm = _holm_or_none([v.get("acc_p") for v in versus])
    for e, p_auc, p_acc in zip(ensembles, auc_holm, acc_holm, strict=True):
        t, b, m = e["metrics"]["test"], e["best_single"], e["model"]
        d_acc, d_auc = t["acc"] - b["test_acc"], t["auc"] - b["test_auc"]
        size = m["n_params"] / b["n_params"] if b.get("n_params") else None
        name = e["dataset"]["name"]
        tested = (
            ""
            if p_auc is None or p_acc is None
            else f" (Holm-corrected paired tests: AUC p = {p_auc:.2g}, accuracy p = {p_acc:.2g})"
        )
        f.findings.append(
            f"{name}: the {e['method']} ensemble of {m['n_members']} runs reaches {pct(t['acc'])} test "
            f"accuracy and AUC {t['auc']:.3f}, {points(d_acc)} and {d_auc:+.3f} AUC against the best "
            f"single run by validation ({b['name']}: {pct(b['test_acc'])}, AUC {b['test_auc']:.3f})"
            + tested
            + (f", with {size:.1f}x its parameters." if size else ".")
        )
        f.recommendations.append(_ensemble_advice(e, d_acc, d_auc, p_auc, p_acc))


def _holm_or_none(p_values: list[float | None]) -> list[float | None]:
    """Holm over the defined p-values; None stays None."""
    defined = [p for p in p_values if p is not None]
    corrected = iter(holm(defined))
    return [None if p is None else next(corrected) for p in p_values]


def _ensemble_advice(
    e: dict[str, Any], d_acc: float, d_auc: float, p_auc: float | None, p_acc: float | None
) -> str:
    name, method, n = e["dataset"]["name"], e["method"], e["model"]["n_members"]
    if p_auc is None or p_acc is None:  # an ensemble saved before the tests were recorded
        better = d_acc > 0 and d_auc > 0
        verdict = "beats" if better else "does not beat"
        return (
            f"For {name}, the {method} ensemble {verdict} the best single run on both test accuracy "
            f"and AUC (untested); "
            + (
                f"use it where {n}x inference cost is acceptable."
                if better
                else "the single run is the better deployment."
            )
        )
    if d_acc > 0 and d_auc > 0 and max(p_auc, p_acc) < ALPHA:
        return (
            f"For {name}, the {method} ensemble beats the best single run on both test accuracy "
            f"and AUC on these test images; use it where {n}x inference cost is acceptable."
        )
    return (
        f"For {name}, the {method} ensemble is not better than the best single run on both test "
        "accuracy and AUC by the corrected paired tests; the single run is the better deployment."
    )


def _data_provenance(runs: list[Run]) -> str | None:
    """Whether the finished runs used the official data files."""
    done = [r for r in runs if r.finished]
    if not done:
        return None
    unofficial = [r for r in done if _unofficial(r)]
    if unofficial:
        names = sorted({r["dataset"] for r in unofficial})
        return (
            f"Data provenance: {len(unofficial)} of {len(done)} runs used a data file that is not the official "
            f"one (MD5 differs) for {', '.join(names)}; their numbers are not directly comparable with "
            "published results."
        )
    if all(r["data_md5_matches"] is True for r in done):
        return f"Data provenance: all {len(done)} runs used data files whose MD5 matches the official one."
    return "Data provenance: some runs did not record whether their data file was the official one."


def _unofficial(r: Run) -> bool:
    return r["data_md5_matches"] is False or r["data_official"] is False


def _licenses(runs: list[Run]) -> list[str]:
    """A note for each dataset under a non-commercial license."""
    licensed = sorted({(r["dataset"], r["license"]) for r in runs if r.finished and r["license"]})
    return [
        f"License: {name} is {lic}; models trained on it and these results are for non-commercial use."
        for name, lic in licensed
        if _non_commercial(lic)
    ]


def _non_commercial(license_: str) -> bool:
    upper = license_.upper()
    return "NC" in upper.split("-") or "BY-NC" in upper


def _welch_p_value(a: Stat, b: Stat) -> float | None:
    """Two-sided p-value of Welch's t-test; None when not testable (a group has fewer than
    two seeds, or the test is undefined)."""
    if a.n < 2 or b.n < 2:
        return None
    if not a.std and not b.std:
        # Every seed gave the same number: any difference is larger than the (zero) spread.
        return 0.0 if a.mean != b.mean else 1.0
    with warnings.catch_warnings():  # nearly identical seeds: scipy warns, the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(a.values, b.values, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def _recommend(f: Findings, runs: list[Run]) -> None:
    """Recommendations from the findings already made, in the order the report lists them."""
    rec = f.recommendations
    many = Counter(c.unit for c in f.cohorts)
    for c in f.cohorts:
        rec += _present(_choose(f, c, many[c.unit] > 1))
    rec += _present(
        _smaller_alternative(f),
        _do_not_use(f),
        _fix_missed(runs),
        _beat_baseline(f, runs),
    )
    rec += _train_longer(f)
    if any("not the official" in s for s in f.findings):
        rec.append(
            "Re-run on the official data files before citing these numbers next to published ones."
        )


def _choose(f: Findings, c: Cohort, many: bool) -> str | None:
    """Which model to use on one cohort."""
    name = _cohort_name(c, many)
    if not c.comparable and c.rule == "time budget":
        return (
            f"For {name}, the runs did not use their budgets evenly (a busy machine, or a plan "
            "made while it was), so the rows cannot be ranked: re-run on an idle machine or with "
            "--epochs N, whose lengths do not depend on the load."
        )
    if not c.comparable:
        return (
            f"For {name}, train every model to the same length (compare epochs trained) before "
            "choosing; the rows differ too much to rank."
        )
    if not c.healthy:
        return (
            f"For {name}, no model is usable as trained: every one collapsed in at least one run; "
            "train longer and with --class-balance weighted_loss before choosing."
        )
    cmp = next((x for x in f.comparisons if x.dataset == name), None)
    if cmp is None:
        return None
    return _choose_between_healthy(cmp)


def _choose_between_healthy(cmp: Comparison) -> str:
    """Which of the top two healthy groups to use: the winner when seeds separate them,
    else the smaller."""
    w, r = cmp.winner, cmp.runner_up
    if r is None:
        return f"For {cmp.dataset}, {w.label} is the only healthy model measured; add others to compare."
    cheaper = min((w, r), key=lambda g: g.stat("n_params").mean or math.inf)
    if cmp.paired:
        if cmp.significant:
            return (
                f"For {cmp.dataset}, use {w.label}: it beats {r.label} on these test images "
                f"(McNemar, Holm p = {cmp.p_value:.2g})."
            )
        auc = ""
        if cmp.auc_p is not None and cmp.auc_p < ALPHA and cmp.auc_difference:
            higher = w if cmp.auc_difference > 0 else r
            auc = f", though {higher.label} has the higher AUC ({cmp.auc_method} Holm p = {cmp.auc_p:.2g})"
        return (
            f"For {cmp.dataset}, {w.label} and {r.label} are indistinguishable in accuracy on this "
            f"test split (McNemar, Holm p = {cmp.p_value:.2g}){auc}: prefer the smaller "
            f"{cheaper.label} ({_params(cheaper)}) unless AUC decides."
        )
    if cmp.significant:
        return f"For {cmp.dataset}, use {w.label}: it beats {r.label} by more than the seed noise."
    why = "untested with one seed" if cmp.significant is None else f"p = {cmp.p_value:.2g}"
    return (
        f"For {cmp.dataset}, {w.label} and {r.label} are not separated by the seeds ({why}): prefer "
        f"the smaller {cheaper.label} ({_params(cheaper)}) or run more seeds (--seeds 5)."
    )


def _smaller_alternative(f: Findings) -> str | None:
    """How much of the best model's accuracy the most efficient one keeps, and at what size."""
    if not f.most_efficient or not f.best_overall or f.most_efficient == f.best_overall:
        return None
    pool = _healthy_comparable(f)
    eff = [g for g in pool if g.label == f.most_efficient]
    if not eff:
        return None
    e = max(eff, key=lambda g: g.stat("efficiency").mean or 0)
    best = next(
        (g for g in pool if g.label == f.best_overall and dataset_unit(g) == dataset_unit(e)), None
    )
    if best is None:
        return None
    best_params, e_params = best.stat("n_params").mean, e.stat("n_params").mean
    if not best_params or not e_params:
        return None
    ratio = best_params / e_params
    share = e.stat("test_acc").required_mean() / best.stat("test_acc").required_mean()
    return (
        f"Where size or latency matter, {e.label} keeps {100 * share:.0f}% of {best.label}'s accuracy on "
        f"{dataset_unit(e)} with {ratio:.1f}x {'fewer' if ratio >= 1 else 'more'} parameters."
    )


def _do_not_use(f: Findings) -> str | None:
    bad = [g for c in f.cohorts for g in c.groups if g.collapsed_runs]
    if not bad:
        return None
    listed = ", ".join(
        f"{g.label} on {dataset_unit(g)} ({len(g.collapsed_runs)}/{g.n} runs)" for g in bad[:3]
    )
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return f"Do not use as trained (collapsed): {listed}{more}; {COLLAPSE_ADVICE}."


def _fix_missed(runs: list[Run]) -> str | None:
    found = {(r["dataset"], m.name) for r in details.finished(runs) for m in details.run_missed(r)}
    if not found:
        return None
    names = ", ".join(f"{n!r} ({d})" for d, n in sorted(found)[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return f"For the missed classes {names}{more}: {MISSED_CLASS_ADVICE}."


def _beat_baseline(f: Findings, runs: list[Run]) -> str | None:
    below = details.below_baseline(runs, f.baselines, dataset_unit)
    if not below:
        return None
    groups = sorted({f"{r['model']} on {dataset_unit(r)}" for r in below})
    listed = ", ".join(groups[:4]) + (f" and {len(groups) - 4} more" if len(groups) > 4 else "")
    return (
        f"Runs of {listed} are no better than always predicting the majority class: do not "
        "report them as results; train longer or fix the class balance first."
    )


def trained_length(g: Group) -> str:
    """What a group's runs really trained, e.g. "1-3 epochs (30-90 steps, 40 s-2 m)"."""
    epochs = [r["epochs_trained"] for r in g.runs if isinstance(r["epochs_trained"], (int, float))]
    steps = [int(r["steps"]) for r in g.runs if isinstance(r["steps"], (int, float))]
    seconds = [r["train_seconds"] for r in g.runs if isinstance(r["train_seconds"], (int, float))]
    if not epochs:
        return "an unknown length"
    span = _range(epochs, lambda v: f"{v:.2g}")
    parts = [span + (" epoch" if span == "1" else " epochs")]
    if steps:
        parts.append(_range(steps, str) + " steps")
    if seconds:
        parts.append(_range(seconds, lambda v: f"{v:.0f}") + " s")
    return f"{parts[0]} ({', '.join(parts[1:])})" if len(parts) > 1 else parts[0]


def _range(values: list, fmt) -> str:
    lo, hi = fmt(min(values)), fmt(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def _train_longer(f: Findings) -> list[str]:
    """For each dataset whose best healthy model is below the published baseline."""
    out, seen = [], set()
    for c in f.cohorts:
        if c.unit in seen or not c.healthy:
            continue
        g = c.healthy[0]
        ref, acc = baseline(g.dataset), g.stat("test_acc").mean
        if not ref or acc is None or acc >= ref["acc"]:
            continue
        seen.add(c.unit)
        out.append(
            f"{c.unit}: {g.label} trained {trained_length(g)} and is {abs(100 * (acc - ref['acc'])):.1f} "
            "points below the published ResNet-18 (28); train longer (--epochs or a larger "
            "--total-time-budget) or on a GPU before drawing conclusions."
        )
    return out


def findings_dict(f: Findings) -> dict[str, Any]:
    """JSON-able summary of the findings (for summary.json / tests)."""
    return {
        "findings": f.findings,
        "recommendations": f.recommendations,
        "best_overall": f.best_overall,
        "most_efficient": f.most_efficient,
        "winners": f.winners,
        "ranking": [{"model": lab, "test_acc": acc, "datasets": n} for lab, acc, n in f.ranking],
        "baselines": {
            u: {"acc": b.acc, "auc": b.auc, "predicts": b.predicts, "n": b.n}
            for u, b in f.baselines.items()
        },
        "cohorts": [
            {
                "dataset": c.unit,
                "rule": c.rule,
                "planned": c.planned,
                "ranked": c.comparable,
                "lengths": c.spread,
                "models": [g.label for g in c.groups],
            }
            for c in f.cohorts
        ],
        "comparisons": [
            {
                "dataset": c.dataset,
                "winner": c.winner.label,
                "runner_up": c.runner_up.label if c.runner_up else None,
                "difference": c.difference,
                "p_value": c.p_value,
                "significant": c.significant,
                "overlap": c.overlap,
                "method": c.method,
                "paired": c.paired,
                "n_test": c.n_test,
                "auc_difference": c.auc_difference,
                "auc_p": c.auc_p,
                "auc_method": c.auc_method,
            }
            for c in f.comparisons
        ],
        "significance": f.significance.to_json() if f.significance else None,
    }
