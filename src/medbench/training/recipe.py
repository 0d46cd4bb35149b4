"""The recipe's parts that are not the model: optimiser, learning-rate schedule, loss, the
order of training samples and the default batch.

Each is a pure function of the config (and the training split), so the engine's loop only
calls them, and each can be tested alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from medbench.training.config import TrainConfig
from medbench.training.inference import is_multilabel

DEFAULT_EPOCHS = 40
SMALL_TRAIN_SPLIT = 2000  # below this many training images the default batch is 32

# A training loss: (logits, targets) -> the batch's mean loss, a scalar tensor.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_optimizer(
    model: nn.Module, config: TrainConfig, lr_scales: dict[int, float] | None = None
) -> torch.optim.Optimizer:
    """AdamW/Adam/SGD over the trainable parameters. `lr_scales` maps id(parameter) to a
    learning-rate multiplier (e.g. a lower rate for a pretrained backbone)."""
    # No weight decay on norms and biases (1-d parameters): standard practice since
    # "Bag of Tricks" (He et al. 2019); decaying BN gammas hurts small-data training.
    buckets: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            key = (p.ndim > 1, (lr_scales or {}).get(id(p), 1.0))
            buckets.setdefault(key, []).append(p)
    groups: list[dict[str, Any]] = [
        {"params": ps, "weight_decay": config.weight_decay if decays else 0.0, "lr_scale": scale}
        for (decays, scale), ps in sorted(buckets.items(), key=lambda kv: (not kv[0][0], -kv[0][1]))
    ]
    # PyTorch's fused kernels: one pass over each parameter instead of a dozen. On the CPU
    # the default is the slow per-tensor loop; the measured gain is in docs/training.md.
    fused = _fused_optimizer_ok([p for g in groups for p in g["params"]])
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, fused=fused)
    if config.optimizer == "adam":  # the official MedMNIST recipe: Adam, no weight decay
        return torch.optim.Adam(groups, lr=config.lr, fused=fused)
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, nesterov=True, fused=fused
    )


def _fused_optimizer_ok(params: list[nn.Parameter]) -> bool | None:
    """True where PyTorch's fused optimiser kernels are used: every parameter on the CPU, or
    every one on CUDA. None (PyTorch's own choice) elsewhere, e.g. MPS."""
    return True if {p.device.type for p in params} in ({"cpu"}, {"cuda"}) else None


def lr_factor(
    config: TrainConfig,
    step: int,
    total_steps: int,
    steps_per_epoch: int,
    fraction: float | None = None,
) -> float:
    """Learning-rate multiplier at `step` (0-based) of `total_steps`. `fraction`, when given,
    is how much of the run is done (0..1) and drives the schedule after warm-up instead of
    `step / total_steps`: under a time budget it is the elapsed share of the budget, which
    only grows, so re-planning the step total never raises the rate."""
    done = step / max(1, total_steps) if fraction is None else fraction
    if config.schedule == "multistep":  # official MedMNIST: x0.1 at 50% and 75% of training
        return 0.1 ** ((done >= 0.5) + (done >= 0.75))
    warmup = min(config.warmup_epochs * steps_per_epoch, 0.2 * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1.0, total_steps - warmup) if fraction is None else fraction
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_loss(
    config: TrainConfig, task: str, train_labels: torch.Tensor, n_classes: int, device: torch.device
) -> LossFn:
    if is_multilabel(task):
        pos_weight = None
        if config.class_balance == "weighted_loss":
            pos = train_labels.sum(0).clamp(min=1)
            pos_weight = ((len(train_labels) - pos) / pos).clamp(max=50).to(device)
        ls = config.label_smoothing

        def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if ls:
                target = target * (1 - ls) + 0.5 * ls
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)

        return bce
    weight = None
    if config.class_balance == "weighted_loss":
        counts = torch.bincount(train_labels, minlength=n_classes).float().clamp(min=1)
        weight = (counts.sum() / (n_classes * counts)).to(device)

    def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Class indices, or class probabilities (MixUp/CutMix's soft targets: smoothed and
        # weighted per class, averaged over the batch, as cross_entropy defines them).
        return F.cross_entropy(
            logits, target, weight=weight, label_smoothing=config.label_smoothing
        )

    return ce


def epoch_order(n: int, seed: int, epoch: int, sample_weights: torch.Tensor | None) -> torch.Tensor:
    """The order of training samples in `epoch`, a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if sample_weights is not None:  # class-balanced sampling, with replacement
        return torch.multinomial(sample_weights, n, replacement=True, generator=g)
    return torch.randperm(n, generator=g)


def balanced_sample_weights(labels: torch.Tensor, task: str, n_classes: int) -> torch.Tensor:
    if is_multilabel(task):  # weight a sample by its rarest positive label
        freq = labels.float().mean(0).clamp(min=1e-3)
        w = (labels.float() / freq).max(1).values
        return torch.where(w > 0, w, torch.ones_like(w))
    counts = torch.bincount(labels, minlength=n_classes).float().clamp(min=1)
    return (1.0 / counts)[labels]


def default_batch_size(n_train: int) -> int:
    """128 (MedMNIST's batch), or 32 for small training splits (BreastMNIST's 546 images,
    RetinaMNIST's 1,080) so that a run takes enough optimiser steps per epoch."""
    return 32 if n_train < SMALL_TRAIN_SPLIT else 128
