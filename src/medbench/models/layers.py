"""Reusable blocks of the medbench model families.

Each block cites the paper it comes from. Generic pieces (squeeze-and-excitation,
stochastic depth, padded depthwise convolutions) come from `timm.layers`, which the
field trusts; the blocks here only compose them.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from timm.layers import (
    DropPath,
    SEModule,
    calculate_drop_path_rates,
    create_conv2d,
    get_padding,
)
from torch import nn

# Where a depthwise conv's weight gradient is summed tap by tap (`_depthwise_weight_grad`)
# instead of by PyTorch's CPU kernel, which is slow on small maps. The thresholds come
# from per-convolution timings on both project CPUs: docs/results/depthwise-grad-*.csv,
# shown in docs/models.md ("Depthwise convolutions on CPU").
SMALL_MAP_POSITIONS = 16  # tap sums at most at this many output positions, for k >= 5 ...
TINY_MAP_POSITIONS = 4  # ... and for any kernel at most at this many


def round_channels(channels: float, divisor: int = 8) -> int:
    """`channels` rounded to the nearest multiple of `divisor` (Python's round: a tie goes
    to the even quotient), and at least `divisor`.

    advanced_cnn's and the ResNets' width rule. timm's `make_divisible` (efficientnet's)
    rounds halves up and adds `divisor` when rounding loses over 10%, so it gives other
    widths (88 rather than 80 channels for advanced_cnn's 112 at width 0.75) and other
    checkpoints.
    """
    return max(divisor, int(round(channels / divisor)) * divisor)


def drop_path_rates(drop_path: float, n_blocks: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 at the first of `n_blocks` blocks to
    `drop_path` at the last (timm's per-block rule)."""
    # timm types the result of both its modes; for an int depth it is one float per block.
    return calculate_drop_path_rates(drop_path, n_blocks)  # type: ignore[return-value]


@functools.cache
def native_depthwise_grad_is_fast() -> bool:
    """Whether PyTorch's CPU kernels use AVX-512, where its depthwise weight gradient is
    fast on 4x4 maps too (docs/models.md: fast on an AVX-512 EPYC, slow on an AVX2 one)."""
    return torch.backends.cpu.get_cpu_capability() == "AVX512"


def uses_tap_sums(
    out_positions: int, kernel_size: int, native_grad_is_fast: bool | None = None
) -> bool:
    """Whether a depthwise conv's weight gradient is summed tap by tap.

    `native_grad_is_fast`: whether PyTorch's kernel is fast on 4x4 maps (None: ask this
    CPU, `native_depthwise_grad_is_fast`).
    """
    if native_grad_is_fast is None:
        native_grad_is_fast = native_depthwise_grad_is_fast()
    return out_positions <= TINY_MAP_POSITIONS or (
        out_positions <= SMALL_MAP_POSITIONS and kernel_size >= 5 and not native_grad_is_fast
    )


def _depthwise_taps(n_in: int, n_out: int, k: int, stride: int, pad: int) -> list[int]:
    """Kernel offsets along one axis that see at least one input pixel (not only padding)."""
    return [u for u in range(k) if any(0 <= u + stride * i - pad < n_in for i in range(n_out))]


def _depthwise_weight_grad(
    grad: torch.Tensor, x: torch.Tensor, k: int, stride: int, pad: int
) -> torch.Tensor:
    """d(loss)/d(weight) of a depthwise conv, one (C,)-sized sum per kernel tap.

    weight_grad[c, u, v] = sum over b, i, j of grad[b, c, i, j] * x_padded[b, c, s*i + u, s*j + v].
    Taps that only ever see padding get zero, as in the native kernel.
    """
    _, channels, height, width = x.shape
    out_h, out_w = grad.shape[-2:]
    xp = F.pad(x, (pad, pad, pad, pad))
    weight_grad = x.new_zeros(channels, k, k)
    for u in _depthwise_taps(height, out_h, k, stride, pad):
        rows = slice(u, u + stride * (out_h - 1) + 1, stride)
        for v in _depthwise_taps(width, out_w, k, stride, pad):
            cols = slice(v, v + stride * (out_w - 1) + 1, stride)
            weight_grad[:, u, v] = (grad * xp[:, :, rows, cols]).sum((0, 2, 3))
    return weight_grad.unsqueeze(1)


class _SmallMapDepthwise(torch.autograd.Function):
    """Native depthwise forward and input gradient; the weight gradient by tap sums."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: int, pad: int):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.pad = stride, pad
        return F.conv2d(x, weight, None, stride, pad, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        s, p = ctx.stride, ctx.pad
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad,
                x,
                weight,
                None,
                [s, s],
                [p, p],
                [1, 1],
                False,
                [0, 0],
                weight.shape[0],
                [True, False, False],
            )[0]
        if ctx.needs_input_grad[1]:
            grad_w = _depthwise_weight_grad(grad, x, weight.shape[-1], s, p)
        return grad_x, grad_w, None, None


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise `nn.Conv2d` (same parameters and state dict) that trains faster on CPU.

    On small output maps (`uses_tap_sums`: the late stages of an EfficientNet at 28-64
    px) its weight gradient is summed tap by tap instead of by PyTorch's CPU depthwise
    kernel; under CPU autocast it trains in fp32. Everything else (CUDA, inference,
    tracing, larger maps) is the plain convolution. `native_grad_is_fast` is passed to
    `uses_tap_sums` (None: ask this CPU).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        native_grad_is_fast: bool | None = None,
    ) -> None:
        padding = get_padding(kernel_size, stride)  # as create_conv2d pads
        assert isinstance(padding, int)  # timm gives a list only for tuple kernels/strides
        super().__init__(
            channels, channels, kernel_size, stride, padding=padding, groups=channels, bias=False
        )
        self.native_grad_is_fast = native_grad_is_fast

    @property
    def _padding_px(self) -> int:
        """The padding on each side (built from an int, which nn.Conv2d keeps as (p, p))."""
        assert not isinstance(self.padding, str)
        return self.padding[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _cpu_training(x) and torch.is_autocast_enabled("cpu"):
            # PyTorch's bf16 CPU depthwise backward is many times slower than fp32's on
            # stride-2 and 5x5 convs (docs/models.md), so under CPU autocast train in fp32.
            with torch.autocast("cpu", enabled=False):
                return self.forward(x.float())
        if self._takes_tap_sums(x):
            return _SmallMapDepthwise.apply(x, self.weight, self.stride[0], self._padding_px)
        return super().forward(x)

    def _takes_tap_sums(self, x: torch.Tensor) -> bool:
        """Whether the weight gradient of this conv on `x` (outside autocast) is tap sums."""
        k, s, p = self.kernel_size[0], self.stride[0], self._padding_px
        out_positions = ((x.shape[-2] + 2 * p - k) // s + 1) * ((x.shape[-1] + 2 * p - k) // s + 1)
        return (
            _cpu_training(x)
            and self.weight.requires_grad
            and x.dtype == self.weight.dtype
            and uses_tap_sums(out_positions, k, self.native_grad_is_fast)
        )


def _cpu_training(x: torch.Tensor) -> bool:
    """Whether `x` is a CPU tensor on its way through a graph that autograd records."""
    return x.device.type == "cpu" and torch.is_grad_enabled() and not torch.jit.is_tracing()


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
        depthwise = groups > 1 and groups == in_channels == out_channels
        super().__init__(
            DepthwiseConv2d(in_channels, kernel_size, stride)
            if depthwise
            else create_conv2d(
                in_channels, out_channels, kernel_size, stride=stride, groups=groups
            ),
            nn.BatchNorm2d(out_channels, eps=bn_eps),
            act_layer(inplace=True) if act_layer is not None else nn.Identity(),
        )

    @property
    def bn(self) -> nn.BatchNorm2d:
        """The batch norm (child `1`)."""
        bn = self[1]
        assert isinstance(bn, nn.BatchNorm2d)  # __init__ puts it there
        return bn


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
        nn.init.zeros_(self.conv2.bn.weight)
        self.shortcut: nn.Module
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
        self.se: nn.Module
        if se_ratio > 0:
            rd = max(1, int(in_channels * se_ratio))
            self.se = SEModule(mid, rd_channels=rd, act_layer=nn.SiLU)
        else:
            self.se = nn.Identity()
        self.project = ConvBnAct(mid, out_channels, 1, act_layer=None, bn_eps=bn_eps)
        if self.has_residual:
            nn.init.zeros_(self.project.bn.weight)
        self.drop_path = (
            DropPath(drop_path) if drop_path > 0 and self.has_residual else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + self.drop_path(out) if self.has_residual else out
