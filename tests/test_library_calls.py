"""Library calls that replace hand-written code, each checked against that code (kept here
as the reference) on the same inputs: the soft-target cross-entropy and precise BN."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from medbench.training.config import TrainConfig
from medbench.training.evaluation import recalibrate_batchnorm
from medbench.training.inference import normalize, to_unit_float
from medbench.training.recipe import make_loss
from medbench.utils.runtime import Runtime

N_CLASSES = 5


def _soft_cross_entropy_reference(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, smoothing: float
) -> torch.Tensor:
    """The hand-written soft-target cross-entropy the library call replaces."""
    logp = F.log_softmax(logits, dim=1)
    if smoothing:
        target = target * (1 - smoothing) + smoothing / logits.shape[1]
    w = weight if weight is not None else torch.ones(logits.shape[1])
    return -(target * logp * w).sum(1).mean()


def _soft_targets(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and MixUp-like targets (two one-hot labels mixed), rows summing to 1."""
    logits = torch.randn(64, N_CLASSES, generator=generator) * 3
    a, b = torch.randint(0, N_CLASSES, (2, 64), generator=generator)
    lam = torch.rand(64, 1, generator=generator)
    target = lam * F.one_hot(a, N_CLASSES) + (1 - lam) * F.one_hot(b, N_CLASSES)
    return logits, target


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_with_class_probabilities_equals_the_hand_written_soft_loss(
    smoothing: float, weighted: bool
) -> None:
    generator = torch.Generator().manual_seed(0)
    logits, target = _soft_targets(generator)
    weight = torch.rand(N_CLASSES, generator=generator) + 0.5 if weighted else None
    library = F.cross_entropy(logits, target, weight=weight, label_smoothing=smoothing)
    reference = _soft_cross_entropy_reference(logits, target, weight, smoothing)
    torch.testing.assert_close(library, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("class_balance", ["none", "weighted_loss"])
def test_the_training_loss_on_soft_targets_is_cross_entropy_with_class_probabilities(
    smoothing: float, class_balance: str
) -> None:
    generator = torch.Generator().manual_seed(1)
    logits, target = _soft_targets(generator)
    train_labels = torch.randint(0, N_CLASSES, (200,), generator=generator)
    config = TrainConfig(
        dataset="bloodmnist",
        model="advanced_cnn",
        label_smoothing=smoothing,
        class_balance=class_balance,
    )
    loss_fn = make_loss(config, "multi-class", train_labels, N_CLASSES, torch.device("cpu"))
    counts = torch.bincount(train_labels, minlength=N_CLASSES).float()
    weight = counts.sum() / (N_CLASSES * counts) if class_balance == "weighted_loss" else None
    expected = F.cross_entropy(logits, target, weight=weight, label_smoothing=smoothing)
    torch.testing.assert_close(loss_fn(logits, target), expected, rtol=0, atol=1e-6)


@torch.no_grad()
def _precise_bn_reference(
    model: nn.Module, images: torch.Tensor, runtime: Runtime, batch_size: int
) -> None:
    """The hand-written BN re-estimation that `torch.optim.swa_utils.update_bn` replaces."""
    bns = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and (m.weight is None or m.weight.requires_grad)
    ]
    if not bns or len(images) == 0:
        return
    was_training = model.training
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for start in range(0, len(images), batch_size):
        x = normalize(to_unit_float(images[start : start + batch_size], runtime))
        with runtime.autocast():
            model(x)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)


def _probe_model(frozen_backbone: bool) -> nn.Module:
    """A small CNN: a backbone (conv, BN, dropout) and a head with its own BN; the backbone
    frozen as in linear-probe fine-tuning when asked."""
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(8, 8, 3)
    )
    head = nn.Sequential(
        nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    )
    model = nn.Sequential(backbone, head)
    for bn in (backbone[1], head[0]):  # statistics as a trained model has them
        assert isinstance(bn, nn.BatchNorm2d)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.num_batches_tracked.fill_(100)
    if frozen_backbone:
        backbone.requires_grad_(False)
    return model


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "tracked" in k}


def _images(n: int = 40) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.randint(0, 256, (n, 12, 12, 3), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("frozen_backbone", [False, True])
def test_precise_bn_through_update_bn_equals_the_hand_written_pass(
    frozen_backbone: bool, precision: str
) -> None:
    runtime = Runtime(torch.device("cpu"), precision, channels_last=False)
    model = _probe_model(frozen_backbone)
    reference = copy.deepcopy(model)
    before = _bn_buffers(model)
    recalibrate_batchnorm(model, _images(), runtime, batch_size=16)
    _precise_bn_reference(reference, _images(), runtime, batch_size=16)
    after = _bn_buffers(model)
    torch.testing.assert_close(after, _bn_buffers(reference), rtol=0, atol=0)  # bit for bit
    frozen = "0.1.running_mean"  # the backbone's BN
    assert torch.equal(after[frozen], before[frozen]) is frozen_backbone
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert model.training and all(bn.training and bn.momentum == 0.1 for bn in bns)


def test_precise_bn_equals_update_bn_where_every_layer_trains_and_none_drops() -> None:
    runtime = Runtime(torch.device("cpu"), "fp32", channels_last=False)
    model = _probe_model(frozen_backbone=False)
    model[0][3] = nn.Identity()  # no dropout: update_bn runs the model in train mode
    library = copy.deepcopy(model)
    images = _images()
    batches = [
        normalize(to_unit_float(images[s : s + 16], runtime)) for s in range(0, len(images), 16)
    ]
    recalibrate_batchnorm(model, images, runtime, batch_size=16)
    torch.optim.swa_utils.update_bn(batches, library)
    torch.testing.assert_close(_bn_buffers(model), _bn_buffers(library), rtol=0, atol=1e-6)
