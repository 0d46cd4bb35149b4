"""`efficientnet`: an EfficientNet-B0-shaped network of MBConv blocks, sized for MedMNIST.

Tan & Le 2019, "EfficientNet: rethinking model scaling for convolutional neural networks":
a stem conv, seven stages of MBConv blocks (MobileNetV2's inverted residual with
squeeze-and-excitation and stochastic depth; see `layers.MBConv`), a 1x1 head conv, global
pooling and a linear classifier. `width` and `depth` scale channels and block counts as in
the paper's compound scaling (channels rounded to multiples of 8, repeats rounded up).

Choices that keep it stable on small, imbalanced data (where the reference study's version
collapsed to predicting one class): the last BN of every residual branch starts at zero so
each block starts as the identity; BN uses PyTorch's momentum (0.1) so running statistics
track the weights within the few thousand steps of a MedMNIST run (the TF port's 0.01 lags
and makes eval-mode outputs drift), and eps 1e-3 so small batches with near-constant
channels do not blow up; the SE bottleneck is sized from the block input (EfficientNet's
rule, not the expanded width); the head is pool -> dropout -> linear with a small init.
Early in training, eval-mode BN statistics can still lag the weights enough to predict one
class; re-estimating them fixes it (measured, see docs/models.md).

Stride plan (B0 downsamples at the stem and in stages 2, 3, 4 and 6):

    image  stem stride  stage strides          final grid
    28     1            1, 2, 2, 2, 1, 2, 1    2x2
    64     2            1, 2, 2, 2, 1, 2, 1    2x2
    128    2            1, 2, 2, 2, 1, 2, 1    4x4
    224    2            1, 2, 2, 2, 1, 2, 1    7x7
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.layers import make_divisible
from torch import nn

from medbench.models.layers import ConvBnAct, MBConv, drop_path_rates
from medbench.models.registry import register_model

# EfficientNet-B0's stages: (expand ratio, kernel, stride, channels, repeats).
B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3


def stem_stride(image_size: int) -> int:
    """1 up to 32 px (a 28 px image keeps its grid for the first stage), else 2."""
    return 1 if image_size <= 32 else 2


class EfficientNet(nn.Module):
    """Stem, MBConv stages, head conv, pooled linear classifier."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        stages: Sequence[tuple[float, int, int, int, int]],
        *,
        stem_channels: int,
        head_channels: int,
        stem_stride: int,
        se_ratio: float = 0.25,
        drop_path: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = ConvBnAct(
            in_channels, stem_channels, 3, stem_stride, act_layer=nn.SiLU, bn_eps=BN_EPS
        )
        # Stochastic depth rises linearly from 0 at the first block to `drop_path` at the
        # last, by timm's rule (the one advanced_cnn uses).
        rates = iter(drop_path_rates(drop_path, sum(s[4] for s in stages)))
        blocks, in_ch = [], stem_channels
        for expand, kernel, stride, channels, repeats in stages:
            for i in range(repeats):
                blocks.append(
                    MBConv(
                        in_ch,
                        channels,
                        kernel_size=kernel,
                        stride=stride if i == 0 else 1,
                        expand_ratio=expand,
                        se_ratio=se_ratio,
                        bn_eps=BN_EPS,
                        drop_path=next(rates),
                    )
                )
                in_ch = channels
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBnAct(in_ch, head_channels, 1, act_layer=nn.SiLU, bn_eps=BN_EPS)
        self.num_features = head_channels
        self.head_drop = nn.Dropout(dropout)
        self.fc = nn.Linear(head_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Small, symmetric classifier init: starts near uniform class probabilities.
        bound = 1.0 / math.sqrt(self.fc.in_features)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)
        for m in self.modules():  # after the generic init: residual branches start at zero
            if isinstance(m, MBConv) and m.has_residual:
                nn.init.zeros_(m.project.bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The head conv's feature map: (B, num_features, h, w)."""
        return self.head(self.blocks(self.stem(x)))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        features = self.head_drop(features.mean((2, 3)))
        return features if pre_logits else self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def scaled_stages(
    width: float,
    depth: float,
    expand_ratio: float | None = None,
    kernel_sizes: Sequence[int] | None = None,
) -> list[tuple[float, int, int, int, int]]:
    """B0's stages with channels times `width` (rounded by timm's `make_divisible`, as in
    EfficientNet), repeats times `depth` (rounded up), and the expansion of stages 2-7 and
    the kernel of every stage overridden where given."""
    stages = []
    for i, (expand, kernel, stride, channels, repeats) in enumerate(B0_STAGES):
        stages.append(
            (
                expand if expand_ratio is None or i == 0 else expand_ratio,
                kernel if kernel_sizes is None else kernel_sizes[i],
                stride,
                make_divisible(channels * width, 8),
                int(math.ceil(repeats * depth)),
            )
        )
    return stages


def _check_options(
    width: float,
    depth: float,
    se_ratio: float,
    expand_ratio: float | None,
    kernel_sizes: Sequence[int] | None,
) -> None:
    if not (width > 0 and depth > 0):
        raise ValueError(f"width and depth must be positive, not {width} and {depth}")
    if not 0 <= se_ratio <= 1:
        raise ValueError(f"se_ratio must be in [0, 1], not {se_ratio}")
    if expand_ratio is not None and not expand_ratio >= 1:
        raise ValueError(f"expand_ratio must be at least 1, not {expand_ratio}")
    if kernel_sizes is not None and (
        len(kernel_sizes) != len(B0_STAGES) or any(k < 1 or k % 2 == 0 for k in kernel_sizes)
    ):
        raise ValueError(f"kernel_sizes needs {len(B0_STAGES)} odd sizes, not {kernel_sizes}")


@register_model
def efficientnet(
    in_channels: int,
    num_classes: int,
    image_size: int = 28,
    *,
    width: float = 0.75,
    depth: float = 1.0,
    se_ratio: float = 0.25,
    expand_ratio: float | None = None,
    kernel_sizes: Sequence[int] | None = None,
    drop_path: float = 0.0,
    dropout: float = 0.0,
) -> EfficientNet:
    """EfficientNet-B0 layout at width 0.75: 2.46M parameters at 3 channels / 7 classes.

    `width` multiplies every stage's channels (the 1280-channel head conv only grows, never
    shrinks, as in MobileNetV2), `depth` every stage's repeats; `se_ratio` sizes SE (0
    removes it); `expand_ratio` overrides B0's per-stage MBConv expansion (1 for the first
    stage, 6 after) for stages 2-7; `kernel_sizes` gives the depthwise kernel of each of the
    7 stages (B0: 3, 3, 5, 3, 5, 5, 3).
    """
    _check_options(width, depth, se_ratio, expand_ratio, kernel_sizes)
    return EfficientNet(
        in_channels,
        num_classes,
        scaled_stages(width, depth, expand_ratio, kernel_sizes),
        stem_channels=make_divisible(STEM_CHANNELS * width, 8),
        # MobileNetV2's rule: a width below 1 does not thin the last conv (it feeds the classifier).
        head_channels=make_divisible(HEAD_CHANNELS * max(width, 1.0), 8),
        stem_stride=stem_stride(image_size),
        se_ratio=se_ratio,
        drop_path=drop_path,
        dropout=dropout,
    )
