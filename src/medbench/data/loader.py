"""Loading a MedMNIST dataset into uint8 tensors, checked against the catalogue."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medbench.data.arrays import open_npz
from medbench.data.catalogue import SPLITS, DatasetInfo, dataset_info
from medbench.data.download import ensure_dataset
from medbench.data.validate import KEYS, check_arrays
from medbench.errors import MedbenchError, MedbenchWarning


@dataclass
class Split:
    """One split. `images`: uint8 (N, H, W, C), gray included (C=1), or for a 3D dataset
    (N, D, H, W, 1), memory-mapped, not copied (channels last, so that the engine's
    `to_unit_float` gives (N, C, H, W) or (N, 1, D, H, W) the same way). `labels`: int64 (N,) for single-label tasks, float32 (N, L) for multi-label."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class MedMNISTData:
    """A loaded dataset and where it came from (see `provenance`)."""

    info: DatasetInfo
    size: int
    path: Path
    train: Split
    val: Split
    test: Split
    md5: str
    official_md5: str
    md5_matches: bool
    official: bool
    warnings: list[str] = field(default_factory=list)

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise MedbenchError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def provenance(self) -> dict:
        """What a result must record about its data (JSON-able)."""
        return {
            "name": self.info.name,
            "size": self.size,
            "task": self.info.task,
            "n_classes": self.info.n_classes,
            "n_channels": self.info.n_channels,
            "label_names": list(self.info.label_names),
            "license": self.info.license,
            "file": str(self.path),
            "md5": self.md5,
            "official_md5": self.official_md5,
            "md5_matches": self.md5_matches,
            "official": self.official,
            "split_sizes": {split: len(self.split(split)) for split in SPLITS},
            "warnings": list(self.warnings),
        }


def load_dataset(
    name: str,
    size: int = 28,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> MedMNISTData:
    """Load `name` at `size` from the data folder, downloading it first if it is missing
    (and `download`; a --data-dir that does not exist is refused, see `ensure_dataset`). Local files whose MD5 or split sizes differ from the official ones
    are used with a MedbenchWarning, recorded in `warnings` and `provenance()`."""
    info = dataset_info(name)
    size = info.check_size(size)
    path = ensure_dataset(name, size, data_dir, download=download, progress=progress)
    if not path.is_file():
        raise MedbenchError(f"{path} is not a file; remove it or choose another --data-dir")
    arrays, md5 = open_npz(path, KEYS)
    notes = check_arrays(info, size, arrays, path)
    official_md5 = info.md5(size)
    md5_matches = md5 == official_md5
    if not md5_matches and not notes:  # a split-size note already says it is not official
        notes.append(
            f"{path.name}: MD5 {md5} differs from the official {official_md5}; the file is "
            f"used as it is and recorded as not official"
        )
    for note in notes:
        warnings.warn(note, MedbenchWarning, stacklevel=2)
    splits = {split: _split(info, arrays, split) for split in SPLITS}
    return MedMNISTData(
        info=info,
        size=size,
        path=path,
        **splits,
        md5=md5,
        official_md5=official_md5,
        md5_matches=md5_matches,
        official=md5_matches,
        warnings=notes,
    )


def _split(info: DatasetInfo, arrays: dict[str, np.ndarray], split: str) -> Split:
    images = torch.from_numpy(arrays[f"{split}_images"])
    if info.volumetric or info.n_channels == 1:
        images = images.unsqueeze(-1)  # a view: (N, H, W) -> (N, H, W, 1), volumes alike
    labels = np.asarray(arrays[f"{split}_labels"])
    if info.is_multilabel:
        targets = torch.from_numpy(labels.astype(np.float32))
    else:
        targets = torch.from_numpy(labels[:, 0].astype(np.int64))
    return Split(images=images, labels=targets)
