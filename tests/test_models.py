"""Specification of the model zoo (medbench.models) and the `medbench models` command."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from medbench.cli import main
from medbench.errors import MedbenchError
from medbench.models import (
    build_model,
    count_flops,
    count_parameters,
    list_models,
    model_summary,
)
from medbench.models.layers import DepthwiseConv2d, MBConv, ResidualBlock, uses_tap_sums

FAMILIES = ("advanced_cnn", "efficientnet", "resnet18")
SMALL_TIMM = "timm:resnet10t"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a small shared CPU, OpenMP threads spinning against other
    processes make tiny-batch forwards 10x slower; results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _within(value: int, target: float, tolerance: float = 0.03) -> bool:
    return abs(value - target) <= tolerance * target


def test_registry_lists_the_medbench_models():
    assert {"advanced_cnn", "efficientnet", "resnet18", "resnet50"} <= set(list_models())


def test_advanced_cnn_has_5_06m_parameters_at_3_channels_7_classes():
    assert _within(count_parameters(build_model("advanced_cnn", 3, 7)), 5.06e6)


def test_efficientnet_has_2_45m_parameters_at_3_channels_7_classes():
    assert _within(count_parameters(build_model("efficientnet", 3, 7)), 2.45e6)


@pytest.mark.parametrize(("name", "n_params"), [("resnet18", 11_172_423), ("resnet50", 23_514_695)])
def test_resnets_match_the_official_medmnist_parameter_counts_at_28px(name, n_params):
    assert count_parameters(build_model(name, 3, 7, 28)) == n_params


@pytest.mark.slow
@pytest.mark.parametrize(("name", "n_params"), [("resnet18", 11_180_103), ("resnet50", 23_522_375)])
def test_resnets_use_torchvisions_imagenet_stem_from_64px(name, n_params):
    model = build_model(name, 3, 7, 64)
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)
    assert count_parameters(model) == n_params


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", [28, 64, 128])
@pytest.mark.parametrize(("channels", "classes"), [(1, 2), (3, 11)])
def test_training_forward_gives_one_logit_per_class(name, size, channels, classes):
    model = build_model(name, channels, classes, size)
    assert model(torch.randn(2, channels, size, size)).shape == (2, classes)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize(("channels", "classes"), [(1, 2), (3, 11)])
def test_eval_forward_at_224px_gives_one_logit_per_class(name, channels, classes):
    model = build_model(name, channels, classes, 224).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, 224, 224)).shape == (2, classes)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*list_models(), SMALL_TIMM])
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_features_is_a_map_and_forward_head_pools_and_classifies_it(name, channels_last):
    torch.manual_seed(0)
    model = build_model(name, 3, 5).eval()
    x = torch.randn(2, 3, 28, 28)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        features = model.forward_features(x)
        embedding = model.forward_head(features, pre_logits=True)
        assert torch.equal(model.forward_head(features), model(x))
    assert features.ndim == 4 and features.shape[:2] == (2, model.num_features)
    assert embedding.shape == (2, model.num_features)


def test_advanced_cnn_map_holds_the_pooled_gated_features_then_the_final_stage():
    torch.manual_seed(0)
    model = build_model("advanced_cnn", 3, 7).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        *_, stage2, stage3, final = model._stage_outputs(x)
        gated = [gate(f, final)[0] for gate, f in zip(model.gates, (stage2, stage3), strict=True)]
        features = model.forward_features(x)
        embedding = model.forward_head(features, pre_logits=True)
    n_gated = model.num_gated_features
    assert n_gated == 112 + 224 and features.shape == (2, n_gated + 448, 2, 2)
    assert torch.equal(features[:, n_gated:], final)
    # Each gated channel is its gate output's global mean, the same at every position.
    assert torch.equal(
        features[:, :n_gated], features[:, :n_gated, :1, :1].expand_as(features[:, :n_gated])
    )
    # The classifier reads what the paper's aggregation gives it: pooled gated + pooled final.
    expected = torch.cat([g.mean((2, 3)) for g in (*gated, final)], dim=1)
    assert torch.equal(embedding, expected)


@pytest.mark.parametrize("name", FAMILIES)
def test_eval_outputs_are_deterministic(name):
    # Dropout and stochastic depth are on, to check that eval mode switches them off.
    options = {"dropout": 0.5} if name == "resnet18" else {"dropout": 0.5, "drop_path": 0.2}
    model = build_model(name, 3, 4, **options).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_a_few_optimiser_steps_lower_the_loss_on_a_fixed_batch(name):
    torch.manual_seed(0)
    model = build_model(name, 1, 3)
    x, y = torch.randn(6, 1, 28, 28), torch.arange(6) % 3
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["advanced_cnn", "efficientnet"])
def test_bf16_autocast_and_channels_last_run_forward_and_backward(name):
    model = build_model(name, 3, 7).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    logits.float().sum().backward()
    assert logits.shape == (2, 7) and torch.isfinite(logits.float()).all()


def test_advanced_cnn_classifier_reads_the_gated_features():
    with_gates = build_model("advanced_cnn", 3, 7)
    without = build_model("advanced_cnn", 3, 7, attention=False)
    assert with_gates.num_features > without.num_features
    maps = with_gates.eval().attention_maps(torch.randn(1, 3, 28, 28))
    assert [tuple(m.shape[1:]) for m in maps] == [(1, 7, 7), (1, 4, 4)]
    assert all(((m > 0) & (m < 1)).all() for m in maps)


def test_width_and_depth_options_scale_the_medbench_families():
    assert count_parameters(build_model("advanced_cnn", 3, 7, width=0.5)) < 2e6
    assert count_parameters(build_model("advanced_cnn", 3, 7, depths=(1, 1, 1, 1))) < 5e6
    assert count_parameters(build_model("efficientnet", 3, 7, width=1.0, depth=1.2)) > 4e6


@pytest.mark.slow
def test_resnet_width_thins_every_stage_and_keeps_the_full_resolution_stem():
    model = build_model("resnet18", 1, 2, 28, width=0.25)
    # Stages 16, 32, 64, 128: BasicBlocks built by torchvision's _make_layer at those widths.
    assert [model.get_submodule(f"layer{i}")[0].conv1.out_channels for i in (1, 2, 3, 4)] == [
        16,
        32,
        64,
        128,
    ]
    assert model.conv1.stride == (1, 1) and model.num_features == 128
    assert count_parameters(model) == 700_146
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 2)
    wide = build_model("resnet50", 3, 7, 64, width=0.5)
    assert wide.num_features == 1024 and wide(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    # width 1 is the published model, parameter for parameter.
    assert count_parameters(build_model("resnet18", 3, 7, width=1.0)) == 11_172_423


def test_advanced_cnn_rounds_scaled_widths_to_multiples_of_8_with_ties_to_even():
    # Width 0.75: 56, 112, 224, 448 -> 42, 84, 168, 336 -> 40, 80 (10.5 x 8 goes to 10 x 8), 168, 336.
    model = build_model("advanced_cnn", 3, 7, width=0.75)
    assert [stage[0].conv1[0].out_channels for stage in model.stages] == [40, 80, 168, 336]
    assert count_parameters(model) == 2_836_909


def _block_drop_rates(model):
    blocks = [m for m in model.modules() if isinstance(m, (ResidualBlock, MBConv))]
    return [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks]


@pytest.mark.parametrize(("name", "n_blocks"), [("advanced_cnn", 7), ("efficientnet", 16)])
def test_stochastic_depth_rises_linearly_from_0_to_drop_path_over_all_blocks(name, n_blocks):
    model = build_model(name, 3, 7, drop_path=0.3)
    rates = _block_drop_rates(model)
    expected = [0.3 * i / (n_blocks - 1) for i in range(n_blocks)]
    if name == "efficientnet":  # blocks that change shape have no residual to drop
        expected = [
            r if b.has_residual else 0.0 for r, b in zip(expected, model.blocks, strict=True)
        ]
    assert rates == pytest.approx(expected)
    assert max(_block_drop_rates(build_model(name, 3, 7))) == 0.0


def test_a_non_positive_width_is_a_user_error():
    for name in FAMILIES:
        with pytest.raises(MedbenchError, match="width"):
            build_model(name, 3, 7, width=0)


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _assert_torchvision_init(model):
    for conv in _convs(model):  # He normal over fan-out: std sqrt(2 / fan_out)
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
        assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.15)


def _assert_pytorch_init(model):
    # Conv2d's own init, Kaiming uniform a = sqrt(5): U(+-1/sqrt(fan_in)).
    for conv in _convs(model):
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max().item() <= fan_in**-0.5 * (1 + 1e-6)
        assert conv.weight.std().item() == pytest.approx((3 * fan_in) ** -0.5, rel=0.15)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_init_official_is_what_the_official_experiments_get(name):
    torch.manual_seed(0)
    # 28 px: the official models.py sets no init, so every layer keeps PyTorch's default.
    official_28 = build_model(name, 1, 2, 28, init="official")
    _assert_pytorch_init(official_28)
    bns = [m for m in official_28.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    # 64 px and above: the official experiments use torchvision's resnet, and its init.
    _assert_torchvision_init(build_model(name, 1, 2, 64, init="official"))
    # The default is torchvision's init at every size; "pytorch" gives the other at any size.
    default_28 = build_model(name, 1, 2, 28)
    _assert_torchvision_init(default_28)
    _assert_pytorch_init(build_model(name, 1, 2, 64, init="pytorch"))
    assert count_parameters(default_28) == count_parameters(official_28)


def test_an_unknown_resnet_init_is_a_user_error():
    with pytest.raises(MedbenchError, match="init"):
        build_model("resnet18", 3, 7, init="xavier")


@pytest.mark.slow
def test_small_images_keep_a_feature_grid_larger_than_1x1():
    for name in FAMILIES:
        features = build_model(name, 3, 7, 28).forward_features(torch.randn(2, 3, 28, 28))
        assert features.shape[-2] >= 2 and features.shape[-1] >= 2, name


def test_timm_models_build_with_one_channel_and_the_class_count():
    model = build_model(SMALL_TIMM, 1, 4)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 4)


def test_unknown_model_names_raise_medbench_error_listing_valid_ones():
    with pytest.raises(MedbenchError, match="advanced_cnn"):
        build_model("resnet19", 3, 7)


def test_unknown_timm_names_raise_medbench_error():
    with pytest.raises(MedbenchError, match="timm"):
        build_model("timm:no_such_net", 3, 7)


def test_unknown_options_raise_medbench_error_listing_valid_ones():
    with pytest.raises(MedbenchError, match="width"):
        build_model("efficientnet", 3, 7, widht=2.0)


def test_bad_option_values_raise_medbench_error():
    with pytest.raises(MedbenchError, match="depths"):
        build_model("advanced_cnn", 3, 7, depths=(1, 1))


def test_flops_count_a_multiply_add_as_two():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5, bias=False))
    assert count_flops(model, (3, 2, 2)) == 2 * 12 * 5


@pytest.mark.slow
def test_flops_grow_with_image_size():
    small = model_summary("efficientnet", 3, 7, 28)["flops"]
    assert model_summary("efficientnet", 3, 7, 128)["flops"] > small > 0


def test_model_summary_reports_parameters_and_flops():
    summary = model_summary("resnet18", 3, 7)
    assert summary["n_params"] == 11_172_423 and summary["params_m"] == pytest.approx(11.172423)
    assert summary["gflops"] == pytest.approx(summary["flops"] / 1e9)


@pytest.mark.slow
def test_models_command_prints_a_row_per_model(capsys):
    assert main(["models", "--channels", "1", "--classes", "2"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in list_models())


@pytest.mark.slow
def test_models_command_json_uses_the_dataset_shape(capsys):
    assert main(["models", "--dataset", "dermamnist", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    resnet = next(r for r in rows if r["name"] == "resnet18")
    assert resnet["n_params"] == 11_172_423


def test_models_command_rejects_an_unknown_dataset(capsys):
    assert main(["models", "--dataset", "nosuchmnist"]) == 2
    assert "nosuchmnist" in capsys.readouterr().err


@pytest.mark.parametrize(
    "size, kernel, stride, channels_last",
    [
        (2, 5, 1, True),
        (2, 3, 1, False),
        (4, 5, 1, True),
        (4, 5, 2, False),
        (7, 3, 2, True),
        (3, 5, 2, False),
        (5, 5, 1, True),
        (8, 3, 1, False),
    ],
)
def test_depthwise_conv_gradients_equal_the_native_convolution(size, kernel, stride, channels_last):
    # Small maps take the tap-sum weight gradient, larger ones the native kernel: both must
    # give nn.Conv2d's output and gradients for the same weights.
    torch.manual_seed(0)
    fast = DepthwiseConv2d(6, kernel, stride)
    ref = nn.Conv2d(6, 6, kernel, stride, padding=fast.padding, groups=6, bias=False)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(5, 6, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = None
    outs, grads = [], []
    for conv in (fast, ref):
        xi = x.clone().requires_grad_()
        y = conv(xi)
        grad = torch.randn_like(y, memory_format=torch.contiguous_format) if grad is None else grad
        y.backward(grad)
        outs.append(y)
        grads.append((xi.grad, conv.weight.grad))
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-5)
    assert grads[0][1].shape == fast.weight.shape


@pytest.mark.parametrize("size", [2, 8])  # the tap-sum path and the native one
def test_depthwise_conv_trains_in_fp32_under_cpu_bf16_autocast(size):
    # PyTorch's bf16 depthwise backward is many times slower than fp32's on CPU, so under
    # autocast the conv runs in fp32: the same output and gradients as without autocast.
    torch.manual_seed(0)
    conv = DepthwiseConv2d(6, 5, 1)
    x = torch.randn(3, 6, size, size).to(torch.bfloat16).float()
    results = []
    for autocast in (True, False):
        conv.zero_grad()
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = conv(xi.to(torch.bfloat16) if autocast else xi)
        assert y.dtype == torch.float32
        y.backward(torch.ones_like(y))
        results.append((y.detach(), conv.weight.grad.clone()))
    torch.testing.assert_close(results[0], results[1])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # inference: untouched
        assert conv(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_tap_sums_take_tiny_maps_always_and_5x5_kernels_on_4x4_maps_unless_native_is_fast():
    for fast in (False, True):
        assert uses_tap_sums(4, 3, native_grad_is_fast=fast)
        assert uses_tap_sums(16, 5, native_grad_is_fast=fast) is not fast
        assert not uses_tap_sums(16, 3, native_grad_is_fast=fast)
        assert not uses_tap_sums(25, 5, native_grad_is_fast=fast)


def _took_tap_sums(output: torch.Tensor) -> bool:
    return type(output.grad_fn).__name__ == "_SmallMapDepthwiseBackward"


@pytest.mark.parametrize("fast", [False, True])
def test_depthwise_conv_follows_the_injected_cpu_kind(fast):
    conv = DepthwiseConv2d(8, 5, native_grad_is_fast=fast)
    assert _took_tap_sums(conv(torch.randn(2, 8, 4, 4))) is not fast
    assert _took_tap_sums(conv(torch.randn(2, 8, 2, 2)))
    with torch.no_grad():
        assert conv(torch.randn(2, 8, 2, 2)).grad_fn is None


@pytest.mark.slow
@pytest.mark.parametrize("avx512, n_tap_sums", [(False, 8), (True, 5)])
def test_efficientnet_trains_its_late_depthwise_convs_on_the_small_map_path(avx512, n_tap_sums):
    # At 28 px, stages 4-7 run on 4x4 and 2x2 maps. Every conv with a 2x2 output (5 convs)
    # takes tap sums; on CPUs without AVX-512 the three 5x5 convs on 4x4 maps do too, 8 in
    # all; stage 4's 3x3 convs never do.
    model = build_model("efficientnet", 1, 2, image_size=28)
    convs = [m for m in model.modules() if isinstance(m, DepthwiseConv2d)]
    assert len(convs) == 16
    taken = []
    for conv in convs:
        conv.native_grad_is_fast = avx512  # the CPU kind, as the constructor takes it
        conv.register_forward_hook(
            lambda m, i, out: taken.append(out.shape) if _took_tap_sums(out) else None
        )
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    assert len(taken) == n_tap_sums
    assert all(s[-1] * s[-2] <= (4 if avx512 else 16) for s in taken)
    assert all(conv.weight.grad is not None for conv in convs)
    taken.clear()
    with torch.no_grad():
        model(torch.randn(4, 1, 28, 28))
    assert taken == []
    # Same parameter names as the nn.Conv2d it replaces: older checkpoints still load.
    assert "blocks.0.depthwise.0.weight" in model.state_dict()


def test_models_command_lists_the_3d_models_for_a_3d_dataset(capsys):
    assert main(["models", "--dataset", "organmnist3d", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(list_models(3))
    assert rows["resnet18_acs"]["n_params"] == 11_173_323  # the official experiments' count
    assert main(["models", "--dataset", "organmnist3d", "--size", "128"]) == 2
    assert "published at 28, 64" in capsys.readouterr().err
