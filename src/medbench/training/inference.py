"""Inference: the tensors a model sees, batched prediction, speed, and loading a trained model.

Everything that runs a trained model (evaluation, ensembles, predict, export, transfer)
goes through here, so the input pipeline is one piece of code: uint8 NHWC images -> float
NCHW in [0, 1] -> MedMNIST's official normalisation.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from medbench.errors import MedbenchError
from medbench.models import build_model, check_model_source
from medbench.training import checkpoint as ckpt
from medbench.utils.runtime import Runtime

MEAN, STD = 0.5, 0.5  # MedMNIST's official Normalize(mean=.5, std=.5) on [0, 1] pixels
EVAL_BATCH = 512


def to_unit_float(images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [0, 1] on the device, and volumes
    (N, D, H, W, C) -> (N, C, D, H, W). The permute of an NHWC tensor *is* channels-last,
    so channels-last costs no copy here; volumes are made contiguous (3D models run in
    the default memory format, see `runtime.place_model`)."""
    x = images.to(runtime.device, non_blocking=True).movedim(-1, 1).float().div_(255.0)
    return x if runtime.channels_last and x.ndim == 4 else x.contiguous()


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x.sub_(MEAN).div_(STD)


def is_multilabel(task: str) -> bool:
    return task.startswith("multi-label")


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, runtime: Runtime, batch_size: int = EVAL_BATCH
) -> np.ndarray:
    """Logits (float32 numpy) of a model in eval mode for uint8 (N, H, W, C) images."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(to_unit_float(images[start : start + batch_size], runtime))
        with runtime.autocast():
            out.append(model(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def labels_numpy(labels: torch.Tensor) -> np.ndarray:
    """Labels as MedMNIST's evaluator takes them: (N, 1) ints or (N, L) multi-label."""
    y = labels.cpu().numpy()
    return y[:, None] if y.ndim == 1 else y


@torch.no_grad()
def measure_speed(
    model: nn.Module,
    runtime: Runtime,
    channels: int,
    size: int,
    spatial_dims: int = 2,
    latency_repeats: int = 10,
    throughput_batch: int = 256,
) -> tuple[float, float]:
    """(median ms per image at batch 1, images/s at batch `throughput_batch`) in eval mode,
    each after one untimed warm-up call; volumes of `size`^3 when `spatial_dims` is 3."""
    model.eval()
    if spatial_dims == 3:  # a batch of 256 volumes of 64^3 is 256 MB of input alone
        throughput_batch = min(throughput_batch, 32)

    def timed(batch: int, repeats: int) -> float:
        x = torch.randn(batch, channels, *(size,) * spatial_dims, device=runtime.device)
        if runtime.channels_last and spatial_dims == 2:
            x = x.contiguous(memory_format=torch.channels_last)
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            with runtime.autocast():
                model(x)
            if runtime.device.type == "cuda":
                torch.cuda.synchronize(runtime.device)
            if i >= 1:
                times.append(time.perf_counter() - t0)
        return float(np.median(times))

    latency_ms = timed(1, latency_repeats) * 1000
    return latency_ms, throughput_batch / timed(throughput_batch, 1 if size > 64 else 2)


# What load_trained_model reads of a model.pt, and the type each must have.
_MODEL_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": str,
    "model_options": dict,
    "in_channels": int,
    "num_classes": int,
    "image_size": int,
    "state_dict": dict,
}


def load_trained_model(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from a run folder or its model.pt; returns (model, meta)."""
    file = ckpt.resolve_model_file(path)
    _check_readable(file)
    obj = ckpt.load(file)
    if obj["format"] == ckpt.CHECKPOINT_FORMAT:
        raise MedbenchError(
            f"{file} is a training checkpoint of an unfinished run; finish it with --resume first"
        )
    if obj["format"] != ckpt.MODEL_FORMAT:
        raise MedbenchError(f"{file} is a {obj['format']!r} file, not a medbench model")
    _check_model_keys(obj, file)
    # Weights of a user's model load only into the source they were trained with.
    check_model_source(obj["model"], obj.get("model_source_hash"))
    model = build_model(
        obj["model"],
        obj["in_channels"],
        obj["num_classes"],
        image_size=obj["image_size"],
        **obj["model_options"],
    )
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as exc:
        raise MedbenchError(
            f"{file} does not match the {_described(obj)} architecture: {_one_line(str(exc))[:200]}"
        ) from None
    model.eval()
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    return model, meta


def load_model(run: str | Path, device: str = "cpu") -> nn.Module:
    """A finished run's model (a run folder or its model.pt), in eval mode on `device`,
    ready for inference on normalised float images (`normalize(to_unit_float(...))`):

        model = load_model("medbench-results/runs/breastmnist-28/resnet18/seed0-ba359ebe")
        logits = model(torch.zeros(1, 1, 28, 28))

    `load_trained_model` gives the run's metadata (task, class names, temperature) too."""
    model, _ = load_trained_model(run)
    return model.to(torch.device(device)).eval()


def _check_readable(file: Path) -> None:
    """A permission problem named as one, not taken for a corrupt file."""
    try:
        with open(file, "rb"):
            pass
    except PermissionError:
        raise MedbenchError(f"{file} cannot be read (permission denied)") from None


def _check_model_keys(obj: dict[str, Any], file: Path) -> None:
    missing = [key for key in _MODEL_KEYS if key not in obj]
    if missing:
        raise MedbenchError(
            f"{file} is a medbench model file without {', '.join(missing)} (damaged or written "
            "by other code); export or train it again"
        )
    for key, kind in _MODEL_KEYS.items():
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            raise MedbenchError(
                f"{file} has a {type(obj[key]).__name__} for {key!r}, not a "
                f"{kind.__name__ if isinstance(kind, type) else kind}; export or train it again"
            )


def _described(obj: dict[str, Any]) -> str:
    """The model's name with the options it was built with: two files of one family that
    differ only in width must not both read as 'resnet18'."""
    options = ", ".join(f"{k}={v!r}" for k, v in sorted(obj["model_options"].items()))
    return f"{obj['model']} ({options})" if options else obj["model"]


def _one_line(text: str) -> str:
    """PyTorch's multi-line messages (one line per mismatched tensor) as one line."""
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())
