"""Reusable blocks of the medbench model families.

Each block cites the paper it comes from. Generic pieces (squeeze-and-excitation,
stochastic depth, padded depthwise convolutions) come from `timm.layers`, which the
field trusts; the blocks here only compose them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, SEModule, create_conv2d
from torch import nn


class ConvBnAct(nn.Sequential):
    """Convolution (no bias), batch norm, activation: the unit every block is made of."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        groups: int = 1,
        act_layer: type[nn.Module] | None = nn.ReLU,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__(
            create_conv2d(in_channels, out_channels, kernel_size, stride=stride, groups=groups),
            nn.BatchNorm2d(out_channels, eps=bn_eps),
            act_layer(inplace=True) if act_layer is not None else nn.Identity(),
        )


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers plus an identity (or 1x1 projection) shortcut.

    The basic block of He et al. 2016, "Deep residual learning for image recognition",
    with stochastic depth on the residual branch (Huang et al. 2016, "Deep networks with
    stochastic depth"). The last BN of the branch starts at zero so every block starts as
    the identity (Goyal et al. 2017), which keeps early training stable.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, drop_path: float = 0.0
    ):
        super().__init__()
        self.conv1 = ConvBnAct(in_channels, out_channels, 3, stride)
        self.conv2 = ConvBnAct(out_channels, out_channels, 3, act_layer=None)
        nn.init.zeros_(self.conv2[1].weight)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvBnAct(in_channels, out_channels, 1, stride, act_layer=None)
        else:
            self.shortcut = nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shortcut(x) + self.drop_path(self.conv2(self.conv1(x))))


class AttentionGate(nn.Module):
    """Additive grid-attention gate of Schlemper et al. 2019, "Attention gated networks:
    learning to leverage salient regions in medical images" (Medical Image Analysis 53).

    A coarser, more semantic gating signal `g` decides which positions of the finer
    features `x` matter: alpha = sigmoid(psi(relu(W_x x + up(W_g g)))), and the gate returns
    W(alpha * x) (W: 1x1 conv + BN, as in the paper) together with the attention map alpha.
    """

    def __init__(self, x_channels: int, g_channels: int, inter_channels: int | None = None):
        super().__init__()
        inter_channels = inter_channels or max(x_channels // 2, 1)
        self.theta_x = nn.Conv2d(x_channels, inter_channels, 1, bias=False)
        self.phi_g = nn.Conv2d(g_channels, inter_channels, 1, bias=True)
        self.psi = nn.Conv2d(inter_channels, 1, 1, bias=True)
        self.out = ConvBnAct(x_channels, x_channels, 1, act_layer=None)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = F.interpolate(self.phi_g(g), size=x.shape[-2:], mode="bilinear", align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(self.theta_x(x) + g)))
        return self.out(alpha * x), alpha


class MBConv(nn.Module):
    """Inverted-residual block with squeeze-and-excitation.

    1x1 expansion -> depthwise kxk -> SE -> 1x1 linear projection, with a residual (and
    stochastic depth) when input and output shapes match. From Sandler et al. 2018,
    "MobileNetV2: inverted residuals and linear bottlenecks", with the SE of Hu et al. 2018,
    "Squeeze-and-excitation networks", as used by Tan & Le 2019, "EfficientNet". The SE
    bottleneck is sized from the block's input channels (`se_ratio * in_channels`), as in
    EfficientNet; the projection's BN starts at zero in residual blocks.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 6.0,
        se_ratio: float = 0.25,
        drop_path: float = 0.0,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        mid = int(round(in_channels * expand_ratio))
        self.has_residual = stride == 1 and in_channels == out_channels
        self.expand = (
            ConvBnAct(in_channels, mid, 1, act_layer=nn.SiLU, bn_eps=bn_eps)
            if mid != in_channels
            else nn.Identity()
        )
        self.depthwise = ConvBnAct(
            mid, mid, kernel_size, stride, groups=mid, act_layer=nn.SiLU, bn_eps=bn_eps
        )
        if se_ratio > 0:
            rd = max(1, int(in_channels * se_ratio))
            self.se = SEModule(mid, rd_channels=rd, act_layer=nn.SiLU)
        else:
            self.se = nn.Identity()
        self.project = ConvBnAct(mid, out_channels, 1, act_layer=None, bn_eps=bn_eps)
        if self.has_residual:
            nn.init.zeros_(self.project[1].weight)
        self.drop_path = (
            DropPath(drop_path) if drop_path > 0 and self.has_residual else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + self.drop_path(out) if self.has_residual else out
