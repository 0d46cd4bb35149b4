"""The one tiny model of the test suite: an advanced_cnn with one block a stage, no
attention gates and stages 8-64 wide (66k parameters at 3 channels and 8 classes), whose
training step takes about a tenth of a tiny efficientnet's on a CPU. Tests of the engine,
budgets, files and reports train it; tests of a particular architecture build their own."""

from __future__ import annotations

from typing import Any

TINY_MODEL = "advanced_cnn"
TINY_OPTIONS: dict[str, Any] = {"width": 0.125, "depths": [1, 1, 1, 1], "attention": False}


def tiny_options() -> dict[str, Any]:
    """A fresh copy of TINY_OPTIONS (a config may keep and change its dict)."""
    return {**TINY_OPTIONS, "depths": list(TINY_OPTIONS["depths"])}
