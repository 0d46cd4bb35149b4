"""Model files made without training, for tests of what reads them (predict, export)."""

from __future__ import annotations

from pathlib import Path

import torch

from medbench.training import checkpoint as ckpt

BREAST_LABELS = ["malignant", "normal, benign"]


def save_model(
    path: Path,
    *,
    in_channels: int = 1,
    num_classes: int = 2,
    task: str = "binary-class",
    label_names: list[str] | None = None,
    temperature: float = 1.5,
    **overrides,
) -> Path:
    """An untrained efficientnet saved in medbench's model.pt format (fast, no training)."""
    from medbench.models import build_model

    torch.manual_seed(0)
    model = build_model("efficientnet", in_channels, num_classes, image_size=28)
    obj = {
        "format": ckpt.MODEL_FORMAT,
        "format_version": ckpt.FORMAT_VERSION,
        "model": "efficientnet",
        "model_options": {},
        "in_channels": in_channels,
        "num_classes": num_classes,
        "image_size": 28,
        "task": task,
        "label_names": label_names or BREAST_LABELS,
        "dataset": "breastmnist",
        "normalization": {"mean": 0.5, "std": 0.5},
        "temperature": temperature,
        "seed": 0,
        "state_dict": model.state_dict(),
        **overrides,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path
