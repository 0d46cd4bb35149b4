"""Key findings and recommendations, computed from the study's numbers.

Every sentence is built from the results it describes (names, values, tests), so two
different result sets give different findings. Significance between the top two models of
a dataset is Welch's two-sided t-test over seeds at alpha = 0.05 (needs >= 2 seeds each).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from scipy.stats import ttest_ind

from medbench.report.collect import Group, Run, Stat
from medbench.report.published import baseline, load_published, reference_study_rows

ALPHA = 0.05
GAP_POINTS = 5.0  # a val-vs-test accuracy gap above this many points is reported
METHOD = "Welch's t-test (two-sided, alpha 0.05) over seeds"


@dataclass
class Comparison:
    """The top two models of one dataset and whether seeds separate them."""

    dataset: str
    winner: Group
    runner_up: Group | None
    difference: float | None  # winner minus runner-up mean test accuracy (fraction)
    p_value: float | None
    significant: bool | None  # None: not testable (fewer than two seeds)
    overlap: bool | None  # mean +- std intervals overlap
    method: str


@dataclass
class Findings:
    findings: list[str] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    best_overall: str | None = None
    most_efficient: str | None = None
    winners: dict[str, str] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def points(d: float) -> str:
    return f"{100 * d:+.1f} points"


def mean_std(stat: Stat, scale: float = 100.0, digits: int = 1, unit: str = "%") -> str:
    if stat.mean is None:
        return "n/a"
    text = f"{scale * stat.mean:.{digits}f}"
    if stat.std is not None:
        text += f" ± {scale * stat.std:.{digits}f}"
    return f"{text}{unit} (n={stat.n})"


def dataset_unit(group: Group) -> str:
    return group.dataset if group.size == 28 else f"{group.dataset}@{group.size}px"


def compare_top_two(a: Group, b: Group | None) -> Comparison:
    """Welch's t-test on the seeds' test accuracies of the two best groups of a dataset."""
    if b is None:
        return Comparison(dataset_unit(a), a, None, None, None, None, None, METHOD)
    sa, sb = a.stat("test_acc"), b.stat("test_acc")
    p = _welch_p_value(sa, sb)
    significant = None if p is None else p < ALPHA
    return Comparison(
        dataset_unit(a), a, b, sa.mean - sb.mean, p, significant, _overlap(sa, sb), METHOD
    )


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


def _overlap(a: Stat, b: Stat) -> bool | None:
    """Whether a's mean - std reaches b's mean + std; None without both spreads."""
    if a.std is None or b.std is None:
        return None
    return (a.mean - a.std) <= (b.mean + b.std)


def _by_dataset(groups: list[Group]) -> dict[str, list[Group]]:
    out: dict[str, list[Group]] = {}
    for g in groups:
        out.setdefault(dataset_unit(g), []).append(g)
    for unit in out:
        out[unit].sort(key=lambda g: -(g.stat("test_acc").mean or 0.0))
    return out


def _params(g: Group) -> str:
    n = g.stat("n_params").mean
    return "n/a" if n is None else f"{n / 1e6:.2f} M"


def _run_name(r: Run) -> str:
    return f"{r['model']} on {r['dataset']} seed {r['seed']}"


def compute_findings(
    groups: list[Group], runs: list[Run], ensembles: list[dict[str, Any]] | None = None
) -> Findings:
    """Findings and recommendations for the finished runs in `groups` (all runs in `runs`,
    failed ones included, for the provenance and failure notes), and for the `ensembles`
    built over them (results of `medbench.ensemble.build_ensemble`)."""
    f = Findings()
    if not groups:
        f.findings.append("No run has finished yet, so there is nothing to compare.")
        return f
    per_dataset = _by_dataset(groups)
    _best_overall(f, groups, list(per_dataset))
    _most_efficient(f, groups)
    for gs in per_dataset.values():
        _winner(f, gs)
    f.findings += _present(_val_test_gap(runs), _collapse(runs), _failures(runs))
    f.findings += _published(per_dataset)
    f.findings += _reference_study(groups)
    f.findings += _present(_data_provenance(runs), *_licenses(runs))
    _recommend(f, per_dataset, groups)
    _ensembles(f, ensembles or [])
    return f


def _present(*sentences: str | None) -> list[str]:
    return [s for s in sentences if s]


def _best_overall(f: Findings, groups: list[Group], units: list[str]) -> None:
    """The highest mean test accuracy over the datasets a model covers (models present on
    every dataset first)."""
    overall, everywhere = _overall_accuracy(groups, units)
    ranked = sorted(overall.items(), key=lambda kv: -kv[1])
    best = f.best_overall = ranked[0][0]
    ranking = ", ".join(f"{lab} {pct(v)}" for lab, v in ranked)
    scope = "all datasets" if everywhere else "the datasets each model was run on"
    tied = [lab for lab, v in ranked[1:] if abs(v - overall[best]) < 0.0005]
    tie = f" (tied with {', '.join(tied)})" if tied else ""
    f.findings.append(
        f"Best overall: {best}{tie}, with a mean test accuracy of {pct(overall[best])} over {scope} "
        f"({', '.join(units)}); ranking: {ranking}."
    )


def _overall_accuracy(groups: list[Group], units: list[str]) -> tuple[dict[str, float], bool]:
    """Each model's mean test accuracy over its groups: of the models run on every dataset
    (and True), or, when there is none, of all models (and False)."""
    coverage: dict[str, list[Group]] = {}
    for g in groups:
        coverage.setdefault(g.label, []).append(g)
    everywhere = {
        lab: gs for lab, gs in coverage.items() if len({dataset_unit(g) for g in gs}) == len(units)
    }
    overall = {
        lab: sum(g.stat("test_acc").mean for g in gs) / len(gs)
        for lab, gs in (everywhere or coverage).items()
    }
    return overall, bool(everywhere)


def _most_efficient(f: Findings, groups: list[Group]) -> None:
    """The group with the most accuracy (%) per million parameters."""
    eff_groups = [g for g in groups if g.stat("efficiency").mean is not None]
    if not eff_groups:
        return
    e = max(eff_groups, key=lambda g: g.stat("efficiency").mean)
    f.most_efficient = e.label
    f.findings.append(
        f"Most efficient: {e.label} on {dataset_unit(e)}, {e.stat('efficiency').mean:.1f} accuracy "
        f"points per million parameters ({pct(e.stat('test_acc').mean)} with {_params(e)} parameters)."
    )


def _winner(f: Findings, gs: list[Group]) -> None:
    """The best group of one dataset (`gs`, best first), and whether seeds separate it from
    the runner-up."""
    cmp = compare_top_two(gs[0], gs[1] if len(gs) > 1 else None)
    f.comparisons.append(cmp)
    f.winners[cmp.dataset] = cmp.winner.label
    text = f"{cmp.dataset}: {cmp.winner.label} wins with {mean_std(cmp.winner.stat('test_acc'))}"
    if cmp.runner_up is None:
        f.findings.append(text + " (the only model run on it).")
        return
    text += f", {points(cmp.difference)} ahead of {cmp.runner_up.label} ({mean_std(cmp.runner_up.stat('test_acc'))})"
    f.findings.append(text + _separation(cmp))


def _separation(cmp: Comparison) -> str:
    if cmp.significant is None:
        return "; with fewer than two seeds per model the seed-to-seed spread is unknown, so the difference is untested."
    verdict = "exceeds" if cmp.significant else "is within"
    return (
        f"; the difference {verdict} the seed-to-seed spread ({cmp.method}: p = {cmp.p_value:.3g})."
    )


def _ensembles(f: Findings, ensembles: list[dict[str, Any]]) -> None:
    """The gain of each ensemble over the best single run, the one a user would pick by
    validation score, and whether it pays for its size."""
    for e in ensembles:
        t, b, m = e["metrics"]["test"], e["best_single"], e["model"]
        d_acc, d_auc = t["acc"] - b["test_acc"], t["auc"] - b["test_auc"]
        size = m["n_params"] / b["n_params"] if b.get("n_params") else None
        name = e["dataset"]["name"]
        f.findings.append(
            f"{name}: the {e['method']} ensemble of {m['n_members']} runs reaches {pct(t['acc'])} test "
            f"accuracy and AUC {t['auc']:.3f}, {points(d_acc)} and {d_auc:+.3f} AUC against the best "
            f"single run by validation ({b['name']}: {pct(b['test_acc'])}, AUC {b['test_auc']:.3f})"
            + (f", with {size:.1f}x its parameters." if size else ".")
        )
        if d_acc > 0 and d_auc > 0:
            f.recommendations.append(
                f"For {name}, the {e['method']} ensemble beats the best single run on both test "
                f"accuracy and AUC; use it where {m['n_members']}x inference cost is acceptable."
            )
        else:
            f.recommendations.append(
                f"For {name}, the {e['method']} ensemble does not beat the best single run on both "
                "test accuracy and AUC; the single run is the better deployment."
            )


def _checked(runs: list[Run]) -> list[Run]:
    """The finished runs with both a validation and a test accuracy."""
    return [
        r for r in runs if r.finished and r["val_acc"] is not None and r["test_acc"] is not None
    ]


def _gap(r: Run) -> float:
    return abs(r["val_acc"] - r["test_acc"])


def _val_test_gap(runs: list[Run]) -> str | None:
    """The runs whose validation accuracy misses their test accuracy by more than
    GAP_POINTS, or else the largest gap."""
    gaps = sorted(_checked(runs), key=lambda r: -_gap(r))
    if not gaps:
        return None
    big = [r for r in gaps if _gap(r) * 100 > GAP_POINTS]
    if not big:
        r = gaps[0]
        return (
            f"Validation accuracy predicts test accuracy within {GAP_POINTS:.0f} points in every run; the "
            f"largest gap is {_gap(r) * 100:.1f} points ({r['model']} on "
            f"{r['dataset']}, seed {r['seed']})."
        )
    listed = "; ".join(
        f"{_run_name(r)}: val {pct(r['val_acc'])} vs test {pct(r['test_acc'])}" for r in big[:6]
    )
    return (
        f"Validation and test accuracy differ by more than {GAP_POINTS:.0f} points in "
        f"{len(big)} run(s): {listed}."
    )


def _collapse(runs: list[Run]) -> str | None:
    """The runs the collapse guard flagged, or else the most one-sided predictions."""
    done = _checked(runs)
    collapsed = [r for r in runs if r.finished and r["collapsed"]]
    if not collapsed:
        return _most_one_sided(done) if done else None
    more = f"; and {len(collapsed) - 6} more" if len(collapsed) > 6 else ""
    listed = "; ".join(
        f"{_run_name(r)} ({_short(r['flags'][0]) if r['flags'] else 'flagged'})"
        for r in collapsed[:6]
    )
    return (
        f"{len(collapsed)} of {len(done)} run(s) collapsed (the collapse guard fired): "
        f"{listed}{more}."
    )


def _most_one_sided(done: list[Run]) -> str:
    shares = [(r.results.test.get("majority_fraction"), r) for r in done]
    known = [(s, r) for s, r in shares if isinstance(s, (int, float))]
    if not known:
        return f"No run collapsed to one class ({len(done)} runs checked)."
    s, r = max(known, key=lambda t: t[0])
    return (
        f"No run collapsed to one class; the most one-sided predictions put {pct(s)} of the test "
        f"images in one class ({r['model']} on {r['dataset']}, seed {r['seed']})."
    )


def _failures(runs: list[Run]) -> str | None:
    failed = [r for r in runs if r["status"] == "failed"]
    if not failed:
        return None
    listed = "; ".join(f"{_run_name(r)} ({r['error']})" for r in failed[:5])
    return f"{len(failed)} run(s) failed and are missing from the table: {listed}."


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _published(per_dataset: dict[str, list[Group]]) -> list[str]:
    """Each dataset's best group against the published baseline."""
    method = load_published()["baseline_method"]
    out = []
    for unit, gs in per_dataset.items():
        ref = baseline(gs[0].dataset)
        if not ref:
            continue
        best = gs[0]
        acc = best.stat("test_acc").mean
        text = (
            f"{unit}: our best ({best.label}, {pct(acc)}) is {points(acc - ref['acc'])} against the "
            f"published {method} ({pct(ref['acc'])})"
        )
        auc = best.stat("test_auc").mean
        if auc is not None and ref.get("auc") is not None:
            text += f"; test AUC {auc:.3f} vs {ref['auc']:.3f}"
        beaten = [g.label for g in gs if (g.stat("test_acc").mean or 0) > ref["acc"]]
        out.append(text + f". Models above it: {', '.join(beaten) if beaten else 'none'}.")
    return out


def _reference_study(groups: list[Group]) -> list[str]:
    """Each 28-px group against the reference study's run of the same model."""
    out = []
    for g in groups:
        ref = reference_study_rows(g.dataset).get(g.model)
        if not ref or g.size != 28:
            continue
        acc = g.stat("test_acc")
        text = (
            f"Against the reference study, {g.label} on {g.dataset}: {mean_std(acc)} vs its "
            f"{pct(ref['acc'])} ({points(acc.mean - ref['acc'])})"
        )
        if ref.get("collapsed"):
            text += _reference_collapse(g, ref)
        out.append(text + ".")
    return out


def _reference_collapse(g: Group, ref: dict[str, Any]) -> str:
    n_c = len(g.collapsed_runs)
    ours = f"collapsed in {n_c} of {g.n} runs" if n_c else f"did not collapse in any of {g.n} runs"
    return f"; the reference run collapsed (validation said {pct(ref.get('val_acc'))}), ours {ours}"


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


def _recommend(f: Findings, per_dataset: dict[str, list[Group]], groups: list[Group]) -> None:
    """Recommendations from the findings already made, in the order the report lists them."""
    rec = f.recommendations
    rec += [_choose(cmp, per_dataset[cmp.dataset]) for cmp in f.comparisons]
    rec += _present(_smaller_alternative(f, per_dataset, groups), _do_not_use(groups))
    rec += _train_longer(per_dataset)
    if any("not the official" in s for s in f.findings):
        rec.append(
            "Re-run on the official data files before citing these numbers next to published ones."
        )


def _choose(cmp: Comparison, gs: list[Group]) -> str:
    """Which model to use on one dataset (`gs`, best first)."""
    if all(g.collapsed_runs for g in gs):
        return (
            f"For {cmp.dataset}, no model is usable as trained: every one collapsed in at least one "
            "run; train longer and with --class-balance weighted_loss before choosing."
        )
    if any(g.collapsed_runs for g in (cmp.winner, cmp.runner_up) if g is not None):
        healthy = next(g for g in gs if not g.collapsed_runs)
        return (
            f"For {cmp.dataset}, use {healthy.label} ({pct(healthy.stat('test_acc').mean)}), the most "
            "accurate model that never collapsed."
        )
    return _choose_between_healthy(cmp)


def _choose_between_healthy(cmp: Comparison) -> str:
    """Which of the top two (neither collapsed) to use: the winner when seeds separate them,
    else the smaller."""
    w, r = cmp.winner, cmp.runner_up
    if r is None:
        return f"For {cmp.dataset}, {w.label} is the only model measured; add others to compare."
    if cmp.significant:
        return f"For {cmp.dataset}, use {w.label}: it beats {r.label} by more than the seed noise."
    cheaper = min((w, r), key=lambda g: g.stat("n_params").mean or math.inf)
    why = "untested with one seed" if cmp.significant is None else f"p = {cmp.p_value:.2g}"
    return (
        f"For {cmp.dataset}, {w.label} and {r.label} are not separated by the seeds ({why}): prefer "
        f"the smaller {cheaper.label} ({_params(cheaper)} parameters) or run more seeds (--seeds 5)."
    )


def _efficient_alternative(f: Findings, groups: list[Group]) -> Group | None:
    """The most efficient model's best group, when it is not the best overall model and
    never collapsed."""
    if not f.most_efficient or not f.best_overall or f.most_efficient == f.best_overall:
        return None
    e = max(
        (g for g in groups if g.label == f.most_efficient),
        key=lambda g: g.stat("efficiency").mean or 0,
    )
    return None if e.collapsed_runs else e


def _smaller_alternative(
    f: Findings, per_dataset: dict[str, list[Group]], groups: list[Group]
) -> str | None:
    """How much of the best model's accuracy the most efficient one keeps, and at what size."""
    e = _efficient_alternative(f, groups)
    if e is None:
        return None
    best = next((g for g in per_dataset[dataset_unit(e)] if g.label == f.best_overall), None)
    if best is None or not best.stat("n_params").mean or not e.stat("n_params").mean:
        return None
    ratio = best.stat("n_params").mean / e.stat("n_params").mean
    share = e.stat("test_acc").mean / best.stat("test_acc").mean
    return (
        f"Where size or latency matter, {e.label} keeps {100 * share:.0f}% of {best.label}'s accuracy on "
        f"{dataset_unit(e)} with {ratio:.1f}x {'fewer' if ratio >= 1 else 'more'} parameters."
    )


def _do_not_use(groups: list[Group]) -> str | None:
    bad = [g for g in groups if g.collapsed_runs]
    if not bad:
        return None
    listed = ", ".join(
        f"{g.label} on {dataset_unit(g)} ({len(g.collapsed_runs)} of {g.n} runs)" for g in bad
    )
    return (
        f"Do not use as trained (collapsed): {listed}; retrain with --class-balance "
        "weighted_loss and check per-class recall."
    )


def _train_longer(per_dataset: dict[str, list[Group]]) -> list[str]:
    """For each dataset whose best model is below the published baseline."""
    out = []
    for unit, gs in per_dataset.items():
        ref = baseline(gs[0].dataset)
        acc = gs[0].stat("test_acc").mean
        if not ref or acc is None or acc >= ref["acc"]:
            continue
        rounds = gs[0].stat("epochs_completed").mean
        trained = f" (it trained {rounds:.0f} epochs)" if rounds else ""
        out.append(
            f"{unit}: the best model{trained} is {abs(100 * (acc - ref['acc'])):.1f} points below the published "
            "ResNet-18 (28); train longer (--epochs or a larger --total-time-budget) or on a GPU before "
            "drawing conclusions."
        )
    return out


def findings_dict(f: Findings) -> dict[str, Any]:
    """JSON-able summary of the findings (for results.json / tests)."""
    return {
        "findings": f.findings,
        "recommendations": f.recommendations,
        "best_overall": f.best_overall,
        "most_efficient": f.most_efficient,
        "winners": f.winners,
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
            }
            for c in f.comparisons
        ],
    }
