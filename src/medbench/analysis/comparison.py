"""Paired comparisons of models on one dataset, from finished runs' saved predictions.

`compare_runs(*paths)` reads run folders (or benchmark folders holding them), groups the runs
by model, and tests every pair of models on the same test images: the AUC difference by
DeLong's test (a paired bootstrap for multi-class and multi-label sets), the accuracy
difference by McNemar's test (a paired bootstrap for multi-label sets), both corrected by
Holm over all the pairs, with the smallest differences the test split can resolve beside
them. Nothing is re-trained or re-run: the numbers come from each run's predictions.npz.
The statistics are `medbench.scoring.stats`; docs/statistics.md describes them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medbench.errors import MedbenchError
from medbench.runs.results import RunResults, find_run_folders, read_predictions, read_results
from medbench.scoring import metrics, stats
from medbench.training.config import TrainConfig, config_hash

# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunPredictions:
    """One finished run's test predictions, with what identifies its model and seed."""

    run_dir: Path
    model: str
    config_hash: str
    seed: int
    dataset: str
    size: int
    task: str
    labels: np.ndarray  # (N,) class indices, or (N, L) 0/1 for multi-label
    probs: np.ndarray  # (N, C) the probabilities the run's reported test metrics use


def _config_hash(results: RunResults) -> str:
    try:
        return config_hash(TrainConfig.from_dict(dict(results.config)))
    except (MedbenchError, TypeError, ValueError):  # an older config: hash what it holds
        return "unknown"


def load_run(run_dir: str | Path) -> RunPredictions:
    """A finished run's test labels and probabilities: the softmax (multi-label: sigmoid)
    of its saved test logits at temperature 1, which are the probabilities its reported
    `metrics.test` numbers come from; the saved `test_probs` where a file has no logits."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    if results.status != "finished":
        raise MedbenchError(f"{run_dir} is not a finished run (status {results.status!r})")
    arrays = read_predictions(run_dir)
    task = str(results.dataset.get("task") or "")
    if "test_labels" not in arrays or not {"test_logits", "test_probs"} & set(arrays):
        raise MedbenchError(f"{run_dir / 'predictions.npz'} has no test labels and predictions")
    if "test_logits" in arrays:
        probs = metrics.probabilities_from_logits(arrays["test_logits"], task)
    else:
        probs = np.asarray(arrays["test_probs"], dtype=np.float64)
    labels = np.asarray(arrays["test_labels"])
    if task != metrics.MULTI_LABEL:
        labels = labels.reshape(len(labels), -1)[:, 0]
    return RunPredictions(
        run_dir=run_dir,
        model=results.model.name,
        config_hash=_config_hash(results),
        seed=int(results.config.get("seed") or 0),
        dataset=str(results.dataset.get("name") or results.config.get("dataset")),
        size=int(results.config.get("size") or results.dataset.get("size") or 28),
        task=task,
        labels=labels,
        probs=probs,
    )


def _load_all(paths: Sequence[str | Path]) -> tuple[list[RunPredictions], list[str]]:
    """Runs given by name must load; runs found inside a folder that cannot (unfinished,
    failed, another kind of result) are skipped and listed."""
    runs, skipped = [], []
    for folder, given in find_run_folders(paths):
        try:
            runs.append(load_run(folder))
        except MedbenchError as exc:
            if given:
                raise
            skipped.append(f"{folder}: {exc}")
    if not runs:
        raise MedbenchError(
            f"no finished run with predictions in {', '.join(map(str, paths))}; "
            "give finished run folders or a benchmark folder"
        )
    return runs, skipped


def _check_one_split(runs: list[RunPredictions]) -> None:
    first = runs[0]
    for r in runs[1:]:
        if (r.dataset, r.size) != (first.dataset, first.size):
            raise MedbenchError(
                f"{r.run_dir} is {r.dataset} at {r.size}px but {first.run_dir} is "
                f"{first.dataset} at {first.size}px; compare runs of one dataset and size"
            )
        if not np.array_equal(r.labels, first.labels):
            raise MedbenchError(
                f"{r.run_dir} and {first.run_dir} were tested on different test images; "
                "compare runs evaluated on the same data files"
            )


# --------------------------------------------------------------------------- groups


@dataclass
class ModelGroup:
    """The runs of one model (one configuration): one per seed."""

    label: str
    runs: dict[int, RunPredictions]  # by seed

    @property
    def seeds(self) -> list[int]:
        return sorted(self.runs)


def group_runs(runs: list[RunPredictions]) -> tuple[list[ModelGroup], list[str]]:
    """Runs grouped by model name, plus the config hash where one model has several
    configurations; a second run of the same model, configuration and seed is skipped."""
    hashes: dict[str, set[str]] = {}
    for r in runs:
        hashes.setdefault(r.model, set()).add(r.config_hash)
    groups: dict[str, ModelGroup] = {}
    skipped = []
    for r in runs:
        label = r.model if len(hashes[r.model]) == 1 else f"{r.model}@{r.config_hash[:6]}"
        group = groups.setdefault(label, ModelGroup(label, {}))
        if r.seed in group.runs:
            skipped.append(f"{r.run_dir}: a second {label} run of seed {r.seed}")
            continue
        group.runs[r.seed] = r
    return sorted(groups.values(), key=lambda g: g.label), skipped


# --------------------------------------------------------------------------- pairs


@dataclass
class PairComparison:
    """Model a against model b on the same test images; differences are a - b."""

    model_a: str
    model_b: str
    seeds: list[int]  # the seeds both have (the runs averaged); empty: no seed in common
    n_runs_a: int
    n_runs_b: int
    auc_a: float
    auc_b: float
    auc_diff: float
    delong_z: float
    delong_p: float
    delong_method: str
    auc_correlation: float
    acc_a: float
    acc_b: float
    acc_diff: float
    a_only_right: int | None
    b_only_right: int | None
    mcnemar_p: float
    mcnemar_method: str
    delong_p_holm: float = math.nan
    mcnemar_p_holm: float = math.nan
    auc_better: str | None = None  # the model with the higher AUC where the corrected test says so
    acc_better: str | None = None
    per_seed: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _runs_for(
    a: ModelGroup, b: ModelGroup
) -> tuple[list[int], list[RunPredictions], list[RunPredictions]]:
    common = sorted(set(a.runs) & set(b.runs))
    if common:
        return common, [a.runs[s] for s in common], [b.runs[s] for s in common]
    return [], list(a.runs.values()), list(b.runs.values())


def _mean_probs(runs: list[RunPredictions]) -> np.ndarray:
    return np.asarray(np.mean([r.probs for r in runs], axis=0))


def _correct(labels: np.ndarray, probs: np.ndarray, task: str) -> np.ndarray:
    if task != metrics.MULTI_LABEL:  # (N, 1) labels would broadcast against (N,) predictions
        labels = np.asarray(labels).reshape(len(labels), -1)[:, 0]
    return np.asarray(metrics.predictions(probs, task) == labels)


def accuracy_test(
    labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, task: str, n_boot: int, seed: int
) -> tuple[float, int | None, int | None, str]:
    """(p, a-only right, b-only right, method): McNemar for single-label tasks; multi-label
    accuracy has one outcome per label, so a paired bootstrap of its difference."""
    if task == metrics.MULTI_LABEL:
        boot = stats.paired_bootstrap(labels, probs_a, probs_b, task, "acc", n_boot, seed)
        return boot.p, None, None, boot.method
    test = stats.mcnemar_test(_correct(labels, probs_a, task), _correct(labels, probs_b, task))
    return test.p, test.a_only, test.b_only, test.method


def _per_seed(seed: int, a: RunPredictions, b: RunPredictions, task: str) -> dict[str, Any]:
    """One matched seed's numbers; p-values where they are cheap (DeLong for binary AUC,
    McNemar for single-label accuracy), None where only a bootstrap would give them."""
    labels = a.labels
    row: dict[str, Any] = {
        "seed": seed,
        "auc_a": metrics.official_auc(labels, a.probs, task),
        "auc_b": metrics.official_auc(labels, b.probs, task),
        "acc_a": metrics.official_acc(labels, a.probs, task),
        "acc_b": metrics.official_acc(labels, b.probs, task),
        "delong_p": None,
        "mcnemar_p": None,
    }
    if task == "binary-class":
        row["delong_p"] = stats.delong_test(labels, a.probs, b.probs, task).p
    if task != metrics.MULTI_LABEL:
        ca, cb = _correct(labels, a.probs, task), _correct(labels, b.probs, task)
        row["mcnemar_p"] = stats.mcnemar_test(ca, cb).p
    return row


def compare_pair(
    a: ModelGroup, b: ModelGroup, task: str, n_boot: int = 2000, seed: int = 0
) -> PairComparison:
    """Test model a against model b on the seed-averaged test probabilities.

    Runs are matched by seed: each model's probabilities are averaged over the seeds both
    have (over all its seeds where they have none in common), and the tests run on those
    averages, image by image. Averaging takes most of the training-seed noise out of each
    model's predictions, so the tests ask whether the two models differ on these test
    images beyond test-set sampling, and each pair is one test per metric, which Holm's
    correction then counts once. The per-seed numbers (and cheap per-seed p-values) are
    kept in `per_seed` to show whether the seeds agree.
    """
    seeds, runs_a, runs_b = _runs_for(a, b)
    labels = runs_a[0].labels
    probs_a, probs_b = _mean_probs(runs_a), _mean_probs(runs_b)
    auc = stats.delong_test(labels, probs_a, probs_b, task, n_boot, seed)
    acc_a = metrics.official_acc(labels, probs_a, task)
    acc_b = metrics.official_acc(labels, probs_b, task)
    acc_p, a_only, b_only, acc_method = accuracy_test(labels, probs_a, probs_b, task, n_boot, seed)
    matched = zip(seeds, runs_a, runs_b, strict=True) if seeds else []
    per_seed = [_per_seed(s, ra, rb, task) for s, ra, rb in matched]
    return PairComparison(
        a.label,
        b.label,
        seeds,
        len(a.runs),
        len(b.runs),
        auc.auc_a,
        auc.auc_b,
        auc.auc_a - auc.auc_b,
        auc.z,
        auc.p,
        auc.method,
        auc.correlation,
        acc_a,
        acc_b,
        acc_a - acc_b,
        a_only,
        b_only,
        acc_p,
        acc_method,
        per_seed=per_seed,
    )


def _better(pair: PairComparison, diff: float, p_holm: float, alpha: float) -> str | None:
    if not p_holm < alpha or diff == 0:
        return None
    return pair.model_a if diff > 0 else pair.model_b


def correct_pairs(pairs: list[PairComparison], alpha: float) -> None:
    """Holm's correction over all the pairs, separately for the AUC and the ACC tests,
    and the better model of each pair where the corrected test says so."""
    delong = stats.holm([p.delong_p for p in pairs])
    mcnemar = stats.holm([p.mcnemar_p for p in pairs])
    for pair, p_auc, p_acc in zip(pairs, delong, mcnemar, strict=True):
        pair.delong_p_holm, pair.mcnemar_p_holm = p_auc, p_acc
        pair.auc_better = _better(pair, pair.auc_diff, p_auc, alpha)
        pair.acc_better = _better(pair, pair.acc_diff, p_acc, alpha)


# --------------------------------------------------------------------------- resolvable


def _class_counts(labels: np.ndarray, task: str, n_classes: int) -> tuple[list[int], list[int]]:
    """Positives and negatives of each AUC part: the one class of a binary task, each class
    one-vs-rest, or each label of a multi-label set."""
    n = len(labels)
    if task == metrics.MULTI_LABEL:
        pos = [int(v) for v in labels.sum(axis=0)]
    elif task == "binary-class":
        pos = [int(np.sum(labels == 1))]
    else:
        pos = [int(np.sum(labels == c)) for c in range(n_classes)]
    return pos, [n - p for p in pos]


def _mean(values: list[float]) -> float:
    defined = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def resolvable(
    pairs: list[PairComparison],
    labels: np.ndarray,
    task: str,
    n_classes: int,
    alpha: float,
    power: float,
) -> dict[str, Any]:
    """The smallest AUC and ACC differences this test split resolves at `power`, from its
    size and class balance, with the base AUC/ACC (mean over the compared models), the
    correlation of paired AUC estimates and the discordance estimated from the pairs."""
    pos, neg = _class_counts(labels, task, n_classes)
    base_auc = _mean([v for p in pairs for v in (p.auc_a, p.auc_b)])
    correlation = min(1.0, max(-1.0, _mean([p.auc_correlation for p in pairs])))
    out: dict[str, Any] = {
        "power": power,
        "alpha": alpha,
        "base_auc": base_auc,
        "auc_correlation": correlation,
        "auc": math.nan,
    }
    if min(pos + neg) > 0 and not math.isnan(base_auc) and not math.isnan(correlation):
        out["auc"] = stats.resolvable_difference(pos, neg, base_auc, correlation, power, alpha)
    out["base_acc"] = _mean([v for p in pairs for v in (p.acc_a, p.acc_b)])
    if task == metrics.MULTI_LABEL:
        out.update(
            discordance=None,
            acc=None,
            acc_note="multi-label accuracy has one outcome per label, not one per image: "
            "no McNemar sample size",
        )
        return out
    n = len(labels)
    discordance = _mean([_discordant(p) / n for p in pairs])
    out["discordance"] = discordance
    out["acc"] = stats.resolvable_accuracy_difference(
        n, out["base_acc"], discordance if discordance > 0 else None, power, alpha
    )
    return out


def _discordant(pair: PairComparison) -> int:
    """The test images exactly one model of a single-label pair gets right (McNemar's
    discordant pairs); a multi-label pair has no such count."""
    if pair.a_only_right is None or pair.b_only_right is None:
        raise TypeError(f"{pair.model_a} vs {pair.model_b} has no McNemar counts (multi-label)")
    return pair.a_only_right + pair.b_only_right


# --------------------------------------------------------------------------- the comparison


@dataclass
class Comparison:
    """Every pair of models of one dataset, tested and corrected, with a header that says
    what was compared, how, and what differences the test split can resolve."""

    header: dict[str, Any]
    pairs: list[PairComparison]

    def to_json(self) -> dict[str, Any]:
        """{"header": {...}, "pairs": [one record per pair]}; an undefined number is None."""
        return {
            "header": json_safe(self.header),
            "pairs": [json_safe(p.to_json()) for p in self.pairs],
        }

    def format_table(self) -> str:
        return format_table(self)


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinite floats replaced by None (strict JSON has neither)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def compare_runs(
    *paths: str | Path,
    alpha: float = 0.05,
    power: float = 0.8,
    n_boot: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare every pair of models among the finished runs in `paths` (run folders, or
    benchmark folders searched for them), all on one dataset and size.

    Runs are grouped by model label (the model name, plus the config hash where one model
    was run with several configurations) and each pair is tested by `compare_pair` (on
    seed-averaged probabilities of the seeds both models have), Holm-corrected over all
    pairs (`delong_p_holm`, `mcnemar_p_holm`). The header states the dataset, the runs,
    the methods and the resolvable AUC/ACC differences with the estimates they rest on.
    """
    if not 0 < alpha < 1 or not 0 < power < 1 or n_boot < 1:
        raise MedbenchError(
            f"need 0 < alpha < 1, 0 < power < 1 and n_boot >= 1; got {alpha}, {power}, {n_boot}"
        )
    runs, skipped = _load_all(paths)
    _check_one_split(runs)
    groups, duplicates = group_runs(runs)
    if len(groups) < 2:
        raise MedbenchError(
            f"a comparison needs runs of at least two models; found only {groups[0].label} "
            f"({len(runs)} run{'s' if len(runs) != 1 else ''})"
        )
    first = runs[0]
    pairs = [
        compare_pair(a, b, first.task, n_boot, seed) for a, b in itertools.combinations(groups, 2)
    ]
    correct_pairs(pairs, alpha)
    n_classes = first.probs.shape[1]
    header = {
        "dataset": first.dataset,
        "size": first.size,
        "task": first.task,
        "n_test": len(first.labels),
        "n_runs": len(runs),
        "models": {
            g.label: {"seeds": g.seeds, "runs": [str(r.run_dir) for r in g.runs.values()]}
            for g in groups
        },
        "skipped": skipped + duplicates,
        "alpha": alpha,
        "n_boot": n_boot,
        "resolvable": resolvable(pairs, first.labels, first.task, n_classes, alpha, power),
        "methods": _methods(first.task, len(pairs)),
    }
    return Comparison(header, pairs)


def _methods(task: str, n_pairs: int) -> dict[str, str]:
    auc = (
        "DeLong test (Sun & Xu 2014 fast algorithm)"
        if task == "binary-class"
        else "paired bootstrap of the official averaged AUC, stratified by class"
        if task != metrics.MULTI_LABEL
        else "paired bootstrap of the official AUC averaged over labels"
    )
    acc = (
        "paired bootstrap of the official accuracy"
        if task == metrics.MULTI_LABEL
        else "McNemar (exact binomial under 25 discordant images, else chi-square with "
        "continuity correction)"
    )
    return {
        "pairing": "seed-matched: each model's test probabilities averaged over the seeds "
        "both models have (all its seeds where none is shared), tested image by image",
        "auc": auc,
        "acc": acc,
        "correction": f"Holm over the {n_pairs} pair{'s' if n_pairs != 1 else ''}, "
        "separately for AUC and accuracy",
        "resolvable": "AUC: Hanley-McNeil variance with the paired correlation; accuracy: "
        "Connor (1987) McNemar sample size, solved for the difference",
    }


# --------------------------------------------------------------------------- text


def _num(value: float | None, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _p(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def _row(p: PairComparison) -> list[str]:
    seeds = ",".join(map(str, p.seeds)) if p.seeds else "none shared"
    return [
        p.model_a,
        p.model_b,
        seeds,
        _num(p.auc_a),
        _num(p.auc_b),
        _num(p.auc_diff, "+.4f"),
        _p(p.delong_p),
        _p(p.delong_p_holm),
        _num(p.acc_a),
        _num(p.acc_b),
        _num(p.acc_diff, "+.4f"),
        _p(p.mcnemar_p),
        _p(p.mcnemar_p_holm),
    ]


def finding(pair: PairComparison, header: dict[str, Any]) -> str:
    """One sentence per pair: a model is better only where the corrected test says so."""
    res, split = header["resolvable"], f"{header['dataset']}'s {header['n_test']} test images"
    parts = []
    for metric, better, diff, p_holm, limit in (
        ("AUC", pair.auc_better, pair.auc_diff, pair.delong_p_holm, res.get("auc")),
        ("ACC", pair.acc_better, pair.acc_diff, pair.mcnemar_p_holm, res.get("acc")),
    ):
        if better:
            parts.append(f"{better} better by {abs(diff):.4f} {metric} (Holm p {_p(p_holm)})")
        else:
            unresolved = (
                f"; differences under {limit:.3f} {metric} cannot be resolved on {split}"
                if limit is not None and math.isfinite(limit)
                else ""
            )
            parts.append(
                f"indistinguishable on this test split by {metric} (difference {diff:+.4f}, "
                f"Holm p {_p(p_holm)}{unresolved})"
            )
    return f"{pair.model_a} vs {pair.model_b}: " + "; ".join(parts)


def format_table(comparison: Comparison) -> str:
    """The pairwise table as aligned text, with the resolvable differences and a finding
    per pair below it."""
    h = comparison.header
    head = [
        "model A",
        "model B",
        "seeds",
        "AUC A",
        "AUC B",
        "dAUC",
        "p",
        "p Holm",
        "ACC A",
        "ACC B",
        "dACC",
        "p",
        "p Holm",
    ]
    rows = [head] + [_row(p) for p in comparison.pairs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        f"{h['dataset']} ({h['size']}px, {h['task']}, {h['n_test']} test images): "
        f"{len(h['models'])} models, {h['n_runs']} runs",
        *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows),
        "",
        f"AUC p: {h['methods']['auc']}; ACC p: {h['methods']['acc']}; {h['methods']['correction']}.",
        _resolvable_line(h),
        *(finding(p, h) for p in comparison.pairs),
    ]
    if h["skipped"]:
        lines.append(f"skipped {len(h['skipped'])} folder(s): " + "; ".join(h["skipped"]))
    return "\n".join(lines)


def _resolvable_line(h: dict[str, Any]) -> str:
    r = h["resolvable"]
    acc = (
        f"ACC {_num(r['acc'], '.3f')} (base ACC {_num(r['base_acc'], '.3f')}, discordance "
        f"{_num(r['discordance'], '.3f')})"
        if r.get("acc") is not None
        else "ACC not computed (multi-label)"
    )
    return (
        f"Resolvable at {r['power']:.0%} power, alpha {r['alpha']:g}: AUC {_num(r['auc'], '.3f')} "
        f"(base AUC {_num(r['base_auc'], '.3f')}, paired correlation "
        f"{_num(r['auc_correlation'], '.2f')}), {acc}."
    )
