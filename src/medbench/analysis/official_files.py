"""Interchange with medmnist's own tools: a run's predictions as the official result files.

`medmnist.Evaluator` saves, and `Evaluator.parse_and_evaluate` reads back, one CSV file per
split named `{flag}{size_flag}_{split}_[AUC]{auc:.3f}_[ACC]{acc:.3f}@{run}.csv`
(`size_flag` empty at 28 px, `_64` at 64 px): no header, one row per image in dataset
order, the image's index then one score per column (a probability per class; per label for
multi-label sets). medbench writes them from a run's predictions.npz (the logits its
results.json was computed from), so parsing a file gives back the run's ACC and AUC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medbench.errors import MedbenchError
from medbench.runs.results import read_predictions, read_results
from medbench.scoring import metrics
from medbench.utils.fsutil import atomic_files

SPLITS = ("val", "test")  # what a run's predictions.npz holds


@dataclass(frozen=True)
class OfficialFile:
    """One official result file: its split, path and the metrics in its name."""

    split: str
    path: str
    auc: float
    acc: float
    n_images: int

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "path": self.path,
            "auc": self.auc,
            "acc": self.acc,
            "n_images": self.n_images,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OfficialFile:
        return cls(d["split"], d["path"], float(d["auc"]), float(d["acc"]), int(d["n_images"]))


def size_flag(size: int) -> str:
    """medmnist's file-name part for an image size: "" at 28 px, "_64" at 64 px."""
    return "" if int(size) == 28 else f"_{int(size)}"


def official_filename(flag: str, size: int, split: str, auc: float, acc: float, run: str) -> str:
    """The name `medmnist.Evaluator.get_standard_evaluation_filename` gives these metrics."""
    return f"{flag}{size_flag(size)}_{split}_[AUC]{auc:.3f}_[ACC]{acc:.3f}@{run}.csv"


def run_tag(run_dir: str | Path) -> str:
    """A run folder's name as the `@{run}` part: medmnist reads the part between `@` and the
    first `.`, so dots and anything but letters, digits and `-` become `-`."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", Path(run_dir).resolve().name).strip("-") or "run"


def official_csv(scores: np.ndarray) -> str:
    """The file's text: `index,score,...` per image, no header; `repr` keeps every float
    exact, so the file gives back the very numbers medbench scored."""
    lines = (f"{i}," + ",".join(repr(float(v)) for v in row) for i, row in enumerate(scores))
    return "\n".join(lines) + "\n"


def write_official_predictions(
    run_dir: str | Path, out: str | Path, *, run: str | None = None
) -> list[OfficialFile]:
    """Write the run's val and test predictions into `out` as medmnist's official result
    files; `run` is the `@{run}` part (default: the run folder's name). An earlier file of
    the same run and split in `out` (of other weights) is replaced."""
    run_dir = Path(run_dir)
    if run_dir.is_file():  # model.pt given: its folder is the run
        run_dir = run_dir.parent
    results = read_results(run_dir)
    flag, size, task = (
        results.dataset["name"],
        int(results.dataset["size"]),
        results.dataset["task"],
    )
    run = run_tag(run_dir) if run is None else run_tag(run)
    arrays = read_predictions(run_dir)
    out = Path(out)
    written: list[OfficialFile] = []
    with atomic_files() as files:
        for split in SPLITS:
            if f"{split}_logits" not in arrays:
                raise MedbenchError(
                    f"{run_dir / 'predictions.npz'} has no {split}_logits; evaluate a run "
                    "finished by this medbench"
                )
            labels = arrays[f"{split}_labels"]
            scores = metrics.probabilities_from_logits(arrays[f"{split}_logits"], task)
            auc = metrics.official_auc(labels, scores, task)
            acc = metrics.official_acc(labels, scores, task)
            path = out / official_filename(flag, size, split, auc, acc, run)
            with files.path(path) as tmp:
                tmp.write_text(official_csv(scores))
            written.append(OfficialFile(split, str(path), auc, acc, len(scores)))
    _remove_stale(out, flag, size, run, {Path(f.path).name for f in written})
    return written


def _remove_stale(out: Path, flag: str, size: int, run: str, keep: set[str]) -> None:
    for split in SPLITS:
        for old in out.glob(f"{flag}{size_flag(size)}_{split}_*@{run}.csv"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
