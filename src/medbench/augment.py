"""Augmentation on whole batches of tensors, on the training device.

One affine `grid_sample` per batch applies each image's flip/rotation/shift at once: no
per-image Python loop, no PIL. Randomness comes from a `torch.Generator` that the engine
seeds per step, so a run (and a resumed run) sees the same augmented batches.

Which geometric changes are label-preserving depends on the modality: a chest X-ray has a
left and a right (the heart sits on the patient's left), an OCT B-scan has a top and a
bottom (retinal layers), CT slices keep anatomical sides, while dermoscopy, pathology and
blood-cell images have no canonical orientation. `ORIENTATION` records this per dataset
and the `auto` policy follows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

POLICIES = ("none", "basic", "auto")


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
}
_GENERIC = Symmetry(True, False, False)


class BatchAugment:
    """Random flips (where the dataset allows), 90-degree rotations (where it allows) and
    shifts of up to `max_shift` of the image size, for a float batch (N, C, H, W) in [0, 1]."""

    def __init__(self, policy: str, dataset: str, max_shift: float = 0.1) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown augmentation policy {policy!r}; expected one of {POLICIES}")
        self.policy = policy
        self.symmetry = ORIENTATION.get(dataset, _GENERIC)
        if policy == "basic":  # basic = flips + shifts whatever the dataset says
            self.symmetry = Symmetry(True, self.symmetry.vflip, False)
        self.max_shift = max_shift

    @property
    def active(self) -> bool:
        return self.policy != "none"

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.active:
            return x
        n, _, h, w = x.shape
        dev = x.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=generator.device).to(dev)

        # Build one 2x3 affine matrix per image in normalised coordinates.
        sx = torch.ones(n, device=dev)
        sy = torch.ones(n, device=dev)
        if self.symmetry.hflip:
            sx = torch.where(rand(n) < 0.5, -sx, sx)
        if self.symmetry.vflip:
            sy = torch.where(rand(n) < 0.5, -sy, sy)
        theta = torch.zeros(n, 2, 3, device=dev)
        theta[:, 0, 0] = sx
        theta[:, 1, 1] = sy
        if self.symmetry.rot90:
            k = (rand(n) * 4).long()  # 0..3 quarter turns
            cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=dev)[k]
            sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=dev)[k]
            rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
            theta[:, :, :2] = rot @ theta[:, :, :2]
        # Whole-pixel shifts: 2*d/size in normalised coordinates is exactly d pixels.
        max_px_x, max_px_y = round(self.max_shift * w), round(self.max_shift * h)
        dx = torch.round((rand(n) * 2 - 1) * max_px_x)
        dy = torch.round((rand(n) * 2 - 1) * max_px_y)
        theta[:, 0, 2] = 2 * dx / w
        theta[:, 1, 2] = 2 * dy / h
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return (
            out.contiguous(memory_format=torch.channels_last)
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            else out
        )


class BatchMix:
    """MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a normalised batch.

    Returns mixed images and soft targets (one-hot or multi-hot, mixed with the same
    weight). With both enabled, each batch uses one of the two with equal chance, as
    timm's Mixup does. The mixing weight is drawn from Beta(alpha, alpha)."""

    def __init__(self, mixup: float, cutmix: float, n_classes: int, task: str) -> None:
        self.mixup, self.cutmix = mixup, cutmix
        self.n_classes = n_classes
        self.multilabel = task.startswith("multi-label")

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import numpy as np

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
        rng = np.random.default_rng(seed)
        n, _, h, w = x.shape
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
            x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the pasted area decides the weight
        else:
            lam = float(rng.beta(self.mixup, self.mixup))
            x = lam * x + (1 - lam) * x[perm]
        return x, lam * target + (1 - lam) * target[perm]
