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

from medbench.models.layers import AttentionGate, ConvBnAct, ResidualBlock
from medbench.models.registry import register_model

BASE_WIDTHS = (56, 112, 224, 448)
DEPTHS = (2, 2, 2, 1)


def stem_stride(image_size: int) -> int:
    """1 up to 32 px, 2 up to 64 px, 4 above (a stride-2 conv, then a stride-2 conv)."""
    return 1 if image_size <= 32 else 2 if image_size <= 64 else 4


class AdvancedCNN(nn.Module):
    """Residual stages + attention-gated aggregation; see the module docstring."""

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
        stride = stem_stride(image_size)
        stem_width = widths[0] // 2
        self.stem = nn.Sequential(
            ConvBnAct(in_channels, stem_width, 3, stride=min(stride, 2)),
            ConvBnAct(stem_width, stem_width, 3, stride=2) if stride == 4 else nn.Identity(),
        )
        # Stochastic-depth rate rises linearly with depth (Huang et al. 2016).
        n_blocks = sum(depths)
        rates = [drop_path * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        stages, in_ch = [], stem_width
        for width, depth in zip(widths, depths, strict=True):
            blocks = []
            for i in range(depth):
                blocks.append(ResidualBlock(in_ch, width, 2 if i == 0 else 1, rates.pop(0)))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        if attention:
            self.gates = nn.ModuleList(AttentionGate(w, widths[3]) for w in widths[1:3])
        else:
            self.gates = nn.ModuleList()
        self.num_features = widths[3] + sum(w for w in widths[1:3]) * bool(attention)
        self.head_drop = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)
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
        """Pooled gated features of stages 2 and 3 and pooled final features: (B, num_features)."""
        *_, final = outputs = self._stage_outputs(x)
        # No gates (attention=False) -> the classifier reads the final features only.
        gated = [gate(f, final)[0] for gate, f in zip(self.gates, outputs[1:3], strict=False)]
        return torch.cat([g.mean((2, 3)) for g in (*gated, final)], dim=1)

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The gates' attention maps alpha (B, 1, h, w) on stages 2 and 3, for inspection."""
        *_, final = outputs = self._stage_outputs(x)
        return [gate(f, final)[1] for gate, f in zip(self.gates, outputs[1:3], strict=False)]

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        features = self.head_drop(features)
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
    """Residual CNN with attention gates, 5.06M parameters at 3 channels / 7 classes.

    `width` multiplies the stage widths (56, 112, 224, 448); `depths` is the number of
    residual blocks per stage (default 2, 2, 2, 1); `attention=False` drops the gates (the classifier then reads
    the final features only).
    """
    if not width > 0:
        raise ValueError(f"width must be positive, not {width}")
    widths = [max(8, int(round(w * width / 8)) * 8) for w in BASE_WIDTHS]
    return AdvancedCNN(
        in_channels,
        num_classes,
        image_size,
        widths=widths,
        depths=tuple(depths),
        attention=attention,
        drop_path=drop_path,
        dropout=dropout,
    )
