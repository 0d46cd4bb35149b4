"""MedMNIST-C corruptions as batched tensor operations (medbench.data.corruptions)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import rgb_to_grayscale

from medbench.data import corruptions as C
from medbench.data.augment import BatchAugment, check_policy
from medbench.data.synthetic import make_synthetic_splits
from medbench.errors import MedbenchError


def images(n: int = 6, c: int = 1, size: int = 64) -> torch.Tensor:
    """Structured test images in [0.15, 0.85]: a bright disk on a gradient with a fixed
    broadband texture (periodic stripes would alias under pixelation and resonate with
    a disk blur, which is not what severity is about)."""
    ax = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    texture = torch.rand(size, size, generator=torch.Generator().manual_seed(5))
    base = 0.3 + 0.2 * (xx + 1) / 2 + 0.1 * texture
    out = []
    for k in range(n):
        disk = ((xx - 0.1 * k) ** 2 + yy**2 < 0.2).float() * 0.25
        out.append((base + disk).clamp(0.15, 0.85).expand(c, size, size))
    return torch.stack(out).contiguous()


COLOUR_DATASETS = ("pathmnist", "bloodmnist", "dermamnist")


def colour_images(n: int = 6, size: int = 64) -> torch.Tensor:
    """The structured images tinted pink-purple, as H&E stains are: each channel its own
    gain, so that saturation and colour are not those of a grey image."""
    gains = torch.tensor([1.0, 0.7, 0.85]).view(1, 3, 1, 1)
    return (images(n, 3, size) * gains).contiguous()


def images_for(dataset: str, n: int = 6, size: int = 64) -> torch.Tensor:
    return colour_images(n, size) if dataset in COLOUR_DATASETS else images(n, size=size)


def all_specs() -> list[tuple[str, C.CorruptionSpec]]:
    seen = {}
    for dataset in C.CORRUPTIONS:
        for spec in C.dataset_corruptions(dataset):
            seen.setdefault((spec.name, spec.params), (dataset, spec))
    return list(seen.values())


SPECS = all_specs()
IDS = [f"{d}-{s.name}" for d, s in SPECS]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dataset,spec", SPECS, ids=IDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_corruption_keeps_shape_dtype_and_range(dataset, spec, channels):
    x = images(c=channels, size=28)
    for severity in C.SEVERITIES:
        for scale in (1.0, C.image_scale(28)):
            y = C.corrupt(x, spec, severity, gen(), scale)
            assert y.shape == x.shape and y.dtype == x.dtype
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("dataset,spec", SPECS, ids=IDS)
def test_a_corruption_is_deterministic_given_the_generator(dataset, spec):
    x = images_for(dataset, n=3, size=32)
    a = C.corrupt(x, spec, 3, gen(7))
    b = C.corrupt(x, spec, 3, gen(7))
    assert torch.equal(a, b)


def _distance(name: str, clean: torch.Tensor, y: torch.Tensor) -> float:
    """How far a corruption moved the images, in the statistic it is meant to change:
    the mean for brightness and gamma, the spread for contrast, the pixels otherwise."""
    if name.startswith(("brightness", "gamma")):
        return float((y.mean() - clean.mean()).abs())
    if name.startswith("contrast"):
        return float((y.std() - clean.std()).abs())
    if name == "pixelate":  # pixel differences alias; the information left does not
        return -float(sum(len(torch.unique(img)) for img in y))
    return float((y - clean).abs().mean())


@pytest.mark.parametrize("dataset,spec", SPECS, ids=IDS)
def test_severity_is_monotone_in_how_far_the_images_move(dataset, spec):
    x = images_for(dataset, n=8, size=64)
    d = [_distance(spec.name, x, C.corrupt(x, spec, s, gen(1))) for s in C.SEVERITIES]
    assert all(b >= a - 1e-6 for a, b in zip(d, d[1:], strict=False)), d
    assert d[-1] > d[0], d


def test_the_direction_of_each_colour_corruption():
    x = images()
    spec = dict((s.name, s) for s in C.dataset_corruptions("pneumoniamnist"))

    def stat(name, f):
        return f(C.corrupt(x, spec[name], 3, gen())) - f(x)

    mean, std = torch.mean, torch.std
    assert stat("brightness_up", mean) > 0 > stat("brightness_down", mean)
    assert stat("contrast_up", std) > 0 > stat("contrast_down", std)
    # MedMNIST-C's gamma_corr_up raises the exponent (gamma > 1), which darkens
    assert stat("gamma_corr_up", mean) < 0 < stat("gamma_corr_down", mean)


def test_geometric_parameters_scale_with_the_image_size():
    spec = next(s for s in C.dataset_corruptions("pneumoniamnist") if s.name == "gaussian_blur")
    x = images(size=28)
    full = (C.corrupt(x, spec, 5, gen(), 1.0) - x).abs().mean()
    scaled = (C.corrupt(x, spec, 5, gen(), C.image_scale(28)) - x).abs().mean()
    assert 0 < scaled < full


def test_jpeg_at_quality_100_is_close_to_the_image_and_rounds_to_8_bit_levels():
    x = images(size=32)
    y = C.jpeg_compression(x, 100, gen())
    assert float((y - x).abs().max()) < 4 / 255
    assert torch.equal(torch.round(y * 255), y * 255)


def test_motion_blur_kernels_sum_to_one_and_start_at_the_centre():
    k = C._motion_kernels(5, 5, torch.tensor([0.0, 30.0, -45.0]), torch.zeros(1))
    assert torch.allclose(k.sum((1, 2)), torch.ones(3))
    centre = k.shape[-1] // 2
    assert bool((k[:, centre, centre] > 0).all())


def test_severity_outside_1_to_5_is_refused():
    spec = C.dataset_corruptions("breastmnist")[0]
    with pytest.raises(MedbenchError, match="severity"):
        C.corrupt(images(), spec, 6, gen())


@pytest.mark.parametrize("dataset", ["organmnist3d", "nosuchmnist"])
def test_volumes_and_unknown_datasets_have_no_corruptions(dataset):
    with pytest.raises(MedbenchError, match="defines no corruptions"):
        C.dataset_corruptions(dataset)


def test_the_colour_datasets_have_medmnistc_lists_without_characters():
    assert [s.name for s in C.dataset_corruptions("pathmnist")][-3:] == [
        "saturate", "stain_deposit", "bubble",
    ]  # fmt: skip
    assert len(C.dataset_corruptions("bloodmnist")) == 11
    derma = [s.name for s in C.dataset_corruptions("dermamnist")]
    assert len(derma) == 14 and "characters" not in derma
    assert {"zoom_blur", "black_corner"} <= set(derma)


def _spec(dataset: str, name: str) -> C.CorruptionSpec:
    return next(s for s in C.dataset_corruptions(dataset) if s.name == name)


def _saturation(x: torch.Tensor) -> torch.Tensor:
    v, m = x.amax(1), x.amin(1)
    return ((v - m) / v.clamp_min(1e-6)).mean()


def test_saturate_raises_saturation_and_keeps_the_value_channel():
    x = colour_images()
    y = C.corrupt(x, _spec("pathmnist", "saturate"), 5, gen())
    assert float(_saturation(y) - _saturation(x)) == pytest.approx(0.25, abs=0.02)
    assert torch.allclose(y.amax(1), x.amax(1), atol=1e-5)  # HSV's V is the max channel
    grey = images(c=3)
    assert torch.equal(
        C.corrupt(grey[:, :1], _spec("pathmnist", "saturate"), 5, gen()), grey[:, :1]
    )


def test_black_corner_blackens_the_corners_and_keeps_the_centre():
    x = colour_images(size=28)
    y = C.corrupt(x, _spec("dermamnist", "black_corner"), 5, gen())
    assert float(y[..., :3, :3].abs().max()) == 0.0
    assert torch.equal(y[..., 10:18, 10:18], x[..., 10:18, 10:18])
    mild = C.corrupt(x, _spec("dermamnist", "black_corner"), 1, gen())
    assert float((mild == 0).float().mean()) < float((y == 0).float().mean())


def _touched(name: str, dataset: str, x: torch.Tensor, scale: float = 1.0) -> list[float]:
    spec = _spec(dataset, name)
    return [
        float((C.corrupt(x, spec, s, gen(3), scale) != x).any(1).float().mean())
        for s in C.SEVERITIES
    ]


@pytest.mark.parametrize("dataset", ["pathmnist", "bloodmnist"])
def test_bubbles_whiten_a_fraction_that_grows_with_severity(dataset):
    x = colour_images(n=8, size=224)
    y = C.corrupt(x, _spec(dataset, "bubble"), 3, gen())
    assert bool((y >= x - 1e-6).all())  # blended with white only
    touched = _touched("bubble", dataset, x)
    assert all(b >= a for a, b in zip(touched, touched[1:], strict=False)), touched
    assert 0.01 < touched[0] < touched[-1] < 0.9


@pytest.mark.parametrize("dataset", ["pathmnist", "bloodmnist"])
def test_stains_darken_a_fraction_that_grows_with_severity(dataset):
    x = colour_images(n=8, size=224)
    y = C.corrupt(x, _spec(dataset, "stain_deposit"), 5, gen())
    assert bool((y <= x + 1e-6).all()) and float(y.min()) == 0.0  # black ink
    touched = _touched("stain_deposit", dataset, x)
    assert all(b >= a for a, b in zip(touched, touched[1:], strict=False)), touched
    assert 0 < touched[0] < touched[-1] < 0.2


def test_stains_and_bubbles_shrink_with_the_image_scale():
    x = colour_images(n=8, size=28)
    for name in ("stain_deposit", "bubble"):
        small = _touched(name, "pathmnist", x, C.image_scale(28))
        full = _touched(name, "pathmnist", x, 1.0)
        assert 0 < small[2] < full[2], name


def test_zoom_blur_keeps_the_centre_pixel_and_smooths_away_from_it():
    x = colour_images(size=65)
    y = C.corrupt(x, _spec("dermamnist", "zoom_blur"), 5, gen())
    assert torch.allclose(y[..., 32, 32], x[..., 32, 32], atol=1e-5)
    diff = (y - x).abs()
    assert float(diff[..., 28:37, 28:37].mean()) < float(diff[..., :8, :8].mean())


def test_breast_and_pneumonia_have_medmnistc_lists():
    assert [s.name for s in C.dataset_corruptions("breastmnist")] == [
        "pixelate", "jpeg_compression", "speckle_noise", "motion_blur",
        "brightness_up", "brightness_down", "contrast_down",
    ]  # fmt: skip
    assert len(C.dataset_corruptions("pneumoniamnist")) == 13


def test_corrupt_random_touches_only_the_chosen_fraction():
    x = images(n=64, size=16)
    specs = C.dataset_corruptions("pneumoniamnist")
    assert torch.equal(C.corrupt_random(x, specs, gen(), 0.0), x)
    changed = (C.corrupt_random(x, specs, gen(), 0.5) != x).flatten(1).any(1).float().mean()
    assert 0.2 < float(changed) <= 0.7


def test_the_medmnistc_policy_augments_2d_batches_and_refuses_volumes():
    aug = BatchAugment("medmnistc", "pneumoniamnist")
    x = images(n=16, size=28)
    y = aug(x, gen())
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(y, aug(x, gen()))
    with pytest.raises(MedbenchError, match="2D"):
        check_policy("medmnistc", "organmnist3d", 3)
    derma = BatchAugment("medmnistc", "dermamnist")(colour_images(n=16, size=28), gen())
    assert derma.shape == (16, 3, 28, 28) and float(derma.max()) <= 1


# ----------------------------------------------------------------------------- library vs reference
# medbench's hand-written Gaussian blur before it called torchvision, kept as the reference
# the library call is compared with.


def _reference_gaussian_1d(sigma: float, size: int) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-0.5 * (t / max(sigma, 1e-6)) ** 2)
    return k / k.sum()


def _reference_separable_blur(x: torch.Tensor, sigma: float, size: int) -> torch.Tensor:
    """Rows then columns with the 1D kernel, mirrored borders (replicated where the image
    is smaller than the kernel), in float64."""
    k = _reference_gaussian_1d(sigma, size)
    x64 = x.double()
    out = C._filter(C._filter(x64, k.view(1, -1)), k.view(-1, 1))
    return out.to(x.dtype)


def _reference_gaussian_blur(x: torch.Tensor, kernel: int, scale: float) -> torch.Tensor:
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    if scale == 1.0:
        return _reference_separable_blur(x, sigma, kernel).clamp(0, 1)
    sigma *= scale
    return _reference_separable_blur(x, sigma, C._odd_size(sigma)).clamp(0, 1)


BLUR_KERNELS = sorted({int(k) for d in C.CORRUPTIONS.values() for k in d.get("gaussian_blur", ())})


@pytest.mark.parametrize("kernel", BLUR_KERNELS)
@pytest.mark.parametrize("size,scale", [(28, 1.0), (28, 28 / 224), (64, 64 / 224), (224, 1.0)])
def test_gaussian_blur_matches_the_hand_written_separable_blur(kernel, size, scale):
    x = colour_images(n=2, size=size)
    y = C.gaussian_blur(x, kernel, gen(), scale)
    assert float((y - _reference_gaussian_blur(x, kernel, scale)).abs().max()) < 1e-5


@pytest.mark.parametrize("kernel", [11, 21, 25])
def test_gaussian_blur_of_an_image_smaller_than_the_kernel_replicates_its_edges(kernel):
    x = images(n=2, size=8)
    y = C.gaussian_blur(x, kernel, gen())
    assert float((y - _reference_gaussian_blur(x, kernel, 1.0)).abs().max()) < 1e-5


def _reference_disk(radius: float, alias_blur: float, scale: float) -> torch.Tensor:
    r = radius * scale
    half = max(1, math.ceil((8 if radius <= 8 else radius) * scale))
    ax = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((ax.view(-1, 1) ** 2 + ax.view(1, -1) ** 2) <= r**2).double()
    if disk.sum() == 0:
        disk[half, half] = 1
    disk /= disk.sum()
    blurred = _reference_separable_blur(
        disk.view(1, 1, *disk.shape), alias_blur * scale, 3 if radius <= 8 else 5
    )
    return blurred[0, 0].float()


DEFOCUS = sorted({p for d in C.CORRUPTIONS.values() for p in d.get("defocus_blur", ())})


@pytest.mark.parametrize("radius,alias_blur", DEFOCUS)
@pytest.mark.parametrize("scale", [1.0, 28 / 224])
def test_defocus_disk_matches_the_hand_written_gaussian_of_the_disk(radius, alias_blur, scale):
    kernel = C._disk(radius, alias_blur, scale, torch.zeros(1))
    assert torch.allclose(kernel, _reference_disk(radius, alias_blur, scale), atol=1e-6)


# JPEG: libjpeg through torchvision.io, compared with PIL's JPEG (what medmnistc calls) at
# every quality of the severity tables.
JPEG_QUALITIES = sorted(
    {int(q) for d in C.CORRUPTIONS.values() for q in d.get("jpeg_compression", ())}
)


def _synthetic_test_images(channels: int) -> torch.Tensor:
    """medbench.data.synthetic's 28-px test images (seed 0) as a float batch in [0, 1]."""
    array = make_synthetic_splits(n_channels=channels, n_test=16, seed=0)["test_images"]
    x = torch.from_numpy(array).float() / 255
    return x.unsqueeze(1) if channels == 1 else x.permute(0, 3, 1, 2).contiguous()


def _pil_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Each image saved with PIL as JPEG at `quality` and read back, as floats in [0, 1]."""
    out = []
    for img in torch.round(x * 255).to(torch.uint8).numpy():
        buffer = io.BytesIO()
        Image.fromarray(img[0] if len(img) == 1 else img.transpose(1, 2, 0)).save(
            buffer, format="JPEG", quality=quality
        )
        back = np.asarray(Image.open(buffer))
        out.append(back[None] if back.ndim == 2 else back.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)).float() / 255


@pytest.mark.parametrize("quality", JPEG_QUALITIES)
@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_matches_pils_jpeg_at_every_severity_quality(quality, channels):
    for x in (_synthetic_test_images(channels), colour_images() if channels == 3 else images()):
        y = C.jpeg_compression(x, quality, gen())
        mean_levels = float((y - _pil_jpeg(x, quality)).abs().mean()) * 255
        assert mean_levels < 0.05, mean_levels


def test_jpeg_subsamples_colour_as_pil_does():
    """A 1-px red and green checkerboard: 4:2:0 averages its chroma over 2x2 pixels, so
    the colours wash out to near the mean, which full-resolution chroma would keep."""
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    red = ((yy + xx) % 2).float()
    x = torch.stack([red, 1 - red, torch.zeros_like(red)]).unsqueeze(0)
    y = C.jpeg_compression(x, 95, gen())
    assert float((y[:, 0] - y[:, 1]).abs().mean()) < 0.5


def test_jpeg_keeps_uint8_batches_in_uint8_levels():
    x = colour_images(n=3, size=28)
    levels = torch.round(x * 255).to(torch.uint8)
    y = C.jpeg_compression(levels, 15, gen())
    assert y.dtype == torch.uint8 and y.shape == levels.shape
    assert torch.equal(y.float() / 255, C.jpeg_compression(x, 15, gen()))


# The grey of `contrast`: ITU-R 601-2 luma as PIL's 'L' conversion, compared with PIL and
# with torchvision's rgb_to_grayscale, which weighs red 0.2989.


def test_gray_is_pils_l_conversion_before_its_rounding_to_8_bit_levels():
    levels = torch.round(_synthetic_test_images(3) * 255).to(torch.uint8)
    pil = np.stack(
        [np.asarray(Image.fromarray(i.permute(1, 2, 0).numpy()).convert("L")) for i in levels]
    )
    gray = C._gray(levels / 255)[:, 0] * 255
    # PIL weighs in 65536ths (19595, 38470, 7471), up to 4e-6 off 0.299, 0.587, 0.114
    assert float((gray - torch.from_numpy(pil).float()).abs().max()) <= 0.5 + 2e-3


def test_gray_differs_from_torchvision_only_by_its_red_weight():
    x = colour_images()
    difference = C._gray(x) - rgb_to_grayscale(x)
    assert torch.allclose(difference, 1e-4 * x[:, :1], atol=1e-6)
