"""Key findings and recommendations, computed from the study's numbers.

Every sentence is built from the results it describes (names, values, tests), so two
different result sets give different findings. Significance between the top two models of
a dataset is Welch's two-sided t-test over seeds at alpha = 0.05 (needs >= 2 seeds each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from medbench.report.collect import Group, Run, Stat
from medbench.report.published import baseline, load_published, reference_study_rows

ALPHA = 0.05
GAP_POINTS = 5.0  # a val-vs-test accuracy gap above this many points is reported


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
    method = "Welch's t-test (two-sided, alpha 0.05) over seeds"
    if b is None:
        return Comparison(dataset_unit(a), a, None, None, None, None, None, method)
    sa, sb = a.stat("test_acc"), b.stat("test_acc")
    diff = sa.mean - sb.mean
    overlap = None
    if sa.std is not None and sb.std is not None:
        overlap = (sa.mean - sa.std) <= (sb.mean + sb.std)
    if sa.n < 2 or sb.n < 2:
        return Comparison(dataset_unit(a), a, b, diff, None, None, overlap, method)
    if (sa.std or 0.0) == 0.0 and (sb.std or 0.0) == 0.0:
        # Every seed gave the same number: any difference is larger than the (zero) spread.
        return Comparison(
            dataset_unit(a), a, b, diff, 0.0 if diff else 1.0, diff != 0, overlap, method
        )
    import warnings

    from scipy.stats import ttest_ind

    with warnings.catch_warnings():  # nearly identical seeds: scipy warns, the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(sa.values, sb.values, equal_var=False).pvalue)
    if math.isnan(p):
        return Comparison(dataset_unit(a), a, b, diff, None, None, overlap, method)
    return Comparison(dataset_unit(a), a, b, diff, p, p < ALPHA, overlap, method)


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
    units = list(per_dataset)

    # Best overall: the highest mean test accuracy over the datasets a model covers (models
    # present on every dataset first).
    labels = list(dict.fromkeys(g.label for g in groups))
    coverage = {lab: [g for g in groups if g.label == lab] for lab in labels}
    everywhere = [
        lab for lab in labels if len({dataset_unit(g) for g in coverage[lab]}) == len(units)
    ]
    candidates = everywhere or labels
    overall = {
        lab: sum(g.stat("test_acc").mean for g in coverage[lab]) / len(coverage[lab])
        for lab in candidates
    }
    ranked = sorted(overall.items(), key=lambda kv: -kv[1])
    best = ranked[0][0]
    f.best_overall = best
    ranking = ", ".join(f"{lab} {pct(v)}" for lab, v in ranked)
    scope = "all datasets" if everywhere else "the datasets each model was run on"
    tied = [lab for lab, v in ranked[1:] if abs(v - overall[best]) < 0.0005]
    tie = f" (tied with {', '.join(tied)})" if tied else ""
    f.findings.append(
        f"Best overall: {best}{tie}, with a mean test accuracy of {pct(overall[best])} over {scope} "
        f"({', '.join(units)}); ranking: {ranking}."
    )

    # Most efficient: accuracy (%) per million parameters.
    eff_groups = [g for g in groups if g.stat("efficiency").mean is not None]
    if eff_groups:
        e = max(eff_groups, key=lambda g: g.stat("efficiency").mean)
        f.most_efficient = e.label
        f.findings.append(
            f"Most efficient: {e.label} on {dataset_unit(e)}, {e.stat('efficiency').mean:.1f} accuracy "
            f"points per million parameters ({pct(e.stat('test_acc').mean)} with {_params(e)} parameters)."
        )

    # Winner per dataset, and whether seeds separate it from the runner-up.
    for unit, gs in per_dataset.items():
        cmp = compare_top_two(gs[0], gs[1] if len(gs) > 1 else None)
        f.comparisons.append(cmp)
        f.winners[unit] = cmp.winner.label
        text = f"{unit}: {cmp.winner.label} wins with {mean_std(cmp.winner.stat('test_acc'))}"
        if cmp.runner_up is None:
            f.findings.append(text + " (the only model run on it).")
            continue
        text += f", {points(cmp.difference)} ahead of {cmp.runner_up.label} ({mean_std(cmp.runner_up.stat('test_acc'))})"
        if cmp.significant is None:
            text += "; with fewer than two seeds per model the seed-to-seed spread is unknown, so the difference is untested."
        elif cmp.significant:
            text += f"; the difference exceeds the seed-to-seed spread ({cmp.method}: p = {cmp.p_value:.3g})."
        else:
            text += f"; the difference is within the seed-to-seed spread ({cmp.method}: p = {cmp.p_value:.3g})."
        f.findings.append(text)

    _gaps_and_collapse(f, runs)
    _published(f, per_dataset)
    _reference_study(f, groups)
    _provenance(f, runs)
    _recommend(f, per_dataset, groups)
    _ensembles(f, ensembles or [])
    return f


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


def _gaps_and_collapse(f: Findings, runs: list[Run]) -> None:
    done = [
        r for r in runs if r.finished and r["val_acc"] is not None and r["test_acc"] is not None
    ]
    if done:
        gaps = sorted(done, key=lambda r: -abs(r["val_acc"] - r["test_acc"]))
        big = [r for r in gaps if abs(r["val_acc"] - r["test_acc"]) * 100 > GAP_POINTS]
        if big:
            f.findings.append(
                f"Validation and test accuracy differ by more than {GAP_POINTS:.0f} points in "
                f"{len(big)} run(s): "
                + "; ".join(
                    f"{r['model']} on {r['dataset']} seed {r['seed']}: val {pct(r['val_acc'])} vs test "
                    f"{pct(r['test_acc'])}"
                    for r in big[:6]
                )
                + "."
            )
        else:
            r = gaps[0]
            f.findings.append(
                f"Validation accuracy predicts test accuracy within {GAP_POINTS:.0f} points in every run; the "
                f"largest gap is {abs(r['val_acc'] - r['test_acc']) * 100:.1f} points ({r['model']} on "
                f"{r['dataset']}, seed {r['seed']})."
            )
    collapsed = [r for r in runs if r.finished and r["collapsed"]]
    if collapsed:
        more = f"; and {len(collapsed) - 6} more" if len(collapsed) > 6 else ""
        f.findings.append(
            f"{len(collapsed)} of {len(done)} run(s) collapsed (the collapse guard fired): "
            + "; ".join(
                f"{r['model']} on {r['dataset']} seed {r['seed']} ({_short(r['flags'][0]) if r['flags'] else 'flagged'})"
                for r in collapsed[:6]
            )
            + more
            + "."
        )
    elif done:
        shares = [
            (((r.results or {}).get("metrics") or {}).get("test") or {}).get("majority_fraction")
            for r in done
        ]
        known = [(s, r) for s, r in zip(shares, done, strict=True) if isinstance(s, (int, float))]
        if known:
            s, r = max(known, key=lambda t: t[0])
            f.findings.append(
                f"No run collapsed to one class; the most one-sided predictions put {pct(s)} of the test "
                f"images in one class ({r['model']} on {r['dataset']}, seed {r['seed']})."
            )
        else:
            f.findings.append(f"No run collapsed to one class ({len(done)} runs checked).")
    failed = [r for r in runs if r["status"] == "failed"]
    if failed:
        f.findings.append(
            f"{len(failed)} run(s) failed and are missing from the table: "
            + "; ".join(
                f"{r['model']} on {r['dataset']} seed {r['seed']} ({r['error']})"
                for r in failed[:5]
            )
            + "."
        )


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _published(f: Findings, per_dataset: dict[str, list[Group]]) -> None:
    method = load_published()["baseline_method"]
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
        text += f". Models above it: {', '.join(beaten) if beaten else 'none'}."
        f.findings.append(text)


def _reference_study(f: Findings, groups: list[Group]) -> None:
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
            n_c = len(g.collapsed_runs)
            text += (
                f"; the reference run collapsed (validation said {pct(ref.get('val_acc'))}), ours "
                + (
                    f"collapsed in {n_c} of {g.n} runs"
                    if n_c
                    else f"did not collapse in any of {g.n} runs"
                )
            )
        f.findings.append(text + ".")


def _provenance(f: Findings, runs: list[Run]) -> None:
    done = [r for r in runs if r.finished]
    unofficial = [r for r in done if r["data_md5_matches"] is False or r["data_official"] is False]
    if unofficial:
        names = sorted({r["dataset"] for r in unofficial})
        f.findings.append(
            f"Data provenance: {len(unofficial)} of {len(done)} runs used a data file that is not the official "
            f"one (MD5 differs) for {', '.join(names)}; their numbers are not directly comparable with "
            "published results."
        )
    elif done and all(r["data_md5_matches"] is True for r in done):
        f.findings.append(
            f"Data provenance: all {len(done)} runs used data files whose MD5 matches the official one."
        )
    elif done:
        f.findings.append(
            "Data provenance: some runs did not record whether their data file was the official one."
        )
    for name, lic in sorted({(r["dataset"], r["license"]) for r in done if r["license"]}):
        if "NC" in lic.upper().split("-") or "BY-NC" in lic.upper():
            f.findings.append(
                f"License: {name} is {lic}; models trained on it and these results are for non-commercial use."
            )


def _recommend(f: Findings, per_dataset: dict[str, list[Group]], groups: list[Group]) -> None:
    rec = f.recommendations
    for cmp in f.comparisons:
        w, r = cmp.winner, cmp.runner_up
        if all(g.collapsed_runs for g in per_dataset[cmp.dataset]):
            rec.append(
                f"For {cmp.dataset}, no model is usable as trained: every one collapsed in at least one "
                "run; train longer and with --class-balance weighted_loss before choosing."
            )
            continue
        if w.collapsed_runs or (r is not None and r.collapsed_runs):
            healthy = [g for g in per_dataset[cmp.dataset] if not g.collapsed_runs]
            rec.append(
                f"For {cmp.dataset}, use {healthy[0].label} ({pct(healthy[0].stat('test_acc').mean)}), the most "
                "accurate model that never collapsed."
            )
            continue
        if r is None:
            rec.append(
                f"For {cmp.dataset}, {w.label} is the only model measured; add others to compare."
            )
        elif cmp.significant:
            rec.append(
                f"For {cmp.dataset}, use {w.label}: it beats {r.label} by more than the seed noise."
            )
        else:
            cheaper = min((w, r), key=lambda g: g.stat("n_params").mean or math.inf)
            why = "untested with one seed" if cmp.significant is None else f"p = {cmp.p_value:.2g}"
            rec.append(
                f"For {cmp.dataset}, {w.label} and {r.label} are not separated by the seeds ({why}): prefer "
                f"the smaller {cheaper.label} ({_params(cheaper)} parameters) or run more seeds (--seeds 5)."
            )
    if f.most_efficient and f.best_overall and f.most_efficient != f.best_overall:
        e = max(
            (g for g in groups if g.label == f.most_efficient),
            key=lambda g: g.stat("efficiency").mean or 0,
        )
        if e.collapsed_runs:
            e = None
    else:
        e = None
    if e is not None:
        best = next((g for g in per_dataset[dataset_unit(e)] if g.label == f.best_overall), None)
        if best is not None and best.stat("n_params").mean and e.stat("n_params").mean:
            ratio = best.stat("n_params").mean / e.stat("n_params").mean
            share = e.stat("test_acc").mean / best.stat("test_acc").mean
            rec.append(
                f"Where size or latency matter, {e.label} keeps {100 * share:.0f}% of {best.label}'s accuracy on "
                f"{dataset_unit(e)} with {ratio:.1f}x {'fewer' if ratio >= 1 else 'more'} parameters."
            )
    bad = [g for g in groups if g.collapsed_runs]
    if bad:
        rec.append(
            "Do not use as trained (collapsed): "
            + ", ".join(
                f"{g.label} on {dataset_unit(g)} ({len(g.collapsed_runs)} of {g.n} runs)"
                for g in bad
            )
            + "; retrain with --class-balance weighted_loss and check per-class recall."
        )
    for unit, gs in per_dataset.items():
        ref = baseline(gs[0].dataset)
        acc = gs[0].stat("test_acc").mean
        if ref and acc is not None and acc < ref["acc"]:
            epochs = gs[0].stat("epochs_completed").mean
            trained = f" (it trained {epochs:.0f} epochs)" if epochs else ""
            rec.append(
                f"{unit}: the best model{trained} is {abs(100 * (acc - ref['acc'])):.1f} points below the published "
                "ResNet-18 (28); train longer (--epochs or a larger --total-time-budget) or on a GPU before "
                "drawing conclusions."
            )
    if any("not the official" in s for s in f.findings):
        rec.append(
            "Re-run on the official data files before citing these numbers next to published ones."
        )


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
