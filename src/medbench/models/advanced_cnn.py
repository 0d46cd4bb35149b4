"""`advanced_cnn`: a residual CNN whose classifier sees attention-gated features.

Four stages of residual blocks (He et al. 2016) with batch norm; the final stage's output
is the gating signal of grid-attention gates (Schlemper et al. 2019, "Attention gated
networks: learning to leverage salient regions in medical images") on the outputs of
stages 2 and 3. As in the paper's aggregation, the classifier reads the global-pooled gated
features concatenated with the global-pooled final features.

Stride plan (the stem keeps small images whole; every stage then halves the grid):

    image  stem stride  stage grids        final grid
    28     1            14, 7, 4, 2        2x2
    64     2            16, 8, 4, 2        2x2
    128    4            16, 8, 4, 2        2x2
    224    4            28, 14, 7, 4       4x4
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medbench.models.layers import (
    AttentionGate,
    ConvBnAct,
    ResidualBlock,
    drop_path_rates,
    round_channels,
)
from medbench.models.registry import register_model

BASE_WIDTHS = (56, 112, 224, 448)
DEPTHS = (2, 2, 2, 1)


def stem_stride(image_size: int) -> int:
    """1 up to 32 px, 2 up to 64 px, 4 above (a stride-2 conv, then a stride-2 conv)."""
    return 1 if image_size <= 32 else 2 if image_size <= 64 else 4


def build_stem(in_channels: int, width: int, stride: int) -> nn.Sequential:
    """A 3x3 conv-BN-ReLU of this stride (at most 2), a second stride-2 one for stride 4."""
    return nn.Sequential(
        ConvBnAct(in_channels, width, 3, stride=min(stride, 2)),
        ConvBnAct(width, width, 3, stride=2) if stride == 4 else nn.Identity(),
    )


def residual_stages(
    in_channels: int, widths: Sequence[int], depths: Sequence[int], drop_path: float
) -> nn.ModuleList:
    """One stride-2 residual block, then stride-1 ones, per stage.

    Stochastic depth rises linearly from 0 at the first block to `drop_path` at the last
    (Huang et al. 2016), by timm's rule.
    """
    rates = iter(drop_path_rates(drop_path, sum(depths)))
    stages = []
    for width, depth in zip(widths, depths, strict=True):
        blocks = []
        for i in range(depth):
            blocks.append(ResidualBlock(in_channels, width, 2 if i == 0 else 1, next(rates)))
            in_channels = width
        stages.append(nn.Sequential(*blocks))
    return nn.ModuleList(stages)


class AdvancedCNN(nn.Module):
    """Residual stages + attention-gated aggregation; see the module docstring.

    `forward_features` returns a map on the final grid: the channels of the gated stage-2
    and stage-3 features, each averaged over its own grid and repeated over the final one,
    then the final stage's own map. `forward_head` averages the final stage's channels over
    the grid and reads the gated ones (constant over it) as they are, so the classifier
    sees what the paper's aggregation gives it.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int = 28,
        *,
        widths: Sequence[int] = BASE_WIDTHS,
        depths: Sequence[int] = DEPTHS,
        attention: bool = True,
        drop_path: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(depths) != 4 or min(depths) < 1 or min(widths) < 1:
            raise ValueError(f"widths and depths need 4 positive entries, not {widths}, {depths}")
        self.stem = build_stem(in_channels, widths[0] // 2, stem_stride(image_size))
        self.stages = residual_stages(widths[0] // 2, widths, depths, drop_path)
        gated_widths = widths[1:3] if attention else []
        self.gates = nn.ModuleList(AttentionGate(w, widths[3]) for w in gated_widths)
        self.num_gated_features = sum(gated_widths)
        self.num_features = self.num_gated_features + widths[3]
        self.head_drop = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init, as torchvision's ResNet; BN is left alone (residual branches end at zero), and
        # so is the gates' 1-channel psi, whose default small init starts alpha unsaturated.
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1 and m.out_channels > 1:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, num_features, h, w) on the final grid: the gated features of stages 2 and 3,
        pooled over their own grids and repeated over this one, then the final features."""
        *_, final = outputs = self._stage_outputs(x)
        # No gates (attention=False) -> the map is the final features only.
        gated = [gate(f, final)[0] for gate, f in zip(self.gates, outputs[1:3], strict=False)]
        # torch.cat keeps channels-last only when every input has it; keeping the final
        # features' layout keeps the head's pooling summing them in the same order.
        channels_last = final.is_contiguous(memory_format=torch.channels_last)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        size = final.shape[-2:]
        tiles = [
            g.mean((2, 3), keepdim=True).expand(-1, -1, *size).contiguous(memory_format=layout)
            for g in gated
        ]
        return torch.cat([*tiles, final], dim=1)

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The gates' attention maps alpha (B, 1, h, w) on stages 2 and 3, for inspection."""
        *_, final = outputs = self._stage_outputs(x)
        return [gate(f, final)[1] for gate, f in zip(self.gates, outputs[1:3], strict=False)]

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (the gated channels are already pooled), dropout, linear classifier."""
        gated, final = features.split(
            [self.num_gated_features, features.shape[1] - self.num_gated_features], dim=1
        )
        features = self.head_drop(torch.cat([gated[:, :, 0, 0], final.mean((2, 3))], dim=1))
        return features if pre_logits else self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def advanced_cnn(
    in_channels: int,
    num_classes: int,
    image_size: int = 28,
    *,
    width: float = 1.0,
    depths: Sequence[int] = DEPTHS,
    attention: bool = True,
    drop_path: float = 0.0,
    dropout: float = 0.0,
) -> AdvancedCNN:
    """Residual CNN with attention gates, 5.10M parameters at 3 channels / 7 classes.

    `width` multiplies the stage widths (56, 112, 224, 448); `depths` is the number of
    residual blocks per stage (default 2, 2, 2, 1); `attention=False` drops the gates (the
    classifier then reads the final features only).
    """
    if not width > 0:
        raise ValueError(f"width must be positive, not {width}")
    return AdvancedCNN(
        in_channels,
        num_classes,
        image_size,
        widths=[round_channels(w * width) for w in BASE_WIDTHS],
        depths=tuple(depths),
        attention=attention,
        drop_path=drop_path,
        dropout=dropout,
    )
