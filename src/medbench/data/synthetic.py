"""Small synthetic datasets in the official MedMNIST npz layout.

Used by the tests (no test may touch the network) and handy for trying medbench without
data. Each class has its own smooth random pattern; an image is that pattern (or, for
multi-label tasks, the sum of its labels' patterns) plus noise, so models can learn it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medbench.data.catalogue import medmnist_info

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
) -> dict[str, np.ndarray]:
    """Return the six arrays of a MedMNIST npz (`train_images`, `train_labels`, ...)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if task == "binary-class":
        n_classes = 2
    rng = np.random.default_rng(seed)
    # Smooth class patterns: low-resolution noise upsampled to the image size.
    low = rng.normal(size=(n_classes, 4, 4, n_channels))
    reps = -(-size // 4)
    patterns = np.kron(low, np.ones((1, reps, reps, 1)))[:, :size, :size, :]
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if task.startswith("multi-label"):
            labels = (rng.random((n, n_classes)) < 0.35).astype(np.uint8)
            signal_map = np.einsum("nc,chwk->nhwk", labels.astype(np.float64), patterns)
        else:
            y = np.arange(n) % n_classes  # every class present in every split
            rng.shuffle(y)
            labels = y.astype(np.uint8)[:, None]
            signal_map = patterns[y]
        images = (
            128 + signal * signal_map + rng.normal(scale=25.0, size=(n, size, size, n_channels))
        )
        images = np.clip(images, 0, 255).astype(np.uint8)
        if n_channels == 1:
            images = images[..., 0]
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels
    return arrays


def write_synthetic_npz(path: str | Path, **kwargs) -> Path:
    """Write a synthetic dataset (see `make_synthetic_splits`) as a compressed npz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **make_synthetic_splits(**kwargs))
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

    Task, channels and number of classes follow the medmnist catalogue; split sizes are
    the small ones given (so the file is recognised as not official).
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
    )
