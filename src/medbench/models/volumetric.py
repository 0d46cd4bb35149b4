"""3D forms of 2D CNNs, and the 3D ResNets of the MedMNIST v2 benchmark built with them.

The official MedMNIST experiments (MedMNIST/experiments, `MedMNIST3D/`) take their 2D
ResNet-18/50 and convert every 2D layer with the converters of the `acsconv` package
(M3DV/ACSConv), in one of three forms:

- `3d`: each k x k convolution becomes a k x k x k one whose weights are the 2D kernel
  repeated along the depth axis and divided by k (i3d inflation, Carreira & Zisserman 2017;
  the experiments' `Conv3dConverter(model, i3d_repeat_axis=-3)`, their default);
- `acs`: ACS convolution (Yang et al., "Reinventing 2D Convolutions for 3D Images", IEEE
  JBHI 2021): the 2D kernel's output channels are split in three groups (sizes as equal as
  possible, the first groups one larger), applied as 1 x k x k, k x 1 x k and k x k x 1
  kernels, i.e. in the axial, coronal and sagittal planes, and concatenated;
- `2.5d`: each k x k convolution becomes a 1 x k x k one: 2D convolutions slice by slice,
  the stride still applied along depth too (the experiments' `Conv2_5dConverter`).

Batch norms and pools become their 3D versions. ACS and 2.5D models have exactly the
parameters of the 2D model; the 3D form has k times the weights of each k x k convolution.
The converters here are medbench's own (the `acsconv` package's converters return a
non-Module wrapper and print on import); tests/test_models_3d.py checks them against the
definitions above.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv

from medbench.models.registry import register_model
from medbench.models.resnet import ResNet

FORMS = ("3d", "acs", "2.5d")
VOLUME_SIZES = (28, 64)

ModuleT = TypeVar("ModuleT", bound=nn.Module)
SizeT = TypeVar("SizeT", bound="int | None")


def acs_split(out_channels: int) -> tuple[int, int, int]:
    """Output channels per plane (axial, coronal, sagittal): equal thirds, the first groups
    taking the remainder, as in the paper's reference implementation."""
    third, rest = divmod(out_channels, 3)
    axial, coronal, sagittal = (third + (i < rest) for i in range(3))
    return axial, coronal, sagittal


class ACSConv(nn.Module):
    """ACS convolution: a 2D k x k kernel whose output-channel thirds convolve the volume
    in the axial (1 x k x k), coronal (k x 1 x k) and sagittal (k x k x 1) planes (Yang et
    al., IEEE JBHI 2021). Holds the 2D weight (out, in, k, k); input (B, in, D, H, W)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"ACS convolutions need an odd kernel size, not {kernel_size}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.dilation = padding, dilation
        self.split = acs_split(out_channels)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's own default, so a freshly built ACS layer starts like a 2D one.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts, start = [], 0
        for axis, n in enumerate(self.split):
            if n:
                weight = self.weight[start : start + n].unsqueeze(2 + axis)
                parts.append(self._plane(x, weight, axis))
            start += n
        out = torch.cat(parts, 1)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1, 1)

    def _plane(self, x: torch.Tensor, weight: torch.Tensor, axis: int) -> torch.Tensor:
        """The 3D convolution of one plane's kernel (size 1 along `axis`): along that axis it
        samples the centre of where a k-wide kernel would sit, so the output has the shape
        of the full k x k x k convolution."""
        flat = self.padding - self.dilation * (self.kernel_size // 2)
        padding = [self.padding] * 3
        padding[axis] = max(flat, 0)
        if flat < 0:  # less padding than the kernel's half-width: crop that axis instead
            pad = [0] * 6
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = flat
            x = F.pad(x, pad)
        return F.conv3d(x, weight, None, self.stride, padding, self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, split={self.split}"
            + (", bias=False" if self.bias is None else "")
        )


def _one(value: int | tuple[SizeT, ...], what: str) -> int | SizeT:
    """The one value of a square 2D size: an int, or a tuple of equal values (an adaptive
    pool's output size may hold None)."""
    values = (value,) if isinstance(value, int) else tuple(value)
    if len(set(values)) != 1:
        raise ValueError(f"only square 2D {what}s convert to 3D, not {value}")
    return values[0]


def _convert_conv(conv: nn.Conv2d, form: str) -> nn.Module:
    """One Conv2d in `form`, starting from its 2D weights."""
    k, s = _one(conv.kernel_size, "kernel"), _one(conv.stride, "stride")
    if isinstance(conv.padding, str):  # "same" / "valid": a rule, not a size (_one's message)
        raise ValueError(f"only square 2D paddings convert to 3D, not {conv.padding}")
    p, d = _one(conv.padding, "padding"), _one(conv.dilation, "dilation")
    bias = conv.bias is not None
    new: ACSConv | nn.Conv3d
    if conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError("only plain (groups=1, zero-padded) convolutions convert to 3D")
    if form == "acs":
        new = ACSConv(conv.in_channels, conv.out_channels, k, s, p, d, bias)
        weight = conv.weight.detach()
    elif form == "2.5d":
        new = nn.Conv3d(conv.in_channels, conv.out_channels, (1, k, k), s, (0, p, p), d, bias=bias)
        weight = conv.weight.detach().unsqueeze(2)
    else:  # i3d: the 2D kernel repeated along depth, divided by its depth
        new = nn.Conv3d(conv.in_channels, conv.out_channels, k, s, p, d, bias=bias)
        weight = conv.weight.detach().unsqueeze(2).repeat(1, 1, k, 1, 1) / k
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None:
            assert new.bias is not None  # built with bias=True
            new.bias.copy_(conv.bias)
    return new


def _convert_norm(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    new = nn.BatchNorm3d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    new.load_state_dict(bn.state_dict())
    return new


def _triple(
    value: int | tuple[int | None, ...] | None,
) -> tuple[int | None, int | None, int | None] | None:
    return value if value is None else (_one(value, "pooling size"),) * 3


def _convert_layer(layer: nn.Module, form: str) -> nn.Module | None:
    """The 3D version of a 2D leaf layer; None for a layer that needs none (or a container)."""
    if isinstance(layer, nn.Conv2d):
        return _convert_conv(layer, form)
    if isinstance(layer, nn.BatchNorm2d):
        return _convert_norm(layer)
    # A pool's square 2D size (k or (k, k)) is k on every axis: the 3D pools refuse 2-tuples.
    if isinstance(layer, nn.MaxPool2d):
        return nn.MaxPool3d(
            _one(layer.kernel_size, "pooling size"),
            _one(layer.stride, "pooling stride"),
            _one(layer.padding, "pooling padding"),
            _one(layer.dilation, "pooling dilation"),
            ceil_mode=layer.ceil_mode,
        )
    if isinstance(layer, nn.AvgPool2d):
        return nn.AvgPool3d(
            _one(layer.kernel_size, "pooling size"),
            _one(layer.stride, "pooling stride"),
            _one(layer.padding, "pooling padding"),
            layer.ceil_mode,
        )
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        return nn.AdaptiveAvgPool3d(_triple(layer.output_size))
    if "2d" in type(layer).__name__.lower():
        raise ValueError(f"no 3D form of {type(layer).__name__} is known")
    return None


def convert_to_3d(model: ModuleT, form: str) -> ModuleT:
    """Convert `model`'s 2D layers in place to `form` ("3d", "acs" or "2.5d"), keeping its
    weights as the module docstring says; returns the model. Functional 2D operations in
    a `forward` (F.conv2d, mean((2, 3))) are not seen and are the caller's to avoid."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, not {form!r}")
    for name, child in model.named_children():
        new = _convert_layer(child, form)
        if new is None:
            convert_to_3d(child, form)
        else:
            setattr(model, name, new)
    return model


def volumetric_resnet(
    block: type[tv.BasicBlock | tv.Bottleneck],
    layers: list[int],
    form: str,
    in_channels: int,
    num_classes: int,
    image_size: int,
    dropout: float,
    width: float,
    init: str,
) -> ResNet:
    """medbench's 2D ResNet with the official experiments' CIFAR stem (3x3 stride-1 conv,
    no max-pool, at 28^3 and 64^3 alike), converted to `form`. `init` as for the 2D
    ResNet ("official" is PyTorch's layer defaults, what the experiments' models.py gets)."""
    if image_size not in VOLUME_SIZES:
        raise ValueError(f"3D models take {' or '.join(map(str, VOLUME_SIZES))}^3 volumes")
    model = ResNet(block, layers, in_channels, num_classes, 28, dropout, width, init)
    return convert_to_3d(model, form)


def _variant(depth: int, form: str):
    block, layers = {18: (tv.BasicBlock, [2, 2, 2, 2]), 50: (tv.Bottleneck, [3, 4, 6, 3])}[depth]

    def builder(
        in_channels: int,
        num_classes: int,
        image_size: int = 28,
        *,
        dropout: float = 0.0,
        width: float = 1.0,
        init: str = "torchvision",
    ) -> ResNet:
        return volumetric_resnet(
            block, layers, form, in_channels, num_classes, image_size, dropout, width, init
        )

    builder.__name__ = f"resnet{depth}_{form}"
    builder.__doc__ = (
        f"ResNet-{depth} of the MedMNIST v2 3D benchmark in the {form!r} form (see "
        f"medbench.models.volumetric); `dropout` before the classifier, `width` scales the "
        f"stage widths 64-512 (1: the published model)."
    )
    return builder


for _depth in (18, 50):
    for _form in FORMS:
        register_model(_variant(_depth, _form), volumetric=True)
