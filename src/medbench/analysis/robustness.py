"""Robustness of trained runs to the MedMNIST-C corruptions of their dataset.

Each run's model is evaluated on its test split under every corruption of its dataset
(`medbench.data.corruptions`) at severities 1-5, applied on the fly on the device at the run's
own image size, before the normalisation the model expects. Scores follow MedMNIST-C
(Di Salvo et al. 2024, after Hendrycks & Dietterich's mCE): with E the balanced error
(1 - balanced accuracy), per corruption c

    BE_c  = sum_s E_{s,c}(model) / sum_s E_{s,c}(baseline)
    rBE_c = sum_s (E_{s,c}(model) - E_clean(model)) / sum_s (E_{s,c}(baseline) - E_clean(baseline))

and BE, rBE are their means over the dataset's corruptions. The baseline is a named
medbench model trained at the same size on the same dataset (its errors averaged over
its seeds), so a baseline's own BE and rBE average to 1 over its seeds. The paper's
AlexNet numbers are for 224-px images and are not used.

Every run of a dataset sees the same corrupted images: the generator is seeded per
(seed, corruption, severity) on the evaluation device.

This module computes: the scores (`evaluate_robustness`, `evaluate_runs` with its per-run
cache), BE/rBE and the per-model summaries (`summarize`). The CSVs, figures and report.md
are written and read back by `medbench.analysis.robustness_files`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medbench.data import load_dataset
from medbench.data.corruptions import (
    SEVERITIES,
    CorruptionSpec,
    corrupt,
    dataset_corruptions,
    image_scale,
)
from medbench.errors import MedbenchError
from medbench.runs.results import recorded_data_dir
from medbench.scoring import metrics
from medbench.training import checkpoint as ckpt
from medbench.training.inference import (
    EVAL_BATCH,
    labels_numpy,
    load_trained_model,
    normalize,
    to_unit_float,
)
from medbench.utils.fsutil import atomic_write_json
from medbench.utils.runtime import place_model, resolve_runtime

DEFAULT_BASELINE = "resnet18"


@dataclass
class Score:
    """Test metrics under one corruption at one severity (severity 0: the clean images)."""

    corruption: str
    family: str
    severity: int
    balanced_error: float
    acc: float
    auc: float

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Score:
        return cls(**obj)


@dataclass
class RunRobustness:
    """One run's scores on its clean and corrupted test split."""

    run_dir: str
    dataset: str
    model: str
    seed: int | None
    image_size: int
    n_test: int
    clean: Score
    scores: list[Score] = field(default_factory=list)
    augment: str = "auto"  # the training augmentation policy

    @property
    def label(self) -> str:
        """The model's name, with its augmentation where that is not the default one, so
        that runs trained with and without e.g. `medmnistc` are summarised apart."""
        return self.model if self.augment in ("auto", "basic") else f"{self.model}+{self.augment}"

    def errors(self) -> dict[str, list[float]]:
        """Balanced error per corruption, severities in order."""
        out: dict[str, list[float]] = {}
        for s in sorted(self.scores, key=lambda s: s.severity):
            out.setdefault(s.corruption, []).append(s.balanced_error)
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RunRobustness:
        fields = {k: v for k, v in obj.items() if k not in ("clean", "scores")}
        return cls(
            **fields,
            clean=Score.from_json(obj["clean"]),
            scores=[Score.from_json(s) for s in obj["scores"]],
        )


# ----------------------------------------------------------------------------- BE / rBE


def relative_errors(
    errors: Mapping[str, Sequence[float]],
    clean: float,
    baseline_errors: Mapping[str, Sequence[float]],
    baseline_clean: float,
) -> dict[str, tuple[float, float]]:
    """(BE_c, rBE_c) per corruption c, MedMNIST-C's definitions; NaN where the baseline's
    denominator is zero (a corruption that leaves the baseline's error unchanged)."""
    out = {}
    for c, e in errors.items():
        if c not in baseline_errors:
            raise MedbenchError(f"the baseline has no scores for corruption {c!r}")
        b = baseline_errors[c]
        if len(b) != len(e):
            raise MedbenchError(f"{c}: {len(e)} severities against the baseline's {len(b)}")
        be_den = float(sum(b))
        rbe_den = float(sum(x - baseline_clean for x in b))
        be = float(sum(e)) / be_den if be_den else math.nan
        rbe = float(sum(x - clean for x in e)) / rbe_den if rbe_den else math.nan
        out[c] = (be, rbe)
    return out


def mean_relative_errors(per_corruption: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """BE and rBE: the means of BE_c and rBE_c over the corruptions where they are defined
    (a corruption that leaves the baseline's error unchanged has no rBE_c: it is left out,
    and `undefined_rbe` names it); NaN when none is."""

    def mean(values: list[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    return (
        mean([v[0] for v in per_corruption.values()]),
        mean([v[1] for v in per_corruption.values()]),
    )


def undefined_rbe(summary: ModelSummary) -> list[str]:
    """The corruptions whose rBE_c is undefined for `summary` (left out of its rBE)."""
    return [c for c, v in summary.per_corruption.items() if math.isnan(v["rbe"].mean)]


# ----------------------------------------------------------------------------- evaluation


def balanced_error(y: np.ndarray, probs: np.ndarray, task: str) -> float:
    return 1.0 - float(metrics.evaluate(y, probs, task)["balanced_acc"])


def _score(
    spec: CorruptionSpec | None, severity: int, y: np.ndarray, logits: np.ndarray, task: str
) -> Score:
    probs = metrics.probabilities_from_logits(logits, task)
    return Score(
        corruption=spec.name if spec else "clean",
        family=spec.family if spec else "clean",
        severity=severity,
        balanced_error=balanced_error(y, probs, task),
        acc=metrics.official_acc(y, probs, task),
        auc=metrics.official_auc(y, probs, task),
    )


@torch.no_grad()
def corrupted_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    runtime: Any,
    transform: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = EVAL_BATCH,
) -> np.ndarray:
    """Logits for uint8 (N, H, W, C) images with `transform` applied to each [0, 1]
    batch before the model's normalisation."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(transform(to_unit_float(images[start : start + batch_size], runtime)))
        with runtime.autocast():
            out.append(model(x).float().cpu())
    return torch.cat(out).numpy()


def corruption_seed(seed: int, index: int, severity: int) -> int:
    return seed * 1_000_003 + index * 10 + severity


def evaluate_robustness(
    run: str | Path,
    *,
    data_dir: str | None = None,
    device: str = "auto",
    seed: int = 0,
    severities: Sequence[int] = SEVERITIES,
    on_score: Callable[[Score], None] | None = None,
) -> RunRobustness:
    """Evaluate a finished run on its dataset's clean and corrupted test split."""
    model, meta = load_trained_model(run)
    specs = dataset_corruptions(meta["dataset"])
    runtime = resolve_runtime(device, "auto", True)
    place_model(model, runtime)
    data_dir = data_dir or recorded_data_dir(ckpt.resolve_model_file(run))
    data = load_dataset(meta["dataset"], meta["image_size"], data_dir, progress=False)
    test = data.split("test")
    y, task, scale = labels_numpy(test.labels), meta["task"], image_scale(meta["image_size"])
    clean = _score(None, 0, y, corrupted_logits(model, test.images, runtime, lambda x: x), task)
    result = RunRobustness(
        run_dir=str(Path(run)),
        dataset=meta["dataset"],
        model=meta["model"],
        seed=meta.get("seed"),
        image_size=meta["image_size"],
        n_test=len(y),
        augment=_training_augment(run),
        clean=clean,
    )
    for index, spec in enumerate(specs):
        for s in severities:
            gen = torch.Generator(device=runtime.device)
            gen.manual_seed(corruption_seed(seed, index, s))

            def transform(
                x: torch.Tensor, spec: CorruptionSpec = spec, s: int = s, gen: torch.Generator = gen
            ) -> torch.Tensor:
                return corrupt(x, spec, s, gen, scale)

            logits = corrupted_logits(model, test.images, runtime, transform)
            result.scores.append(_score(spec, s, y, logits, task))
            if on_score:
                on_score(result.scores[-1])
    return result


def evaluate_runs(
    runs: Sequence[str | Path],
    cache_dir: str | Path | None = None,
    *,
    data_dir: str | None = None,
    device: str = "auto",
    seed: int = 0,
    on_run: Callable[[int, Path], None] | None = None,
    on_score: Callable[[Score], None] | None = None,
) -> list[RunRobustness]:
    """`evaluate_robustness` of each run. With `cache_dir`, each run's scores are kept
    there (one JSON file per run and corruption seed, written atomically) and read back
    instead of computed again, so a long evaluation that stops continues where it was."""
    results = []
    for k, run in enumerate(map(Path, runs), 1):
        file = None if cache_dir is None else Path(cache_dir) / _cache_name(run, seed)
        if file is not None and file.is_file():
            cached = RunRobustness.from_json(json.loads(file.read_text()))
            if cached.run_dir == str(run):
                results.append(cached)
                continue
        if on_run:
            on_run(k, run)
        result = evaluate_robustness(
            run, data_dir=data_dir, device=device, seed=seed, on_score=on_score
        )
        if file is not None:
            atomic_write_json(file, result.to_json())
        results.append(result)
    return results


def _cache_name(run: Path, seed: int) -> str:
    """<dataset>-<size>-<model>-<run folder>-s<seed>.json for a grid's runs/<d>-<size>/<m>/<seed>."""
    return f"{run.parent.parent.name}-{run.parent.name}-{run.name}-s{seed}.json"


def _training_augment(run: str | Path) -> str:
    """The augmentation policy a run's results.json records ('auto' where it has none)."""
    results = ckpt.resolve_model_file(run).parent / "results.json"
    try:
        return str(json.loads(results.read_text())["config"].get("augment", "auto"))
    except (OSError, ValueError, KeyError, TypeError):
        return "auto"


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders: each path that holds a results.json, else every finished run below it
    (a benchmark's output folder)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / "results.json").is_file():
            found.append(p)
            continue
        if not p.is_dir():
            raise MedbenchError(f"{p} is neither a run folder nor a folder of runs")
        below = sorted(
            r.parent for r in p.rglob("results.json") if (r.parent / "model.pt").is_file()
        )
        if not below:
            raise MedbenchError(f"{p} holds no finished run (no results.json with a model.pt)")
        found.extend(below)
    return list(dict.fromkeys(found))


# ----------------------------------------------------------------------------- summaries


@dataclass
class Spread:
    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        v = np.asarray(values, dtype=float)
        return cls(float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.mean):
            return "n/a"
        return (
            f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"
            if self.n > 1
            else f"{self.mean:.{digits}f}"
        )


@dataclass
class ModelSummary:
    """One model on one dataset and size, over its seeds (mean and sample std)."""

    dataset: str
    image_size: int
    model: str
    baseline: str
    n_seeds: int
    clean_error: Spread
    corrupted_error: Spread  # mean over corruptions and severities
    be: Spread
    rbe: Spread
    per_corruption: dict[str, dict[str, Spread]]  # corruption -> error / be / rbe
    per_severity: dict[int, Spread]  # severity -> error, mean over corruptions

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _mean_errors(results: Sequence[RunRobustness]) -> tuple[dict[str, list[float]], float]:
    per = [r.errors() for r in results]
    mean = {c: list(np.mean([p[c] for p in per], axis=0)) for c in per[0]}
    return mean, float(np.mean([r.clean.balanced_error for r in results]))


def _per_corruption(
    errors: list[dict[str, list[float]]], rel: list[dict[str, tuple[float, float]]]
) -> dict[str, dict[str, Spread]]:
    return {
        c: {
            "error": Spread.of([float(np.mean(e[c])) for e in errors]),
            "be": Spread.of([x[c][0] for x in rel]),
            "rbe": Spread.of([x[c][1] for x in rel]),
        }
        for c in errors[0]
    }


def _per_severity(runs: list[RunRobustness]) -> dict[int, Spread]:
    """Severity -> the error averaged over corruptions, spread over runs."""
    out = {}
    for s in sorted({sc.severity for sc in runs[0].scores}):
        out[s] = Spread.of(
            [float(np.mean([x.balanced_error for x in r.scores if x.severity == s])) for r in runs]
        )
    return out


def _summarize_model(
    runs: list[RunRobustness], baseline: list[RunRobustness], name: str
) -> ModelSummary:
    base_errors, base_clean = _mean_errors(baseline)
    rel = [
        relative_errors(r.errors(), r.clean.balanced_error, base_errors, base_clean) for r in runs
    ]
    errors = [r.errors() for r in runs]
    means = [mean_relative_errors(x) for x in rel]
    return ModelSummary(
        dataset=runs[0].dataset,
        image_size=runs[0].image_size,
        model=runs[0].label,
        baseline=name,
        n_seeds=len(runs),
        clean_error=Spread.of([r.clean.balanced_error for r in runs]),
        corrupted_error=Spread.of(
            [float(np.mean([np.mean(v) for v in e.values()])) for e in errors]
        ),
        be=Spread.of([m[0] for m in means]),
        rbe=Spread.of([m[1] for m in means]),
        per_corruption=_per_corruption(errors, rel),
        per_severity=_per_severity(runs),
    )


def summarize(
    results: Sequence[RunRobustness], baseline: str = DEFAULT_BASELINE
) -> list[ModelSummary]:
    """One summary per (dataset, size, model), each against `baseline`'s runs of the same
    dataset and size."""
    groups: dict[tuple[str, int, str], list[RunRobustness]] = {}
    for r in results:
        groups.setdefault((r.dataset, r.image_size, r.label), []).append(r)
    out = []
    for (dataset, size, _), runs in groups.items():
        base = groups.get((dataset, size, baseline))
        if not base:
            raise MedbenchError(
                f"no {baseline} run of {dataset} at {size} px among the runs given; BE and rBE "
                "need the baseline trained at the same size (add its runs or choose --baseline)"
            )
        out.append(_summarize_model(runs, base, baseline))
    return sorted(out, key=lambda s: (s.dataset, s.image_size, s.model))
