"""Augmentation on whole batches of tensors, on the training device.

Every policy is vectorised per sample: each image gets its own random flip, rotation, crop
and photometric change, yet the batch is warped by one `grid_sample` and each photometric
op runs once over the images that drew it. No per-image Python loop, no PIL, no global RNG:
randomness comes only from the `torch.Generator` that the engine seeds per step, so a run
(and a resumed run) sees the same augmented batches.

Policies (see docs/augmentation.md for measurements):

- `none`: the images as they are.
- `basic`: the flips and quarter turns the dataset allows, shifts up to 10% of the size.
- `strong`: basic + small rotation, random resized crop (zoom 0.7-1 of the area, aspect
  3/4-4/3), brightness/contrast +-20%, and for RGB saturation +-20% and hue +-0.05 turn.
- `randaugment`: basic + 2 ops per image from RandAugment's list at magnitude 9/30
  (Cubuk et al. 2020, "RandAugment: practical automated data augmentation").
- `trivialaugment`: basic + 1 op per image at a uniformly random magnitude from the
  TrivialAugment-Wide ranges (Mueller & Hutter 2021, "TrivialAugment").
- `auto`: the per-dataset default of `AUTO_POLICY`.
- `medmnistc`: basic + half of each batch corrupted, each chosen image with a random
  MedMNIST-C corruption of its dataset at a random severity (`medbench.data.corruptions`).

Which geometric changes are label-preserving depends on the modality: a chest X-ray has a
left and a right (the heart sits on the patient's left), an OCT B-scan has a top and a
bottom (retinal layers), CT slices keep anatomical sides, while dermoscopy, pathology and
blood-cell images have no canonical orientation. `ORIENTATION` records this per dataset;
every policy follows it, and where quarter turns are forbidden rotations stay within
`LOCKED_ROTATION_DEGREES`.

RandAugment/TrivialAugment here differ from torchvision's in two ways: geometric ops are
composed into the one warp and applied before the photometric ops (not in drawn order),
and zero (black) fills the corners, which is the background of most MedMNIST images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from medbench.data.corruptions import corrupt_random, dataset_corruptions, image_scale
from medbench.errors import MedbenchError

POLICIES = ("none", "basic", "strong", "randaugment", "trivialaugment", "auto", "intensity")
LOCKED_ROTATION_DEGREES = 10.0  # for datasets whose orientation forbids quarter turns


@dataclass(frozen=True)
class Symmetry:
    hflip: bool
    vflip: bool
    rot90: bool


# Label-preserving symmetries per MedMNIST dataset (see module docstring).
ORIENTATION: dict[str, Symmetry] = {
    "pathmnist": Symmetry(True, True, True),  # histology patches: no orientation
    "dermamnist": Symmetry(True, True, True),  # dermoscopy: no orientation
    "bloodmnist": Symmetry(True, True, True),  # blood-cell microscopy
    "tissuemnist": Symmetry(True, True, True),  # kidney-cortex microscopy
    "retinamnist": Symmetry(True, False, False),  # fundus: left/right eyes mirror each other
    "breastmnist": Symmetry(True, False, False),  # ultrasound: depth runs top to bottom
    "octmnist": Symmetry(True, False, False),  # OCT B-scan: layers run top to bottom
    "pneumoniamnist": Symmetry(False, False, False),  # chest X-ray: heart on the left
    "chestmnist": Symmetry(False, False, False),
    "organamnist": Symmetry(False, False, False),  # CT slices keep anatomical sides
    "organcmnist": Symmetry(False, False, False),
    "organsmnist": Symmetry(False, False, False),
    # 3D volumes: hflip mirrors left and right (the W axis), vflip the H axis.
    "organmnist3d": Symmetry(False, False, False),  # CT: left and right organs are classes
    "nodulemnist3d": Symmetry(True, True, False),  # a lung nodule has no orientation
    "adrenalmnist3d": Symmetry(False, False, False),  # shape masks of the left/right gland
    "fracturemnist3d": Symmetry(True, False, False),  # rib fractures: either side's ribs
    "vesselmnist3d": Symmetry(True, True, False),  # brain-vessel segments, any orientation
    "synapsemnist3d": Symmetry(True, True, False),  # electron microscopy: no orientation
}
# Policies for volumes: flips and whole-voxel shifts; `intensity`, the official MedMNIST3D
# experiments' training transform for shape datasets (`Transform3D(mul="random")`: each
# volume times one draw of U(0, 1), nothing else); the others are 2D-only for now.
VOLUME_POLICIES = ("none", "basic", "auto", "intensity")
_GENERIC = Symmetry(True, False, False)

# What `auto` means per dataset. `basic` (only the symmetries the modality has, plus
# shifts) everywhere until docs/augmentation.md measures a better choice for a dataset.
AUTO_POLICY: dict[str, str] = {name: "basic" for name in ORIENTATION}
_AUTO_GENERIC = "basic"


# Kept out of POLICIES (which tuning searches): it exists only for the datasets whose
# MedMNIST-C corruptions medbench implements.
CORRUPTION_POLICY = "medmnistc"
CORRUPTED_FRACTION = 0.5  # of each training batch, under the medmnistc policy


def resolve_policy(policy: str, dataset: str) -> str:
    """The concrete policy `policy` means for `dataset` (`auto` -> `AUTO_POLICY`)."""
    if policy not in POLICIES and policy != CORRUPTION_POLICY:
        raise MedbenchError(
            f"unknown augmentation policy {policy!r}; use one of "
            f"{', '.join((*POLICIES, CORRUPTION_POLICY))}"
        )
    return AUTO_POLICY.get(dataset, _AUTO_GENERIC) if policy == "auto" else policy


# ----------------------------------------------------------------------------- photometric ops
# Each takes a batch (n, C, H, W) in [0, 1] and a per-image magnitude (n,), PIL semantics.
# Grey is torchvision's `rgb_to_grayscale` (red weighed 0.2989, not ITU-R 601-2's 0.299),
# which its RandAugment and TrivialAugment blend with on tensors.


def _blend(img: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: factor 1 = img, 0 = degenerate."""
    f = factor.view(-1, 1, 1, 1)
    return (degenerate + f * (img - degenerate)).clamp_(0, 1)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = TF.rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean.expand_as(x), factor)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return _blend(x, TF.rgb_to_grayscale(x).expand_as(x), factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)  # PIL keeps the border
    return _blend(x, smooth, factor)


def hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by `turns` of a full circle (a rotation of the YIQ chroma plane)."""
    if x.shape[1] == 1:
        return x
    to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, x)
    a = turns * 2 * math.pi
    cos, sin = a.cos().view(-1, 1, 1), a.sin().view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_yiq), yiq).clamp_(0, 1)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    step = (2.0 ** (8 - bits.round())).view(-1, 1, 1, 1)
    return torch.floor(torch.floor(x * 255) / step) * step / 255


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= threshold.view(-1, 1, 1, 1), 1 - x, x)


def autocontrast(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(hi > lo, 1 / (hi - lo).clamp(min=1e-6), torch.ones_like(hi))
    return torch.where(hi > lo, (x - lo) * scale, x).clamp_(0, 1)


def equalize(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel over 256 levels."""
    n, c, h, w = x.shape
    levels = (x * 255).round().long().clamp_(0, 255).reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(
        1, levels, torch.ones_like(levels, dtype=torch.float)
    )
    cdf = hist.cumsum(1)
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, float(h * w))).amin(1, keepdim=True)
    lut = ((cdf - cdf_min) / (h * w - cdf_min).clamp(min=1)).clamp_(0, 1)
    return lut.gather(1, levels).reshape(n, c, h, w).to(x.dtype)


# ----------------------------------------------------------------------------- op tables
# name -> (kind, magnitude at full strength, signed). Geometric magnitudes: shear as a
# factor, translate as a fraction of the size, rotate in degrees. Enhance ops: a factor
# of 1 +- magnitude. Posterize: bits removed. Solarize: 1 - threshold.
_RANDAUGMENT = {  # torchvision RandAugment at magnitude bin 9 of 31
    "identity": ("geo", 0.0, False),
    "shear_x": ("geo", 0.3, True),
    "shear_y": ("geo", 0.3, True),
    "translate_x": ("geo", 2 * 150 / 331, True),  # 150 px of 331, in grid units (2 = size)
    "translate_y": ("geo", 2 * 150 / 331, True),
    "rotate": ("geo", 30.0, True),
    "brightness": ("color", 0.9, True),
    "saturation": ("color", 0.9, True),
    "contrast": ("color", 0.9, True),
    "sharpness": ("color", 0.9, True),
    "posterize": ("color", 4.0, False),
    "solarize": ("color", 1.0, False),
    "autocontrast": ("color", 0.0, False),
    "equalize": ("color", 0.0, False),
}
_TRIVIALAUGMENT = {  # torchvision TrivialAugmentWide's ranges
    **_RANDAUGMENT,
    "shear_x": ("geo", 0.99, True),
    "shear_y": ("geo", 0.99, True),
    "translate_x": ("geo", 2 * 32 / 224, True),  # 32 px of a 224 px image, in grid units
    "translate_y": ("geo", 2 * 32 / 224, True),
    "rotate": ("geo", 135.0, True),
    "brightness": ("color", 0.99, True),
    "saturation": ("color", 0.99, True),
    "contrast": ("color", 0.99, True),
    "sharpness": ("color", 0.99, True),
    "posterize": ("color", 6.0, False),
}

_COLOR_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "brightness": brightness,
    "saturation": saturation,
    "contrast": contrast,
    "sharpness": sharpness,
    "posterize": posterize,
    "solarize": solarize,
    "autocontrast": autocontrast,
    "equalize": equalize,
}


def _color_argument(name: str, m: torch.Tensor) -> torch.Tensor:
    """Signed magnitude -> the argument of the photometric op."""
    if name == "posterize":
        return 8 - m
    if name == "solarize":
        return 1 - m
    return 1 + m


# ----------------------------------------------------------------------------- policies


def check_policy(policy: str, dataset: str, spatial_dims: int) -> None:
    """Raise MedbenchError for a 2D-only policy asked of a dataset of volumes."""
    if spatial_dims == 3 and policy not in VOLUME_POLICIES:
        raise MedbenchError(
            f"augmentation policy {policy!r} is for 2D images; {dataset} holds volumes, "
            f"which take {', '.join(VOLUME_POLICIES)}"
        )


class BatchAugment:
    """A named policy for float batches (N, C, H, W) in [0, 1]; see the module docstring."""

    def __init__(
        self, policy: str, dataset: str, max_shift: float = 0.1, spatial_dims: int = 2
    ) -> None:
        check_policy(policy, dataset, spatial_dims)
        self.policy = resolve_policy(policy, dataset)
        self.symmetry = ORIENTATION.get(dataset, _GENERIC)
        self.max_shift = max_shift
        self.max_rotation = 15.0 if self.symmetry.rot90 else LOCKED_ROTATION_DEGREES
        self.ops = {"randaugment": _RANDAUGMENT, "trivialaugment": _TRIVIALAUGMENT}.get(self.policy)
        self.num_ops = 2 if self.policy == "randaugment" else 1
        self.corruptions = dataset_corruptions(dataset) if self.policy == CORRUPTION_POLICY else []

    @property
    def active(self) -> bool:
        return self.policy != "none"

    def plan(
        self, shape: torch.Size, rand: Callable[..., torch.Tensor], dev: torch.device
    ) -> tuple[torch.Tensor, bool, list[tuple[str, torch.Tensor, torch.Tensor]]]:
        """Draw each image's warp (an (n, 2, 3) affine `theta`), whether it needs
        interpolation, and the photometric ops each image drew (name, mask, magnitude)."""
        n, _, h, w = shape
        # ---- geometry: one 2x2 linear map and one shift per image, composed
        linear, shift = self._pixel_geometry(n, h, w, rand, dev)
        smooth = False  # whole-pixel flips/turns/shifts need no interpolation
        if self.policy == "strong":
            smooth = True
            linear, shift = self._rotate_and_crop(linear, shift, rand)
        color_plan: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        if self.ops is not None:  # randaugment, trivialaugment
            for _ in range(self.num_ops):
                for name, chosen, m in self._draw_ops(self.ops, n, rand, dev):
                    if self.ops[name][0] == "color":
                        if chosen.any():
                            color_plan.append((name, chosen, m))
                    elif name != "identity":
                        smooth = True
                        linear, shift = self._geometric_op(name, m, linear, shift)
        theta = torch.cat([linear, shift.unsqueeze(2)], 2)
        return theta, smooth, color_plan

    def _pixel_geometry(
        self, n: int, h: int, w: int, rand: Callable[..., torch.Tensor], dev: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flips and quarter turns the dataset's symmetry allows, and whole-pixel shifts."""
        linear = torch.eye(2, device=dev).repeat(n, 1, 1)
        shift = torch.zeros(n, 2, device=dev)
        ones = torch.ones(n, device=dev)
        sx = torch.where(rand(n) < 0.5, -ones, ones) if self.symmetry.hflip else ones
        sy = torch.where(rand(n) < 0.5, -ones, ones) if self.symmetry.vflip else ones
        linear = linear @ torch.diag_embed(torch.stack([sx, sy], 1))
        if self.symmetry.rot90:
            linear = _rotation(torch.floor(rand(n) * 4) * 90.0) @ linear
        max_px_x, max_px_y = round(self.max_shift * w), round(self.max_shift * h)
        shift[:, 0] = 2 * torch.round((rand(n) * 2 - 1) * max_px_x) / w
        shift[:, 1] = 2 * torch.round((rand(n) * 2 - 1) * max_px_y) / h
        return linear, shift

    def _rotate_and_crop(
        self, linear: torch.Tensor, shift: torch.Tensor, rand: Callable[..., torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The strong policy's small rotation and random resized crop."""
        n = linear.shape[0]
        linear = _rotation((rand(n) * 2 - 1) * self.max_rotation) @ linear
        # Random resized crop: sampling a fraction `area` of the image with aspect `r`
        # scales the sampling grid by sqrt(area*r), sqrt(area/r); the crop moves
        # anywhere it fits.
        area = 0.7 + 0.3 * rand(n)
        log_r = (rand(n) * 2 - 1) * math.log(4 / 3)
        zx = (area * log_r.exp()).sqrt().clamp(max=1)
        zy = (area / log_r.exp()).sqrt().clamp(max=1)
        linear = torch.diag_embed(torch.stack([zx, zy], 1)) @ linear
        shift = shift + (rand(n, 2) * 2 - 1) * (1 - torch.stack([zx, zy], 1))
        return linear, shift

    def _draw_ops(
        self,
        ops: dict[str, tuple[str, float, bool]],
        n: int,
        rand: Callable[..., torch.Tensor],
        dev: torch.device,
    ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """One op per image of `ops` (the policy's table): (name, which images chose it,
        their signed magnitude) per op."""
        names = list(ops)
        choice = (rand(n) * len(names)).long().clamp_(max=len(names) - 1)
        # RandAugment: fixed magnitude; TrivialAugment: uniform over 31 bins.
        level = (
            torch.full((n,), 9 / 30, device=dev)
            if self.policy == "randaugment"
            else torch.floor(rand(n) * 31) / 30
        )
        drawn = []
        for k, name in enumerate(names):
            _, full, is_signed = ops[name]
            chosen = choice == k
            m = level * full
            if is_signed:
                m = torch.where(rand(n) < 0.5, -m, m)
            drawn.append((name, chosen, torch.where(chosen, m, torch.zeros_like(m))))
        return drawn

    def _geometric_op(
        self, name: str, m: torch.Tensor, linear: torch.Tensor, shift: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compose one RandAugment/TrivialAugment geometric op (magnitude `m`) into the warp."""
        if name == "rotate":
            limit = 360.0 if self.symmetry.rot90 else LOCKED_ROTATION_DEGREES
            return _rotation(m.clamp(-limit, limit)) @ linear, shift
        if name in ("shear_x", "shear_y"):
            shear = torch.eye(2, device=linear.device).repeat(linear.shape[0], 1, 1)
            shear[:, 0, 1] = m if name == "shear_x" else 0
            shear[:, 1, 0] = m if name == "shear_y" else 0
            return shear @ linear, shift
        shift[:, 0 if name == "translate_x" else 1] += m
        return linear, shift

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.active:
            return x
        dev = x.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=generator.device).to(dev)

        if self.policy == "intensity":  # x * U(0, 1), one draw per sample
            return x * rand(len(x)).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        if x.ndim == 5:
            return self._volume(x, rand)
        n, c, h, w = x.shape

        theta, smooth, color_plan = self.plan(x.shape, rand, dev)
        grid = F.affine_grid(theta.to(x.dtype), [n, c, h, w], align_corners=False)
        out = F.grid_sample(
            x,
            grid,
            mode="bilinear" if smooth else "nearest",
            padding_mode="zeros",
            align_corners=False,
        )

        # ---- photometric
        if self.policy == "strong":
            out = brightness(out, 1 + (rand(n) * 2 - 1) * 0.2)
            out = contrast(out, 1 + (rand(n) * 2 - 1) * 0.2)
            if c == 3:
                out = saturation(out, 1 + (rand(n) * 2 - 1) * 0.2)
                out = hue(out, (rand(n) * 2 - 1) * 0.05)
        for name, chosen, m in color_plan:
            idx = chosen.nonzero().squeeze(1)
            out[idx] = _COLOR_OPS[name](out[idx], _color_argument(name, m[idx]))
        if self.corruptions:
            out = corrupt_random(
                out, self.corruptions, generator, CORRUPTED_FRACTION, image_scale(h)
            )
        return (
            out.contiguous(memory_format=torch.channels_last)
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            else out
        )

    def _volume(self, x: torch.Tensor, rand: Callable[..., torch.Tensor]) -> torch.Tensor:
        """`basic` for volumes (N, C, D, H, W): the flips the dataset's symmetry allows
        (left-right along W, vflip along H) and whole-voxel shifts up to `max_shift` of each
        axis, as one nearest-neighbour warp."""
        n, c, d, h, w = x.shape
        ones = torch.ones(n, device=x.device)
        sx = torch.where(rand(n) < 0.5, -ones, ones) if self.symmetry.hflip else ones
        sy = torch.where(rand(n) < 0.5, -ones, ones) if self.symmetry.vflip else ones
        theta = torch.zeros(n, 3, 4, device=x.device)
        theta[:, 0, 0], theta[:, 1, 1], theta[:, 2, 2] = sx, sy, ones
        for axis, size in enumerate((w, h, d)):  # affine_grid's x, y, z
            theta[:, axis, 3] = (
                2 * torch.round((rand(n) * 2 - 1) * round(self.max_shift * size)) / size
            )
        grid = F.affine_grid(theta.to(x.dtype), [n, c, d, h, w], align_corners=False)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _rotation(degrees: torch.Tensor) -> torch.Tensor:
    a = degrees * (math.pi / 180)
    cos, sin = a.cos(), a.sin()
    return torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)


class BatchMix:
    """MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a normalised batch.

    Returns mixed images and soft targets (one-hot or multi-hot, mixed with the same
    weight). With both enabled, each batch uses one of the two with equal chance, as
    timm's Mixup does. The mixing weight is drawn from Beta(alpha, alpha); CutMix pastes
    one box per batch (from a shuffled copy) and weighs targets by the pasted area. On
    volumes (N, C, D, H, W) the box spans the whole depth, so the pasted share of the
    volume is still the box's share of the H x W plane."""

    def __init__(self, mixup: float, cutmix: float, n_classes: int, task: str) -> None:
        self.mixup, self.cutmix = mixup, cutmix
        self.n_classes = n_classes
        self.multilabel = task.startswith("multi-label")

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
        rng = np.random.default_rng(seed)
        n, (h, w) = x.shape[0], x.shape[-2:]
        target = y.float() if self.multilabel else F.one_hot(y, self.n_classes).float()
        perm = torch.from_numpy(rng.permutation(n)).to(x.device)
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or rng.random() < 0.5)
        if use_cutmix:
            lam = float(rng.beta(self.cutmix, self.cutmix))
            cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
            x = x.clone()
            x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the pasted area decides the weight
        else:
            lam = float(rng.beta(self.mixup, self.mixup))
            x = lam * x + (1 - lam) * x[perm]
        return x, lam * target + (1 - lam) * target[perm]
