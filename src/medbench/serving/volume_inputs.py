"""Volumes for `medbench predict`: `.npy`, `.npz` and NIfTI files turned into a 3D model's input.

MedMNIST's 3D sets hold uint8 volumes (N, D, H, W) of `size`^3 voxels. A volume given to
`predict` is brought to that form the way a user would expect of the data MedMNIST made:
uint8 stays as it is; floats in [0, 1] are scaled by 255; any other range (CT in Hounsfield
units, an MRI's arbitrary scale) is rescaled per volume from its minimum to its maximum;
a volume of another shape is resampled trilinearly to size^3. Each such conversion is
counted, so `predict` can say how many volumes were changed. NIfTI files (`.nii`,
`.nii.gz`) are read through nibabel when it is installed (`pip install nibabel`); their
voxel array is taken as it is stored (no reorientation), which is how MedMNIST's own
sources were sampled.
"""

from __future__ import annotations

import importlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medbench.errors import MedbenchError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
VOLUME_SUFFIXES = (".npy", ".npz", *NIFTI_SUFFIXES)


def is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in VOLUME_SUFFIXES)


@dataclass(frozen=True)
class VolumeConversions:
    """How many volumes were changed on their way to the model's input."""

    resampled: int = 0  # to size^3
    rescaled: int = 0  # intensities mapped to 0-255

    @property
    def converted(self) -> int:
        return max(self.resampled, self.rescaled)

    def __add__(self, other: VolumeConversions) -> VolumeConversions:
        return VolumeConversions(self.resampled + other.resampled, self.rescaled + other.rescaled)


def read_array(path: Path, key: str | None = None) -> np.ndarray:
    """The raw array of a `.npy` file, an npz's array `key`, or a NIfTI file's voxels
    (images of a 2D model come through here too)."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return _read_nifti(path)
    try:
        if name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as npz:
                if key not in npz:
                    raise MedbenchError(
                        f"{path} has no {key!r} array (it has: {', '.join(npz.keys()) or 'none'})"
                    )
                return npz[key]
        return np.load(path, allow_pickle=False)
    except MedbenchError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise MedbenchError(
            f"cannot read {path} as a numpy file (corrupt or truncated?): {str(exc)[:120]}"
        ) from None


def _read_nifti(path: Path) -> np.ndarray:
    try:
        nibabel = importlib.import_module("nibabel")
    except ImportError:
        raise MedbenchError(
            f"{path} is a NIfTI file; reading it needs nibabel (pip install nibabel)"
        ) from None
    try:
        return np.asarray(nibabel.load(str(path)).dataobj)
    except Exception as exc:  # nibabel raises many kinds for a bad file
        raise MedbenchError(f"cannot read {path} as NIfTI: {str(exc)[:120]}") from None


def as_volume_batch(array: np.ndarray, where: str) -> np.ndarray:
    """(D, H, W) or (N, D, H, W) or (N, D, H, W, 1) -> (N, D, H, W); anything else is a
    one-line error naming the shape."""
    if array.ndim == 5 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or 0 in array.shape:
        raise MedbenchError(
            f"{where} must hold a volume (D, H, W) or volumes (N, D, H, W), got shape "
            f"{tuple(array.shape)}"
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise MedbenchError(f"{where} holds {array.dtype} values, not numbers")
    return array


def conform_volumes(volumes: np.ndarray, size: int) -> tuple[np.ndarray, VolumeConversions]:
    """(N, D, H, W) volumes of any numeric dtype -> uint8 (N, size, size, size, 1), as
    described in the module docstring."""
    out = np.empty((len(volumes), size, size, size, 1), dtype=np.uint8)
    done = VolumeConversions()
    for i, volume in enumerate(volumes):
        scaled, rescaled = to_uint8(volume)
        resampled = scaled.shape != (size, size, size)
        if resampled:
            scaled = resample(scaled, size)
        out[i, ..., 0] = scaled
        done += VolumeConversions(int(resampled), int(rescaled))
    return out, done


def to_uint8(volume: np.ndarray) -> tuple[np.ndarray, bool]:
    """(uint8 volume, whether its values had to be mapped to 0-255)."""
    if volume.dtype == np.uint8:
        return volume, False
    values = volume.astype(np.float64)
    if not np.isfinite(values).all():
        raise MedbenchError("a volume holds NaN or infinite values; clean it before predicting")
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(volume.dtype, np.floating) and low >= 0.0 and high <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8), True
    span = high - low
    unit = (values - low) / span if span > 0 else np.zeros_like(values)
    return np.rint(unit * 255.0).astype(np.uint8), True


def resample(volume: np.ndarray, size: int) -> np.ndarray:
    """A uint8 volume resampled trilinearly to size^3 (uint8)."""
    x = torch.from_numpy(np.ascontiguousarray(volume)).float()[None, None]
    y = F.interpolate(x, size=(size, size, size), mode="trilinear", align_corners=False)
    return y[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()
