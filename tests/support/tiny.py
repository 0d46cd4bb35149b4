"""The one tiny model of the test suite: an advanced_cnn with one block a stage, no
attention gates and stages 8-64 wide (66k parameters at 3 channels and 8 classes), whose
training step takes about a tenth of a tiny efficientnet's on a CPU. Tests of the engine,
budgets, files and reports train it; tests of a particular architecture build their own."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TINY_MODEL = "advanced_cnn"
TINY_OPTIONS: dict[str, Any] = {"width": 0.125, "depths": [1, 1, 1, 1], "attention": False}


def tiny_options() -> dict[str, Any]:
    """A fresh copy of TINY_OPTIONS (a config may keep and change its dict)."""
    return {**TINY_OPTIONS, "depths": list(TINY_OPTIONS["depths"])}


@dataclass(frozen=True)
class TinyRuns:
    """Finished one-epoch runs of the tiny model, one per seed, on a synthetic BreastMNIST
    stand-in (64/32/32 images): `root` holds `data/` and `run<seed>/`."""

    root: Path
    data_dir: Path
    runs: tuple[Path, ...]


def train_tiny_runs(root: Path, seeds: tuple[int, ...] = (0, 1)) -> TinyRuns:
    """Train the tiny model once per seed into `root` (quietly: the stand-in's split sizes
    are not the official ones, which medbench warns about)."""
    from medbench.data.synthetic import write_synthetic_like
    from medbench.training.config import TrainConfig
    from medbench.training.engine import train

    data = root / "data"
    write_synthetic_like(data, "breastmnist", 28, n_train=64, n_val=32, n_test=32)
    runs = []
    for seed in seeds:
        config = TrainConfig(
            dataset="breastmnist",
            model=TINY_MODEL,
            model_options=tiny_options(),
            seed=seed,
            epochs=1,
            batch_size=32,
            device="cpu",
            data_dir=str(data),
            run_dir=str(root / f"run{seed}"),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train(config, progress=False)  # with its speed (latency) measured
        runs.append(root / f"run{seed}")
    return TinyRuns(root, data, tuple(runs))
