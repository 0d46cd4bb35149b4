"""`resnet18`, `resnet50`: the ResNets of the MedMNIST v2 benchmark (Yang et al. 2023).

He et al. 2016, "Deep residual learning for image recognition", built from torchvision's
own `BasicBlock` / `Bottleneck` / `ResNet`. Like the official MedMNIST experiments:

- at 28 px, the CIFAR-style stem: a 3x3 stride-1 conv and no max-pool (final grid 4x4);
  11,172,423 / 23,514,695 parameters at 3 channels and 7 classes;
- at 64 px and above, torchvision's ImageNet stem: 7x7 stride-2 conv + 3x3 stride-2
  max-pool (final grids 2x2, 4x4, 7x7 at 64, 128, 224).

Only the input channels, class count, the stem and an optional classifier dropout differ
from torchvision; weights are initialised as torchvision does.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet as tv

from medbench.models.registry import register_model


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
    ) -> None:
        super().__init__(block, layers, num_classes=num_classes)
        if image_size <= 32:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.num_features = 512 * block.expansion
        self.head_drop = nn.Dropout(dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map: (B, num_features, h, w)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        features = self.head_drop(torch.flatten(self.avgpool(features), 1))
        return features if pre_logits else self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.forward_head(self.forward_features(x))


@register_model
def resnet18(
    in_channels: int, num_classes: int, image_size: int = 28, *, dropout: float = 0.0
) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2); `dropout` before the classifier (default none)."""
    return ResNet(tv.BasicBlock, [2, 2, 2, 2], in_channels, num_classes, image_size, dropout)


@register_model
def resnet50(
    in_channels: int, num_classes: int, image_size: int = 28, *, dropout: float = 0.0
) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3); `dropout` before the classifier (default none)."""
    return ResNet(tv.Bottleneck, [3, 4, 6, 3], in_channels, num_classes, image_size, dropout)
