"""Ensembles of finished runs: probability averaging, validation weighting, greedy selection.

Members are any finished runs (models, seeds) of one dataset at one size. They are combined
from their saved `predictions.npz`, so building an ensemble needs no inference, except for
test-time augmentation (TTA), which re-runs each member on flipped images.

Each member's probabilities are its temperature-calibrated ones (the temperature each run
fitted on its validation split), so an over-confident architecture does not outvote a
well-calibrated one. Three ways to weight them:

- `average`: every member equally;
- `weighted`: in proportion to validation AUC above chance, max(AUC - 0.5, 0) (ACC when AUC
  is undefined), so a member at chance level gets no say;
- `greedy`: forward selection with replacement on the validation split (Caruana et al.
  2004, "Ensemble selection from libraries of models"), from the sorted initialisation:
  start with the N best members, N the prefix of the validation ranking whose average
  scores best; then repeatedly add (again, if it helps) the member that most improves the
  validation score of the average, and keep the best ensemble met on the way. A member
  added twice weighs twice. The score is validation AUC, ties broken by ACC.

TTA averages a member's probabilities over the image and its flips, only the flips the
dataset's orientation allows (`medbench.data.augment.ORIENTATION`: none for chest X-rays).

`build_ensemble` writes a folder: `ensemble.json` (method, members and weights, metadata,
results in the schema of a run's results.json), `predictions.npz`, and `members/` with a
copy of each selected member's model.pt, so `load_ensemble(folder)` works after the runs
are moved or deleted.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medbench.analysis.comparison import accuracy_test
from medbench.data import load_dataset
from medbench.data.augment import ORIENTATION
from medbench.data.catalogue import dataset_info
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.runs.results import RunResults, find_run_folders, read_predictions
from medbench.scoring import metrics, stats
from medbench.training.checkpoint import resolve_model_file
from medbench.training.evaluation import test_intervals
from medbench.training.inference import load_trained_model, predict_logits
from medbench.utils.fsutil import atomic_files, json_text
from medbench.utils.runtime import place_model, resolve_runtime

METHODS = ("greedy", "average", "weighted")
# What a member's predictions.npz must hold to be combined.
MEMBER_ARRAYS = ("val_logits", "test_logits", "val_labels", "test_labels", "temperature")
ENSEMBLE_FORMAT = "medbench-ensemble"
FORMAT_VERSION = 1
GREEDY_MAX_STEPS = 50


# ----------------------------------------------------------------------------- members


@dataclass
class Member:
    """A finished run as an ensemble member: its results and calibrated probabilities."""

    run_dir: Path
    results: dict[str, Any]
    val_probs: np.ndarray
    test_probs: np.ndarray
    val_labels: np.ndarray
    test_labels: np.ndarray
    temperature: float

    @property
    def name(self) -> str:
        return f"{self.results['model']['name']}/seed{self.results['config']['seed']}"


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders (holding results.json) among `paths`; a folder without one is searched
    recursively, so a benchmark's output folder can be given whole."""
    return [folder for folder, _ in find_run_folders(paths)]


def load_member(run_dir: str | Path) -> Member:
    """Read a finished run's results.json and predictions.npz."""
    run_dir = Path(run_dir)
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError) as exc:
        raise MedbenchError(
            f"cannot read {run_dir / 'results.json'}: {exc}; is the run finished?"
        ) from None
    if not isinstance(results, dict):
        raise MedbenchError(f"{run_dir / 'results.json'} is not a medbench results file")
    if results.get("kind") is not None:  # an ensemble or a k-NN probe: no logits to combine
        raise MedbenchError(f"{run_dir} is a {results['kind']}, not a training run; leave it out")
    if results.get("status") != "finished":
        raise MedbenchError(f"{run_dir} is not a finished training run; finish it first")
    RunResults.from_json(results, run_dir / "results.json")  # refuses a file of the wrong shape
    arrays = read_predictions(run_dir)
    missing = [k for k in MEMBER_ARRAYS if k not in arrays]
    if missing:
        raise MedbenchError(
            f"{run_dir / 'predictions.npz'} lacks {', '.join(missing)}; it was not written by "
            "a finished medbench run of this version: re-run 'medbench evaluate' on the run"
        )
    task = results["dataset"]["task"]
    temperature = float(arrays["temperature"])
    return Member(
        run_dir=run_dir,
        results=results,
        val_probs=metrics.probabilities_from_logits(arrays["val_logits"], task, temperature),
        test_probs=metrics.probabilities_from_logits(arrays["test_logits"], task, temperature),
        val_labels=arrays["val_labels"],
        test_labels=arrays["test_labels"],
        temperature=temperature,
    )


def _check_compatible(members: list[Member]) -> None:
    if not members:
        raise MedbenchError("an ensemble needs at least one finished run; none was found")
    first = members[0]
    key = (first.results["dataset"]["name"], first.results["config"]["size"])
    for m in members[1:]:
        other = (m.results["dataset"]["name"], m.results["config"]["size"])
        if other != key:
            raise MedbenchError(
                f"{m.run_dir} is {other[0]} at {other[1]}px but {first.run_dir} is {key[0]} at "
                f"{key[1]}px; ensemble runs of one dataset and size"
            )
        if not (
            np.array_equal(m.val_labels, first.val_labels)
            and np.array_equal(m.test_labels, first.test_labels)
        ):
            raise MedbenchError(
                f"{m.run_dir} and {first.run_dir} were evaluated on different data files; "
                f"ensemble runs trained on the same files"
            )


# ----------------------------------------------------------------------------- weights


def selection_score(y_true: np.ndarray, probs: np.ndarray, task: str) -> tuple[float, float]:
    """(AUC, ACC) on a split; AUC is replaced by ACC where undefined. Compared as a tuple."""
    acc = metrics.official_acc(y_true, probs, task)
    auc = metrics.official_auc(y_true, probs, task)
    return (auc if math.isfinite(auc) else acc, acc)


def combine(probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """The weighted average of the members' probabilities."""
    return np.tensordot(np.asarray(weights, dtype=np.float64), np.stack(probs), axes=1)


def average_weights(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def validation_weights(val_scores: list[float]) -> np.ndarray:
    """Weights proportional to max(score - 0.5, 0); equal weights when no member beats chance."""
    above = np.clip(np.asarray(val_scores, dtype=np.float64) - 0.5, 0.0, None)
    return above / above.sum() if above.sum() > 0 else average_weights(len(above))


def greedy_weights(
    val_probs: list[np.ndarray], y_val: np.ndarray, task: str, max_steps: int = GREEDY_MAX_STEPS
) -> np.ndarray:
    """Caruana et al. 2004's ensemble selection with replacement and sorted initialisation;
    returns how often each member was picked, as weights summing to 1."""
    n = len(val_probs)
    singles = [selection_score(y_val, p, task) for p in val_probs]
    ranking = sorted(range(n), key=lambda i: singles[i], reverse=True)
    # Sorted initialisation: the best-scoring prefix of the ranking.
    prefix_scores = [
        selection_score(y_val, np.mean([val_probs[i] for i in ranking[:k]], axis=0), task)
        for k in range(1, n + 1)
    ]
    best_k = max(range(1, n + 1), key=lambda k: (prefix_scores[k - 1], -k))  # smallest on a tie
    counts = np.zeros(n)
    counts[ranking[:best_k]] = 1
    total = np.sum([val_probs[i] for i in ranking[:best_k]], axis=0)
    best_score, best_counts = prefix_scores[best_k - 1], counts.copy()
    for _ in range(max_steps):
        # Candidates in ranking order: on a tie the better single member wins.
        step_scores = [
            (selection_score(y_val, (total + val_probs[i]) / (counts.sum() + 1), task), i)
            for i in ranking
        ]
        score, pick = max(step_scores, key=lambda s: s[0])
        counts[pick] += 1
        total = total + val_probs[pick]
        if score > best_score:
            best_score, best_counts = score, counts.copy()
    return best_counts / best_counts.sum()


def ensemble_weights(members: list[Member], method: str) -> np.ndarray:
    if method not in METHODS:
        raise MedbenchError(f"ensemble method must be one of {', '.join(METHODS)}, not {method!r}")
    task = members[0].results["dataset"]["task"]
    if method == "average":
        return average_weights(len(members))
    if method == "weighted":
        y = members[0].val_labels
        return validation_weights([selection_score(y, m.val_probs, task)[0] for m in members])
    return greedy_weights([m.val_probs for m in members], members[0].val_labels, task)


# ----------------------------------------------------------------------------- TTA


def tta_views(dataset: str) -> list[str]:
    """The views TTA averages over: the image, plus the flips `dataset` allows."""
    symmetry = ORIENTATION.get(dataset)
    views = ["identity"]
    if symmetry is not None and symmetry.hflip:
        views.append("hflip")
    if symmetry is not None and symmetry.vflip:
        views.append("vflip")
    return views


def _view(images: torch.Tensor, view: str) -> torch.Tensor:
    """A view of uint8 (N, H, W, C) images or (N, D, H, W, C) volumes."""
    if view == "hflip":
        return images.flip(-2)
    if view == "vflip":
        return images.flip(-3)
    return images


def predict_views(
    model: torch.nn.Module,
    images: torch.Tensor,
    runtime,
    task: str,
    temperature: float,
    views: list[str],
) -> np.ndarray:
    """Calibrated probabilities averaged over `views` of the images."""
    return np.mean(
        [
            metrics.probabilities_from_logits(
                predict_logits(model, _view(images, v), runtime), task, temperature
            )
            for v in views
        ],
        axis=0,
    )


def _apply_tta(members: list[Member], views: list[str], data: Any, device: str) -> None:
    runtime = resolve_runtime(device, "auto", True)
    task = members[0].results["dataset"]["task"]
    for m in members:
        model, _ = load_trained_model(m.run_dir)
        place_model(model, runtime)
        m.val_probs = predict_views(model, data.val.images, runtime, task, m.temperature, views)
        m.test_probs = predict_views(model, data.test.images, runtime, task, m.temperature, views)


# ----------------------------------------------------------------------------- build


def build_ensemble(
    run_dirs: Sequence[str | Path],
    method: str = "greedy",
    out_dir: str | Path | None = None,
    tta: bool = False,
    *,
    data: Any = None,
    data_dir: str | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Combine finished runs into an ensemble and evaluate it on val and test.

    Returns results in the schema of a run's results.json where it applies (`metrics.val`,
    `metrics.test`, `model.n_params` summed over the selected members, `timing` summed),
    plus `members` (each with its weight and its own numbers) and `best_single` (the
    member with the best validation score). With `out_dir`, saves the ensemble there
    (see the module docstring). TTA needs the data: `data`, else loaded from `data_dir`.
    """
    members = [load_member(r) for r in find_runs(list(run_dirs))]
    _check_compatible(members)
    first = members[0].results
    dataset, size = first["dataset"]["name"], first["config"]["size"]
    views = tta_views(dataset) if tta else ["identity"]
    if tta and len(views) == 1:
        warnings.warn(
            f"{dataset} allows no label-preserving flips; the ensemble is built without TTA",
            MedbenchWarning,
            stacklevel=2,
        )
    if len(views) > 1:
        if data is None:
            data = load_dataset(dataset, size, data_dir, progress=False)
        _apply_tta(members, views, data, device)
    weights = ensemble_weights(members, method)
    y_val, y_test = members[0].val_labels, members[0].test_labels
    val_probs = combine([m.val_probs for m in members], weights)
    test_probs = combine([m.test_probs for m in members], weights)
    results = _results(members, weights, method, views, val_probs, test_probs, y_val, y_test)
    if out_dir is not None:
        out_dir = Path(out_dir)
        _refuse_a_member_folder(out_dir, members)
        results["run_dir"] = str(out_dir)
        _save(
            out_dir, members, weights, method, views, results, val_probs, test_probs, y_val, y_test
        )
    return results


def _member_row(m: Member, weight: float, y_val: np.ndarray, task: str) -> dict[str, Any]:
    r = m.results
    return {
        "run_dir": str(m.run_dir),
        "name": m.name,
        "model": r["model"]["name"],
        "seed": r["config"]["seed"],
        "weight": float(weight),
        "val_score": selection_score(y_val, m.val_probs, task)[0],
        "val_auc": r["metrics"]["val"]["auc"],
        "test_acc": r["metrics"]["test"]["acc"],
        "test_auc": r["metrics"]["test"]["auc"],
        "test_ece_calibrated": r["metrics"].get("test_ece_calibrated"),
        "n_params": r["model"]["n_params"],
        "latency_ms_per_image": r["timing"].get("latency_ms_per_image"),
    }


def _results(
    members: list[Member],
    weights: np.ndarray,
    method: str,
    views: list[str],
    val_probs: np.ndarray,
    test_probs: np.ndarray,
    y_val: np.ndarray,
    y_test: np.ndarray,
) -> dict[str, Any]:
    first = members[0].results
    info = first["dataset"]
    task, names = info["task"], info["label_names"]
    chosen = [(m, w) for m, w in zip(members, weights, strict=True) if w > 0]
    val_m = metrics.evaluate(y_val, val_probs, task, names)
    test_m = metrics.evaluate(y_test, test_probs, task, names)
    flags = metrics.collapse_check(val_m, test_m, n_classes=info["n_classes"], task=task)
    n_params = sum(m.results["model"]["n_params"] for m, _ in chosen)
    flops = sum(m.results["model"].get("flops") or 0 for m, _ in chosen)
    n_views = len(views)
    rows = [_member_row(m, w, y_val, task) for m, w in zip(members, weights, strict=True)]
    best_index = max(range(len(rows)), key=lambda i: rows[i]["val_score"])
    best = rows[best_index]
    versus = versus_best_single(y_test, test_probs, members[best_index].test_probs, task)
    return {
        "schema_version": 1,
        "status": "finished",
        "kind": "ensemble",
        "method": method,
        "tta": n_views > 1,
        "tta_views": views,
        "run_dir": None,
        "config": {
            "dataset": info["name"],
            "size": first["config"]["size"],
            "model": f"ensemble:{method}",
            "seed": None,
            "method": method,
            "tta": n_views > 1,
        },
        "dataset": info,
        "model": {
            "name": f"ensemble:{method}",
            "n_params": n_params,
            "params_m": n_params / 1e6,
            "flops": flops * n_views,
            "gflops": flops * n_views / 1e9,
            "n_members": len(chosen),
        },
        "members": rows,
        "best_single": best,
        "versus_best_single": versus,
        "metrics": {
            "val": val_m,
            "test": test_m,
            "test_intervals": test_intervals(y_test, test_probs, task),
            "temperature": 1.0,  # members are combined after their own temperature scaling
            "val_ece_calibrated": val_m["ece"],
            "test_ece_calibrated": test_m["ece"],
        },
        "flags": flags,
        "collapsed": bool(flags),
        "timing": _timing([m for m, _ in chosen], n_views),
        "efficiency": 100.0 * test_m["acc"] / (n_params / 1e6) if n_params else None,
    }


def versus_best_single(
    y_test: np.ndarray, ensemble_probs: np.ndarray, single_probs: np.ndarray, task: str
) -> dict[str, Any]:
    """The ensemble against the best single run on the same test images, uncorrected:
    DeLong's test of AUC (a paired bootstrap beyond binary tasks) and McNemar's test of
    accuracy (a paired bootstrap for multi-label sets); reports correct over ensembles."""
    if task != metrics.MULTI_LABEL:
        y_test = np.asarray(y_test).reshape(len(y_test), -1)[:, 0]
    auc = stats.delong_test(y_test, ensemble_probs, single_probs, task)
    acc_p, ens_only, single_only, acc_method = accuracy_test(
        y_test, ensemble_probs, single_probs, task, 2000, 0
    )
    return {
        "n_test": int(len(y_test)),
        "auc_p": None if math.isnan(auc.p) else float(auc.p),
        "auc_method": auc.method,
        "acc_p": None if math.isnan(acc_p) else float(acc_p),
        "acc_method": acc_method,
        "ensemble_only_right": ens_only,
        "single_only_right": single_only,
    }


def _timing(chosen: list[Member], n_views: int) -> dict[str, float | None]:
    """The selected members' times summed: each image goes through every member and view."""

    def timing_sum(key: str) -> float | None:
        values = [m.results["timing"].get(key) for m in chosen]
        return None if any(v is None for v in values) else float(sum(values))

    latency = timing_sum("latency_ms_per_image")
    throughputs = [m.results["timing"].get("throughput_images_per_second") for m in chosen]
    throughput = 1.0 / (n_views * sum(1.0 / t for t in throughputs)) if all(throughputs) else None
    return {
        "train_seconds": timing_sum("train_seconds"),
        "latency_ms_per_image": None if latency is None else latency * n_views,
        "throughput_images_per_second": throughput,
    }


def _refuse_a_member_folder(out_dir: Path, members: list[Member]) -> None:
    """An ensemble is written beside its members, never into one or below it (it would
    replace that run's predictions.npz, and the run would no longer read as itself)."""
    out = out_dir.resolve()
    for m in members:
        run = Path(m.run_dir).resolve()
        if out == run or run in out.parents:
            raise MedbenchError(
                f"--out {out_dir} is inside the member run {m.run_dir}; the ensemble would "
                "overwrite that run's files: choose a folder of its own"
            )


def _save(
    out_dir: Path,
    members: list[Member],
    weights: np.ndarray,
    method: str,
    views: list[str],
    results: dict[str, Any],
    val_probs: np.ndarray,
    test_probs: np.ndarray,
    y_val: np.ndarray,
    y_test: np.ndarray,
) -> None:
    # One set of files: a failed save (a full disk) leaves none of them, nor half of them
    # beside an earlier ensemble's.
    with atomic_files() as files:
        entries = []
        for i, (m, w) in enumerate(zip(members, weights, strict=True)):
            if w <= 0:
                continue
            file = Path("members") / f"{i:02d}-{m.name.replace('/', '-').replace(':', '-')}.pt"
            with files.path(out_dir / file) as tmp:
                shutil.copyfile(resolve_model_file(m.run_dir), tmp)
            entries.append(
                {
                    "file": str(file),
                    "run_dir": str(m.run_dir),
                    "name": m.name,
                    "weight": float(w),
                    "temperature": m.temperature,
                }
            )
        with files.path(out_dir / "predictions.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                val_probs=val_probs,
                val_labels=y_val,
                test_probs=test_probs,
                test_labels=y_test,
            )
        index = {
            "format": ENSEMBLE_FORMAT,
            "format_version": FORMAT_VERSION,
            "method": method,
            "tta_views": views,
            "meta": _meta(results),
            "members": entries,
            "results": results,
        }
        with files.path(out_dir / "ensemble.json") as tmp:  # last: it says the set is whole
            tmp.write_text(json_text(index), encoding="utf-8")


def _meta(results: dict[str, Any]) -> dict[str, Any]:
    """What `medbench predict` needs to know of a saved ensemble (as of a model.pt)."""
    info, size = results["dataset"], results["config"]["size"]
    return {
        "model": f"ensemble:{results['method']}",
        "kind": "ensemble",
        "dataset": info["name"],
        "task": info["task"],
        "label_names": info["label_names"],
        "image_size": size,
        "in_channels": info["n_channels"],
        "num_classes": info["n_classes"],
        "temperature": 1.0,
        "spatial_dims": 3 if dataset_info(info["name"]).volumetric else 2,
    }


# ----------------------------------------------------------------------------- load


class Ensemble:
    """A saved ensemble, ready to predict: `predict_proba(images)` and `meta`; a
    `medbench.serving.predict.Predictor`, so `medbench.serving.predict.predict` takes its folder."""

    def __init__(
        self,
        models: list[torch.nn.Module],
        weights: list[float],
        temperatures: list[float],
        meta: dict[str, Any],
        views: list[str],
        device: str = "auto",
        precision: str = "auto",
    ) -> None:
        self.runtime = resolve_runtime(device, precision, True)
        self.models = [place_model(m, self.runtime).eval() for m in models]
        self.weights = np.asarray(weights, dtype=np.float64)
        self.temperatures = temperatures
        self.meta = meta
        self.views = views

    def predict_proba(
        self, images: torch.Tensor | np.ndarray, *, calibrated: bool = False
    ) -> np.ndarray:
        """Probabilities (N, num_classes) for uint8 images (N, H, W, C), or (N, H, W) if gray.
        Each member's are temperature-scaled already, so `calibrated` (asked of any
        `medbench.serving.predict.Predictor`) changes nothing."""
        images = torch.as_tensor(images)
        dims = int(self.meta.get("spatial_dims", 2))
        if images.ndim == dims + 1:
            images = images.unsqueeze(-1)
        expected = (self.meta["image_size"],) * dims + (self.meta["in_channels"],)
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != expected:
            raise MedbenchError(
                f"the ensemble takes uint8 images of shape (N, {', '.join(map(str, expected))}), "
                f"not {images.dtype} {tuple(images.shape)}"
            )
        task = self.meta["task"]
        probs = [
            predict_views(m, images, self.runtime, task, t, self.views)
            for m, t in zip(self.models, self.temperatures, strict=True)
        ]
        return combine(probs, self.weights).astype(np.float32)


def load_ensemble(path: str | Path, *, device: str = "auto", precision: str = "auto") -> Ensemble:
    """Load an ensemble saved by `build_ensemble(out_dir=...)`: its folder or ensemble.json."""
    path = Path(path)
    file = path / "ensemble.json" if path.is_dir() else path
    try:
        spec = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise MedbenchError(f"cannot read ensemble {file}: {exc}") from None
    if not isinstance(spec, dict) or spec.get("format") != ENSEMBLE_FORMAT:
        raise MedbenchError(f"{file} is not a medbench ensemble (no format {ENSEMBLE_FORMAT!r})")
    if spec.get("format_version", 0) > FORMAT_VERSION:
        raise MedbenchError(f"{file} was written by a newer medbench; upgrade medbench")
    models = [load_trained_model(file.parent / e["file"])[0] for e in spec["members"]]
    return Ensemble(
        models,
        [e["weight"] for e in spec["members"]],
        [e["temperature"] for e in spec["members"]],
        spec["meta"],
        spec["tta_views"],
        device,
        precision,
    )


def is_ensemble(path: str | Path) -> bool:
    """Whether `path` is a saved ensemble (a folder with ensemble.json, or that file)."""
    path = Path(path)
    return (path / "ensemble.json").is_file() or (path.is_file() and path.name == "ensemble.json")


# ----------------------------------------------------------------------------- table


def format_table(results: dict[str, Any]) -> str:
    """The ensemble beside its members: weight, val AUC, test ACC/AUC/ECE, params, latency."""

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    head = f"{'member':<34} {'weight':>6} {'val AUC':>7} {'test ACC':>8} {'test AUC':>8} {'ECE':>6} {'params M':>8} {'ms/img':>7}"
    lines = [head, "-" * len(head)]
    for r in results["members"]:
        lines.append(
            f"{r['name'][:34]:<34} {r['weight']:>6.3f} {fmt(r['val_auc'], '7.4f'):>7} "
            f"{fmt(r['test_acc'], '8.4f'):>8} {fmt(r['test_auc'], '8.4f'):>8} "
            f"{fmt(r['test_ece_calibrated'], '6.3f'):>6} {r['n_params'] / 1e6:>8.2f} "
            f"{fmt(r['latency_ms_per_image'], '7.2f'):>7}"
        )
    m, t = results["metrics"], results["timing"]
    label = results["model"]["name"] + (" +TTA" if results["tta"] else "")
    lines.append("-" * len(head))
    lines.append(
        f"{label[:34]:<34} {1.0:>6.3f} {fmt(m['val']['auc'], '7.4f'):>7} {fmt(m['test']['acc'], '8.4f'):>8} "
        f"{fmt(m['test']['auc'], '8.4f'):>8} {fmt(m['test_ece_calibrated'], '6.3f'):>6} "
        f"{results['model']['params_m']:>8.2f} {fmt(t['latency_ms_per_image'], '7.2f'):>7}"
    )
    return "\n".join(lines)
