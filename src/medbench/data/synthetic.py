"""Small synthetic datasets in the official MedMNIST npz layout.

Used by the tests (no test may touch the network) and handy for trying medbench without
data. Each class has its own smooth random pattern; an image is that pattern (or, for
multi-label tasks, the sum of its labels' patterns) plus noise, so models can learn it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medbench.data.catalogue import DATASETS_3D, medmnist_info

TASKS = ("multi-class", "binary-class", "multi-label, binary-class", "ordinal-regression")


def make_synthetic_splits(
    *,
    task: str = "multi-class",
    n_classes: int = 3,
    n_channels: int = 1,
    size: int = 28,
    n_train: int = 64,
    n_val: int = 16,
    n_test: int = 16,
    seed: int = 0,
    signal: float = 60.0,
    volumetric: bool = False,
) -> dict[str, np.ndarray]:
    """Return the six arrays of a MedMNIST npz (`train_images`, `train_labels`, ...):
    images uint8 (N, H, W) gray, (N, H, W, C) colour, or with `volumetric` the 3D sets'
    (N, D, H, W) volumes (one channel, D = H = W = `size`); labels uint8 (N, 1), or
    (N, n_classes) for multi-label tasks."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if volumetric and n_channels != 1:
        raise ValueError(f"the 3D MedMNIST sets have one channel, not {n_channels}")
    if task == "binary-class":
        n_classes = 2
    rng = np.random.default_rng(seed)
    spatial = (size,) * (3 if volumetric else 2)
    # Smooth class patterns: low-resolution noise upsampled to the image size.
    low = rng.normal(size=(n_classes, *(4,) * len(spatial), n_channels))
    reps = -(-size // 4)
    patterns = np.kron(low, np.ones((1, *(reps,) * len(spatial), 1)))
    crop = (slice(None),) + (slice(size),) * len(spatial)
    patterns = patterns[crop]
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if task.startswith("multi-label"):
            labels = (rng.random((n, n_classes)) < 0.35).astype(np.uint8)
            signal_map = np.tensordot(labels.astype(np.float64), patterns, axes=1)
        else:
            y = np.arange(n) % n_classes  # every class present in every split
            rng.shuffle(y)
            labels = y.astype(np.uint8)[:, None]
            signal_map = patterns[y]
        noise = rng.normal(scale=25.0, size=(n, *spatial, n_channels))
        images = np.clip(128 + signal * signal_map + noise, 0, 255).astype(np.uint8)
        if n_channels == 1:
            images = images[..., 0]
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels
    return arrays


def write_synthetic_npz(path: str | Path, **kwargs) -> Path:
    """Write a synthetic dataset (see `make_synthetic_splits`) as a compressed npz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # numpy's stub lists allow_pickle beside **kwds, so mypy matches the arrays against
    # that bool too; the six array names never include it.
    np.savez_compressed(path, **make_synthetic_splits(**kwargs))  # type: ignore[arg-type]
    return path


def write_synthetic_like(
    data_dir: str | Path,
    name: str,
    size: int = 28,
    *,
    n_train: int = 64,
    n_val: int = 16,
    n_test: int = 16,
    seed: int = 0,
) -> Path:
    """Write a small synthetic stand-in for catalogue dataset `name` under its official file name.

    Task, channels, number of classes and, for the 3D sets, the (N, D, H, W) volume layout
    follow the medmnist catalogue; split sizes are the small ones given (so the file is
    recognised as not official).
    """
    info = medmnist_info().INFO[name]
    file_name = f"{name}.npz" if size == 28 else f"{name}_{size}.npz"
    return write_synthetic_npz(
        Path(data_dir) / file_name,
        task=info["task"],
        n_classes=len(info["label"]),
        n_channels=info["n_channels"],
        size=size,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        seed=seed,
        volumetric=name in DATASETS_3D,
    )
