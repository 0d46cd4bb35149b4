"""The 3D ResNets of the MedMNIST v2 benchmark and the 2D -> 3D conversions they are built with."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv

from medbench.errors import MedbenchError
from medbench.models import (
    build_model,
    check_spatial_dims,
    count_parameters,
    list_models,
    model_spatial_dims,
    model_summary,
)
from medbench.models.volumetric import ACSConv, acs_split, convert_to_3d

NAMES_3D = ["resnet18_2.5d", "resnet18_3d", "resnet18_acs",
            "resnet50_2.5d", "resnet50_3d", "resnet50_acs"]  # fmt: skip
TINY = {"width": 0.125}  # stage widths 8-64: a forward pass in milliseconds


def _reference_acs(x, weight, bias, stride, padding):
    """The paper's definition: each third of the 2D kernels placed as the centre slice of a
    zero k x k x k kernel, across the axial, coronal and sagittal planes in turn."""
    k = weight.shape[-1]
    parts, start = [], 0
    for axis, n in enumerate(acs_split(weight.shape[0])):
        full = torch.zeros(n, weight.shape[1], k, k, k)
        index = [slice(None)] * 5
        index[2 + axis] = k // 2
        full[tuple(index)] = weight[start : start + n]
        parts.append(F.conv3d(x, full, None, stride, padding))
        start += n
    return torch.cat(parts, 1) + bias.view(1, -1, 1, 1, 1)


def test_acs_splits_the_output_channels_in_thirds_the_first_ones_larger():
    assert acs_split(64) == (22, 21, 21)
    assert acs_split(10) == (4, 3, 3)
    assert acs_split(3) == (1, 1, 1)


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "padding"),
    [(3, 10, 3, 1, 1), (4, 8, 3, 2, 1), (2, 7, 1, 2, 0), (3, 5, 7, 2, 3), (2, 6, 3, 1, 0),
     (2, 6, 5, 2, 1)],
)  # fmt: skip
def test_an_acs_conv_is_three_2d_kernel_3d_convs_on_channel_thirds(cin, cout, k, stride, padding):
    torch.manual_seed(0)
    conv = ACSConv(cin, cout, k, stride, padding, bias=True)
    x = torch.randn(2, cin, 9, 10, 11)
    expected = _reference_acs(x, conv.weight.detach(), conv.bias.detach(), stride, padding)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def _conv2d(cin=2, cout=6, k=3, stride=1, padding=1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, bias=True))


def test_the_acs_form_keeps_the_2d_weights():
    net = _conv2d()
    weight = net[0].weight.detach().clone()
    convert_to_3d(net, "acs")
    assert isinstance(net[0], ACSConv) and torch.equal(net[0].weight, weight)


def test_the_2_5d_form_is_the_2d_conv_on_every_slice():
    net = _conv2d()
    x = torch.randn(2, 2, 5, 8, 8)
    per_slice = torch.stack([net(x[:, :, d]) for d in range(5)], 2)
    convert_to_3d(net, "2.5d")
    assert net[0].kernel_size == (1, 3, 3)
    torch.testing.assert_close(net(x), per_slice, rtol=1e-5, atol=1e-5)


def test_the_3d_form_inflates_the_2d_kernel_so_a_depth_constant_volume_gives_the_2d_output():
    net = _conv2d()
    image = torch.randn(2, 2, 8, 8)
    expected = net(image)
    convert_to_3d(net, "3d")
    assert net[0].kernel_size == (3, 3, 3)
    volume = image.unsqueeze(2).expand(-1, -1, 6, -1, -1)
    out = net(volume)
    for d in range(1, 5):  # the slices whose depth neighbourhood lies inside the volume
        torch.testing.assert_close(out[:, :, d], expected, rtol=1e-5, atol=1e-5)


def test_batch_norm_and_pools_become_their_3d_versions_with_their_state():
    bn = nn.BatchNorm2d(4)
    bn.running_mean.fill_(0.5)
    net = convert_to_3d(nn.Sequential(bn, nn.MaxPool2d(3, 2, 1), nn.AdaptiveAvgPool2d(1)), "acs")
    assert [type(m) for m in net] == [nn.BatchNorm3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d]
    assert torch.equal(net[0].running_mean, torch.full((4,), 0.5))


def test_a_2d_layer_without_a_known_3d_form_is_refused():
    with pytest.raises(ValueError, match="no 3D form of Dropout2d"):
        convert_to_3d(nn.Sequential(nn.Dropout2d()), "3d")


def _official_2d(depth: int, in_channels: int, num_classes: int) -> nn.Module:
    """The experiments' MedMNIST3D/models.py ResNet (kuangliu/pytorch-cifar): torchvision's
    ResNet with a 3x3 stride-1 stem and no max-pool; same blocks, same 1x1-conv+BN
    shortcuts, so the same parameters."""
    model = getattr(tv, f"resnet{depth}")(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _official_count(depth: int, form: str, in_channels: int, num_classes: int) -> int:
    """Parameters after the experiments' conversion rule: ACS and 2.5D keep every weight
    shape's element count; the 3D form turns each k x k kernel into a k x k x k one."""
    model = _official_2d(depth, in_channels, num_classes)
    n = sum(p.numel() for p in model.parameters())
    if form == "3d":
        n += sum(m.weight.numel() * (m.kernel_size[0] - 1)
                 for m in model.modules() if isinstance(m, nn.Conv2d))  # fmt: skip
    return n


# Measured with the experiments' models.py converted by acsconv 0.1.1's converters (its
# BatchNorm conversion patched for torch 2's `bias` argument); the rule above gives the same.
OFFICIAL_COUNTS = {
    ("resnet18_3d", 11): 33_145_419, ("resnet18_acs", 11): 11_173_323,
    ("resnet18_2.5d", 11): 11_173_323, ("resnet50_3d", 11): 46_157_387,
    ("resnet50_acs", 11): 23_521_739, ("resnet50_2.5d", 11): 23_521_739,
    ("resnet18_3d", 2): 33_140_802, ("resnet18_acs", 2): 11_168_706,
    ("resnet50_3d", 2): 46_138_946, ("resnet50_acs", 2): 23_503_298,
}  # fmt: skip


@pytest.mark.parametrize(("name", "classes"), sorted(OFFICIAL_COUNTS))
def test_parameter_counts_at_28_cubed_equal_the_official_experiments_models(name, classes):
    depth, form = int(name[6:8]), name.split("_")[1]
    with torch.device("meta"):
        model = build_model(name, 1, classes, 28)
    assert count_parameters(model) == OFFICIAL_COUNTS[(name, classes)]
    assert count_parameters(model) == _official_count(depth, form, 1, classes)


@pytest.mark.parametrize(
    ("name", "size"),
    [*((name, 28) for name in NAMES_3D), pytest.param("resnet18_acs", 64, marks=pytest.mark.slow)],
)
def test_each_3d_model_maps_a_volume_to_one_logit_per_class(name, size):
    model = build_model(name, 1, 3, size, **TINY).eval()
    x = torch.randn(2, 1, size, size, size)
    with torch.no_grad():
        features = model.forward_features(x)
        assert torch.equal(model.forward_head(features), model(x))
    assert features.ndim == 5 and features.shape[:2] == (2, model.num_features)
    assert model(x).shape == (2, 3)


def test_3d_models_are_listed_apart_and_2d_listings_are_unchanged():
    assert list_models(3) == NAMES_3D
    assert list_models() == ["advanced_cnn", "efficientnet", "resnet18", "resnet50"]
    assert set(list_models(None)) == set(NAMES_3D) | set(list_models())
    assert model_spatial_dims("resnet18_acs") == 3 and model_spatial_dims("timm:resnet10t") == 2


def test_a_3d_model_for_a_2d_dataset_is_refused_in_one_line():
    with pytest.raises(MedbenchError, match="resnet18_3d is for 3D volumes but dermamnist") as e:
        check_spatial_dims("resnet18_3d", 2, "dermamnist")
    assert "\n" not in str(e.value)


def test_a_2d_model_for_a_3d_dataset_is_refused_in_one_line():
    with pytest.raises(MedbenchError, match="resnet18 is for 2D images but organmnist3d holds"):
        check_spatial_dims("resnet18", 3, "organmnist3d")


def test_3d_models_take_only_the_published_volume_sizes():
    with pytest.raises(MedbenchError, match="28 or 64"):
        build_model("resnet18_acs", 1, 2, 128)


def test_a_3d_model_summary_counts_the_flops_of_a_volume():
    summary = model_summary("resnet18_acs", 1, 11, 28)
    assert summary["n_params"] == 11_173_323
    # ACS and 2.5D convolutions cost the same multiply-adds; the 3D form ~3x more.
    assert summary["flops"] == model_summary("resnet18_2.5d", 1, 11, 28)["flops"]
    assert model_summary("resnet18_3d", 1, 11, 28)["flops"] > 2.5 * summary["flops"]
