"""Evaluation of a model being trained and of a finished one.

- Each round: `recalibrate_batchnorm` ("precise BN") then `validate_round` on a fixed
  validation sample, for model selection.
- At the end: `evaluate_final` scores the selected weights on the whole validation and
  test splits with the official MedMNIST metrics (plus calibration and the collapse
  guard); `write_model_files` writes predictions.npz and model.pt. Computing the numbers
  and writing files are kept apart, so the numbers can be checked without a run folder.
- Later: `evaluate_run` re-evaluates a finished run's model.pt.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from medbench.data import MedMNISTData, load_dataset
from medbench.errors import MedbenchWarning
from medbench.runs.results import recorded_data_dir
from medbench.scoring import metrics
from medbench.training import checkpoint as ckpt
from medbench.training.config import TrainConfig
from medbench.training.inference import (
    MEAN,
    STD,
    labels_numpy,
    load_trained_model,
    normalize,
    predict_logits,
    to_unit_float,
)
from medbench.utils.fsutil import atomic_path
from medbench.utils.runtime import Runtime, place_model, resolve_runtime

if TYPE_CHECKING:  # annotations only
    from medbench.training.recipe import LossFn


class _TrainableBatchNorms(nn.Module):
    """What `torch.optim.swa_utils.update_bn` sees of a model: its BatchNorm layers that
    train, registered as the only submodules, and a forward that runs the whole model.

    update_bn resets every BN layer of the module it is given and switches all of that
    module to train mode; given the model itself, it would wipe a frozen backbone's
    statistics, run that backbone's BN on batch statistics and turn on dropout and drop-path.
    Through this view it resets and trains the listed layers alone, while the model (not a
    registered submodule) stays in eval mode."""

    def __init__(self, model: nn.Module, bns: list[nn.modules.batchnorm._BatchNorm]) -> None:
        super().__init__()
        self.bns = nn.ModuleList(bns)
        self._model = (model,)  # a tuple, so that the model is not registered

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self._model[0](x)
        return logits


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, images: torch.Tensor, runtime: Runtime, batch_size: int
) -> None:
    """Recompute BatchNorm statistics for the current weights ("precise BN", Wu & Johnson
    2021, "Rethinking 'Batch' in BatchNorm"), on un-augmented training images.

    The running averages that BN keeps during training lag behind weights that move fast
    (warm-up, short budgets, few steps per epoch); evaluated with them, an otherwise
    learning model can predict one class for everything. Only BN layers that train are
    touched (a frozen backbone keeps its statistics); training itself never reads them, so
    the weights' trajectory is unchanged.

    PyTorch's `update_bn` resets the layers and takes the cumulative average (momentum
    None) over the batches; medbench adds what it lacks: the choice of layers and the eval
    mode of everything else (`_TrainableBatchNorms`), uint8 images scaled and normalised
    batch by batch, and the run's autocast precision."""
    bns = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and (m.weight is None or m.weight.requires_grad)
    ]
    if not bns or len(images) == 0:
        return
    was_training, momenta = model.training, [m.momentum for m in bns]
    model.eval()
    batches = (
        normalize(to_unit_float(images[start : start + batch_size], runtime))
        for start in range(0, len(images), batch_size)
    )
    try:
        with runtime.autocast():
            torch.optim.swa_utils.update_bn(batches, _TrainableBatchNorms(model, bns))
    finally:  # update_bn restores the momenta after a full pass only
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


def fixed_sample(n: int, k: int, seed: int) -> torch.Tensor:
    """Sorted indices of a random sample of min(k, n) of n items, fixed by `seed` (and
    drawn from its own generator, so the global RNG stream is untouched)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


@dataclass(frozen=True)
class ValidationSample:
    """The images a round validates on: the validation split, or a fixed sample of it."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(cls, data: MedMNISTData, max_images: int, seed: int) -> ValidationSample:
        images, labels = data.val.images, data.val.labels
        if len(data.val) > max_images:
            pick = fixed_sample(len(data.val), max_images, seed)
            images, labels = images[pick], labels[pick]
        return cls(images, labels)

    def __len__(self) -> int:
        return len(self.images)


def validate_round(
    model: nn.Module,
    sample: ValidationSample,
    runtime: Runtime,
    task: str,
    loss_fn: LossFn,
) -> dict[str, float]:
    """The validation part of a round's record: loss, official ACC and AUC."""
    logits = predict_logits(model, sample.images, runtime)
    probs = metrics.probabilities_from_logits(logits, task)
    y = labels_numpy(sample.labels)
    with torch.no_grad():
        val_loss = float(loss_fn(torch.from_numpy(logits), sample.labels))
    return {
        "val_loss": val_loss,
        "val_acc": metrics.official_acc(y, probs, task),
        "val_auc": metrics.official_auc(y, probs, task),
    }


@dataclass
class FinalEvaluation:
    """The selected weights scored on the whole validation and test splits."""

    val_logits: np.ndarray
    test_logits: np.ndarray
    val_labels: np.ndarray
    test_labels: np.ndarray
    temperature: float
    metrics: dict[str, Any]  # val, test, temperature, calibrated ECEs (results.json's)
    flags: list[str]  # the collapse guard's findings

    def calibrated_test_probs(self, task: str) -> np.ndarray:
        return metrics.probabilities_from_logits(self.test_logits, task, self.temperature)


def evaluate_final(
    model: nn.Module, data: MedMNISTData, runtime: Runtime, collapse_margin: float
) -> FinalEvaluation:
    info, task = data.info, data.info.task
    val_logits = predict_logits(model, data.val.images, runtime)
    test_logits = predict_logits(model, data.test.images, runtime)
    val_y, test_y = labels_numpy(data.val.labels), labels_numpy(data.test.labels)
    temperature = metrics.fit_temperature(val_logits, val_y, task)
    scores: dict[str, Any] = {}  # each split's metrics, and each split's calibrated ECE
    for split, logits, y in (("val", val_logits, val_y), ("test", test_logits, test_y)):
        probs = metrics.probabilities_from_logits(logits, task)
        scores[split] = metrics.evaluate(y, probs, task, info.label_names)
        calibrated = metrics.probabilities_from_logits(logits, task, temperature)
        scores[f"{split}_ece_calibrated"] = metrics.expected_calibration_error(y, calibrated, task)
    flags = metrics.collapse_check(
        scores["val"], scores["test"], n_classes=info.n_classes, task=task, margin=collapse_margin
    )
    return FinalEvaluation(
        val_logits,
        test_logits,
        val_y,
        test_y,
        float(temperature),
        {
            "val": scores["val"],
            "test": scores["test"],
            "temperature": float(temperature),
            "val_ece_calibrated": scores["val_ece_calibrated"],
            "test_ece_calibrated": scores["test_ece_calibrated"],
            "test_intervals": test_intervals(
                test_y, metrics.probabilities_from_logits(test_logits, task), task
            ),
        },
        flags,
    )


INTERVAL_RESAMPLES = 1000


def test_intervals(labels: np.ndarray, probs: np.ndarray, task: str) -> dict[str, Any]:
    """95% percentile bootstrap intervals of the official test ACC and AUC (results.json's
    `metrics.test_intervals`, beside the plain `metrics.test` numbers)."""
    out: dict[str, Any] = {
        "level": 0.95,
        "method": metrics.bootstrap_description(task, INTERVAL_RESAMPLES),
    }
    for name in ("acc", "auc"):
        low, high = metrics.bootstrap_ci(labels, probs, task, name, INTERVAL_RESAMPLES, 0, 0.05)
        out[name] = [None if math.isnan(low) else low, None if math.isnan(high) else high]
    return out


def warn_collapse(run_name: str, flags: list[str]) -> None:
    for flag in flags:
        warnings.warn(f"COLLAPSE GUARD {run_name}: {flag}", MedbenchWarning, stacklevel=5)


def write_model_files(
    run_dir: Path,
    model: nn.Module,
    evaluation: FinalEvaluation,
    config: TrainConfig,
    data: MedMNISTData,
    options: dict[str, Any],
) -> None:
    """predictions.npz (logits, labels, calibrated test probabilities) and model.pt (the
    selected weights with what is needed to use them), each written atomically."""
    info = data.info
    with atomic_path(run_dir / "predictions.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            val_logits=evaluation.val_logits,
            val_labels=evaluation.val_labels,
            test_logits=evaluation.test_logits,
            test_labels=evaluation.test_labels,
            test_probs=evaluation.calibrated_test_probs(info.task),
            temperature=np.float64(evaluation.temperature),
        )
    ckpt.save(
        {
            "format": ckpt.MODEL_FORMAT,
            "format_version": ckpt.FORMAT_VERSION,
            "model": config.model,
            # A user's model: the hash of the source these weights belong to (None otherwise).
            "model_source_hash": config.model_source_hash,
            "model_options": options,
            "in_channels": info.n_channels,
            "num_classes": info.n_classes,
            "image_size": config.size,
            "task": info.task,
            "label_names": list(info.label_names),
            "dataset": info.name,
            "normalization": {"mean": MEAN, "std": STD},
            "temperature": evaluation.temperature,
            "seed": config.seed,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        run_dir / "model.pt",
    )


def evaluate_run(
    run: str | Path,
    data_dir: str | Path | None = None,
    *,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Re-evaluate a finished run's model on its dataset's validation and test splits.

    The data comes from `data_dir`, else from the folder the run recorded in its
    results.json (where that folder still exists), else from the default data folder;
    `data_source` in the result says which: "argument", "recorded" or "default"."""
    model, meta = load_trained_model(run)
    runtime = resolve_runtime(device, "auto", True)
    place_model(model, runtime)
    source = "argument"
    if data_dir is None:
        data_dir = recorded_data_dir(ckpt.resolve_model_file(run))
        source = "recorded" if data_dir else "default"
    data = load_dataset(meta["dataset"], meta["image_size"], data_dir, progress=progress)
    out: dict[str, Any] = {
        "model": meta["model"],
        "dataset": data.provenance(),
        "data_source": source,
        "temperature": meta["temperature"],
    }
    task = meta["task"]
    for split in ("val", "test"):
        s = data.split(split)
        logits = predict_logits(model, s.images, runtime)
        y = labels_numpy(s.labels)
        probs = metrics.probabilities_from_logits(logits, task)
        out[split] = metrics.evaluate(y, probs, task, meta["label_names"])
        calibrated = metrics.probabilities_from_logits(logits, task, meta["temperature"])
        out[split]["ece_calibrated"] = metrics.expected_calibration_error(y, calibrated, task)
        if split == "test":
            out["test_intervals"] = test_intervals(y, probs, task)
    out["flags"] = metrics.collapse_check(
        out["val"], out["test"], n_classes=meta["num_classes"], task=task
    )
    return out
