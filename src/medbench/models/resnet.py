"""`resnet18`, `resnet50`: the ResNets of the MedMNIST v2 benchmark (Yang et al. 2023).

He et al. 2016, "Deep residual learning for image recognition", built from torchvision's
own `BasicBlock` / `Bottleneck` / `ResNet`. Like the official MedMNIST experiments:

- at 28 px, the CIFAR-style stem: a 3x3 stride-1 conv and no max-pool (final grid 4x4);
  11,172,423 / 23,514,695 parameters at 3 channels and 7 classes;
- at 64 px and above, torchvision's ImageNet stem: 7x7 stride-2 conv + 3x3 stride-2
  max-pool (final grids 2x2, 4x4, 7x7 at 64, 128, 224).

Only the input channels, class count, the stem and an optional classifier dropout differ
from torchvision. `init` picks the weight initialisation: "torchvision" (the default; He
normal, fan-out), "pytorch" (each layer's own default, Kaiming uniform with a = sqrt(5)), or
"official", what the official experiments get: "pytorch" at 28 px, where their models.py
initialises nothing itself, and "torchvision" at 64 px and above, where they use
torchvision's resnet18/50. With the official recipe the official init reproduces the
published BreastMNIST AUC; with medbench's default recipe torchvision's trains better
(docs/accuracy.md). `width` (default 1) scales
the stage widths 64, 128, 256, 512 for experiments with thinner full-resolution ResNets;
at 1 the models are exactly the published ones.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet as tv

from medbench.models.layers import round_channels
from medbench.models.registry import register_model

BASE_WIDTHS = (64, 128, 256, 512)
INITS = ("official", "torchvision", "pytorch")


def stage_widths(width: float) -> list[int]:
    """torchvision's stage widths times `width`, rounded to multiples of 8 (at least 8)."""
    if not width > 0:
        raise ValueError(f"width must be positive, not {width}")
    return [round_channels(w * width) for w in BASE_WIDTHS]


class ResNet(tv.ResNet):
    """torchvision's ResNet with `forward_features` / `forward_head` and a size-aware stem."""

    def __init__(
        self,
        block: type[tv.BasicBlock | tv.Bottleneck],
        layers: list[int],
        in_channels: int,
        num_classes: int,
        image_size: int = 28,
        dropout: float = 0.0,
        width: float = 1.0,
        init: str = "torchvision",
    ) -> None:
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, not {init!r}")
        if init == "official":
            init = "pytorch" if image_size <= 32 else "torchvision"
        super().__init__(block, layers, num_classes=num_classes)
        widths = stage_widths(width)
        if tuple(widths) != BASE_WIDTHS:
            self._rebuild_stages(block, layers, widths, num_classes)
        if image_size <= 32:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.num_features = widths[3] * block.expansion
        self.head_drop = nn.Dropout(dropout)
        if init == "pytorch":  # undo torchvision's init: every layer back to its own default
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
                    m.reset_parameters()

    def _rebuild_stages(
        self,
        block: type[tv.BasicBlock | tv.Bottleneck],
        layers: list[int],
        widths: list[int],
        num_classes: int,
    ) -> None:
        """The stages and classifier again at `widths`, by torchvision's own _make_layer and
        init."""
        self.inplanes = widths[0]
        self.bn1 = nn.BatchNorm2d(widths[0])
        for i, (planes, blocks) in enumerate(zip(widths, layers, strict=True)):
            stage = self._make_layer(block, planes, blocks, stride=1 if i == 0 else 2)
            for m in stage.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            setattr(self, f"layer{i + 1}", stage)
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map: (B, num_features, h, w)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        features = self.head_drop(torch.flatten(self.avgpool(features), 1))
        return features if pre_logits else self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def resnet18(
    in_channels: int,
    num_classes: int,
    image_size: int = 28,
    *,
    dropout: float = 0.0,
    width: float = 1.0,
    init: str = "torchvision",
) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2); `dropout` before the classifier (default none);
    `width` multiplies the stage widths 64, 128, 256, 512 (default 1, the published model)."""
    return ResNet(
        tv.BasicBlock, [2, 2, 2, 2], in_channels, num_classes, image_size, dropout, width, init
    )


@register_model
def resnet50(
    in_channels: int,
    num_classes: int,
    image_size: int = 28,
    *,
    dropout: float = 0.0,
    width: float = 1.0,
    init: str = "torchvision",
) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3); `dropout` before the classifier (default none);
    `width` multiplies the stage widths 64, 128, 256, 512 (default 1, the published model)."""
    return ResNet(
        tv.Bottleneck, [3, 4, 6, 3], in_channels, num_classes, image_size, dropout, width, init
    )
