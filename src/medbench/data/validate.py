"""Checks that an npz really holds a MedMNIST dataset as the catalogue describes it.

Structural problems (missing arrays, wrong dtype or shape, labels out of range) raise
MedbenchError: the file cannot be used. Split sizes that differ from the catalogue (a
subset, a synthetic stand-in) are accepted and returned as a warning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medbench.data.catalogue import SIZES, SPLITS, DatasetInfo
from medbench.errors import MedbenchError

KEYS = tuple(f"{split}_{part}" for split in SPLITS for part in ("images", "labels"))


def check_arrays(
    info: DatasetInfo, size: int, arrays: dict[str, np.ndarray], path: Path
) -> list[str]:
    """Raise MedbenchError if `arrays` cannot be `info` at `size`; return warnings."""
    missing = [key for key in KEYS if key not in arrays]
    if missing:
        _fail(path, f"has no {', '.join(missing)} (a MedMNIST npz holds {', '.join(KEYS)})")
    for split in SPLITS:
        _check_images(info, size, arrays[f"{split}_images"], f"{split}_images", path)
        n = len(arrays[f"{split}_images"])
        _check_labels(info, arrays[f"{split}_labels"], n, f"{split}_labels", path)
    sizes = {split: len(arrays[f"{split}_images"]) for split in SPLITS}
    if sizes != info.n_samples:
        return [
            f"{path.name}: split sizes train/val/test {_slash(sizes)} differ from the official "
            f"{_slash(info.n_samples)} of {info.name} (a subset or a stand-in?); the file is "
            f"used as it is, but results are not comparable with published ones"
        ]
    return []


def _check_images(info: DatasetInfo, size: int, images: np.ndarray, key: str, path: Path) -> None:
    if images.dtype != np.uint8:
        _fail(path, f"{key} has dtype {images.dtype}, expected uint8")
    expected = info.image_shape(size)
    if images.ndim != 1 + len(expected) or images.shape[1:] != expected:
        shown = ", ".join(map(str, ("N", *expected)))
        _fail(
            path,
            f"{key} has shape {tuple(images.shape)}, expected ({shown}) for "
            f"{info.name} at {size} px{_size_hint(info, images.shape)}",
        )


def _size_hint(info: DatasetInfo, shape: tuple[int, ...]) -> str:
    """' (is this the 64 px file?)' when the images look like another published size."""
    if info.volumetric and len(shape) == 3:
        return " (2D images: is this a 2D dataset's file?)"
    spatial = shape[1 : 1 + info.spatial_dims]
    if len(spatial) == info.spatial_dims and len(set(spatial)) == 1 and spatial[0] in SIZES:
        return f" (is this the {spatial[0]} px file?)"
    return ""


def _check_labels(info: DatasetInfo, labels: np.ndarray, n: int, key: str, path: Path) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        _fail(path, f"{key} has dtype {labels.dtype}, expected integer class labels (uint8)")
    width = info.n_classes if info.is_multilabel else 1
    if labels.shape != (n, width):
        _fail(
            path,
            f"{key} has shape {tuple(labels.shape)}, expected ({n}, {width}) to match {n} images",
        )
    if labels.size == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    top = 1 if info.is_multilabel else info.n_classes - 1
    if low < 0 or high > top:
        _fail(
            path,
            f"{key} has values {low}..{high}, expected 0..{top} for the "
            f"{info.task} task of {info.name}",
        )


def _fail(path: Path, what: str) -> None:
    raise MedbenchError(f"{path}: {what}; delete the file and download it again")


def _slash(sizes: dict[str, int]) -> str:
    return "/".join(str(sizes[split]) for split in SPLITS)
