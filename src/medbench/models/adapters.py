"""Input adapters: feed small gray MedMNIST images to backbones pretrained on large RGB ones.

A pretrained ImageNet backbone expects 3 channels at (typically) 224 px. Two choices
decide how a 28 px gray image reaches it, both offered as in the MedMNIST+ benchmark
(Doerrich et al. 2024, "Rethinking model prototyping through the MedMNIST+ dataset
collection"):

- size: `upsample` (bilinear interpolation to the target size) or `pad` (the image kept
  at its own resolution in the centre of a black canvas of the target size, as MedMNIST+
  does for its 28 px images), or `none` (the image goes in at its own size);
- channels: `repeat` (the backbone keeps its 3-channel first convolution and the gray
  channel is repeated) or `conv` (the backbone is built with the data's channel count and
  `medbench.training.pretrained` folds the pretrained first-convolution weights over their input
  channels when loading). For one gray channel `conv` *sums* the RGB filters (timm's
  `adapt_input_conv`), which computes exactly what `repeat` computes on a gray image at a
  third of the first layer's cost; a plain average would shrink the first activations
  three-fold against the pretrained batch-norm statistics.

- normalisation (`input_norm`): `medmnist` (the images arrive as medbench normalises
  them, (x - 0.5) / 0.5, and the padding is black) or `backbone` (the adapter turns them
  into the backbone's own pretrained mean/std, then pads with zeros: MedMNIST+'s code
  normalises first and pads after, so its padding is the mean colour, not black).

The adapter has no parameters, so a model's state-dict names are its backbone's, under
`backbone.`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from medbench.errors import MedbenchError

SIZE_MODES = ("none", "upsample", "pad")
CHANNEL_MODES = ("repeat", "conv")
NORM_MODES = ("medmnist", "backbone")
MEDMNIST_MEAN, MEDMNIST_STD = 0.5, 0.5  # medbench.training.inference's normalisation of the input
# Black after medbench's (x - 0.5) / 0.5 normalisation (MedMNIST+ pads with zeros *after* its
# own normalisation instead: input_norm="backbone").
BLACK = -1.0


class FeatureModel(Protocol):
    """The split of `forward` every model of the zoo has (timm's; see medbench.models)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...


class InputAdapter(nn.Module):
    """Wrap `backbone` so that it takes (B, in_channels, H, W) images of any small size.

    `mode`: "upsample", "pad" or "none" (see the module docstring); `target_size`: the
    backbone's input size; `in_channels` / `backbone_channels`: the data's and the
    backbone's channel counts (1 -> 3 repeats the gray channel).
    """

    # Buffers, registered only with a backbone normalisation (`renormalize`).
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        *,
        mode: str = "upsample",
        target_size: int = 224,
        in_channels: int = 1,
        backbone_channels: int = 3,
        pad_value: float = BLACK,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        if mode not in SIZE_MODES:
            raise MedbenchError(
                f"input adapter mode must be one of {', '.join(SIZE_MODES)}, not {mode!r}"
            )
        if backbone_channels != in_channels and in_channels != 1:
            raise MedbenchError(
                f"cannot feed {in_channels}-channel images to a {backbone_channels}-channel "
                f"backbone by repeating; use input_channels=conv"
            )
        self.backbone = backbone
        self.mode = mode
        self.target_size = int(target_size)
        self.in_channels = in_channels
        self.backbone_channels = backbone_channels
        self.pad_value = pad_value
        self.num_features = backbone.num_features
        # The backbone's own normalisation, when asked for: buffers so they follow the
        # model to its device, not persistent so the state dict stays the backbone's.
        self.renormalize = mean is not None and std is not None
        if self.renormalize:
            shape = (1, -1, 1, 1)
            self.register_buffer("mean", torch.tensor(mean).view(shape), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(shape), persistent=False)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """The images as the backbone wants them: its channel count and input size."""
        if x.shape[1] != self.backbone_channels:
            x = x.expand(-1, self.backbone_channels, -1, -1)
        if self.renormalize:
            x = (x * MEDMNIST_STD + MEDMNIST_MEAN - self.mean) / self.std
        h, w = x.shape[-2:]
        if self.mode == "upsample" and (h, w) != (self.target_size, self.target_size):
            x = F.interpolate(
                x, size=(self.target_size, self.target_size), mode="bilinear", align_corners=False
            )
        elif self.mode == "pad" and (h, w) != (self.target_size, self.target_size):
            if h > self.target_size or w > self.target_size:
                raise MedbenchError(
                    f"cannot pad {h}x{w} images to a smaller {self.target_size} px; "
                    f"use input_adapter=upsample or a larger input_size"
                )
            top, left = (self.target_size - h) // 2, (self.target_size - w) // 2
            x = F.pad(
                x,
                (left, self.target_size - w - left, top, self.target_size - h - top),
                value=self.pad_value,
            )
        return x

    def _split_backbone(self) -> FeatureModel:
        # nn.Module types an attribute it does not declare as Tensor | Module; the backbone
        # is a timm model, and build_model refuses one without forward_features/forward_head.
        return cast(FeatureModel, self.backbone)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._split_backbone().forward_features(self.adapt(x))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self._split_backbone().forward_head(features, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return classifier_of(self.backbone)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode}, target_size={self.target_size}, "
            f"channels={self.in_channels}->{self.backbone_channels}"
        )


@dataclass(frozen=True)
class AdapterSpec:
    """The adapter a model's options ask for (`input_adapter`, `input_size`, `input_channels`)."""

    mode: str
    target_size: int
    channels: str
    norm: str = "medmnist"

    OPTION_NAMES = ("input_adapter", "input_size", "input_channels", "input_norm")

    @classmethod
    def pop_from(cls, options: dict, default_size: int = 224) -> AdapterSpec | None:
        """Remove the adapter options from `options`; None when no adapter is asked for."""
        popped = {k: options.pop(k, None) for k in cls.OPTION_NAMES}
        given = {k: v for k, v in popped.items() if v is not None}
        if not given:
            return None
        mode = given.get("input_adapter", "none")
        size = given.get("input_size")
        channels = given.get("input_channels", "repeat")
        norm = given.get("input_norm", "medmnist")
        if norm not in NORM_MODES:
            raise MedbenchError(f"input_norm must be one of {', '.join(NORM_MODES)}, not {norm!r}")
        if mode not in SIZE_MODES:
            raise MedbenchError(
                f"input_adapter must be one of {', '.join(SIZE_MODES)}, not {mode!r}"
            )
        if channels not in CHANNEL_MODES:
            raise MedbenchError(
                f"input_channels must be one of {', '.join(CHANNEL_MODES)}, not {channels!r}"
            )
        if mode == "none" and channels == "conv" and norm == "medmnist":
            return None  # the plain model: first-conv folding happens when weights load
        return cls(mode=mode, target_size=int(size or default_size), channels=channels, norm=norm)

    def backbone_channels(self, in_channels: int) -> int:
        """The channel count to build the backbone with."""
        return 3 if self.channels == "repeat" and in_channels == 1 else in_channels

    def backbone_size(self, image_size: int) -> int:
        """The image size the backbone will see (for transformers fixed at construction)."""
        return image_size if self.mode == "none" else self.target_size

    def wrap(self, backbone: nn.Module, in_channels: int) -> InputAdapter:
        channels = self.backbone_channels(in_channels)
        mean = std = None
        if self.norm == "backbone":
            mean, std = backbone_mean_std(backbone, channels)
        return InputAdapter(
            backbone,
            mode=self.mode,
            target_size=self.target_size,
            in_channels=in_channels,
            backbone_channels=channels,
            pad_value=BLACK if mean is None else 0.0,
            mean=mean,
            std=std,
        )


def backbone_mean_std(backbone: nn.Module, channels: int) -> tuple[tuple[float, ...], ...]:
    """The mean and std a timm backbone was pretrained with (its `pretrained_cfg`), for
    `channels` input channels (one gray channel: the average of the RGB values);
    medbench's 0.5/0.5 for a model without a pretrained config."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", (MEDMNIST_MEAN,) * 3))
    std = tuple(float(v) for v in cfg.get("std", (MEDMNIST_STD,) * 3))
    if channels != len(mean):
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    return mean, std


def unwrap(model: nn.Module) -> nn.Module:
    """The backbone inside an InputAdapter (the model itself otherwise)."""
    return model.backbone if isinstance(model, InputAdapter) else model


def classifier_of(model: nn.Module) -> nn.Module:
    """The final classification layer: timm's `get_classifier()`, else `fc` or `classifier`."""
    model = unwrap(model)
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, nn.Module):
            return head
    for name in ("fc", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    raise MedbenchError(
        f"cannot find the classifier of {type(model).__name__} (no get_classifier/fc/classifier)"
    )
