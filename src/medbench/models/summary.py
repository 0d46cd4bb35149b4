"""Model size and cost: parameter counts and FLOPs, measured by PyTorch itself."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from medbench.models.registry import build_model, model_spatial_dims


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one eval-mode forward pass of one image of shape (C, H, W) (or one
    volume, (C, D, H, W)).

    Counted by `torch.utils.flop_counter.FlopCounterMode`, which counts a multiply-add as
    2 FLOPs and counts convolutions and matrix products only (normalisation, activations
    and pooling are not counted).
    """
    was_training = model.training
    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu")
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_summary(
    name: str, in_channels: int, num_classes: int, image_size: int = 28, **options: object
) -> dict[str, object]:
    """Name, parameter count and FLOPs (one image) of model `name` for this input shape
    (a volume of `image_size`^3 for a 3D model)."""
    dims = model_spatial_dims(name)
    # A 3D model is counted on the meta device: shapes only, the same counts, no forward
    # pass of tens of GFLOPs on the CPU.
    with torch.device("meta") if dims == 3 else contextlib.nullcontext():
        model = build_model(name, in_channels, num_classes, image_size, **options)
    n_params = count_parameters(model)
    flops = count_flops(model, (in_channels, *(image_size,) * dims))
    return {
        "name": name,
        "n_params": n_params,
        "flops": flops,
        "gflops": flops / 1e9,
        "params_m": n_params / 1e6,
    }
