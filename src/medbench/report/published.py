"""Published reference numbers, kept as data in `published.json` beside this module."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

PUBLISHED_PATH = Path(__file__).with_name("published.json")


@lru_cache(maxsize=1)
def load_published() -> dict[str, Any]:
    """The whole published.json: MedMNIST v2 rows per dataset, and the reference study."""
    return json.loads(PUBLISHED_PATH.read_text())


def published_rows(dataset: str) -> dict[str, dict[str, float]]:
    """{method: {"acc", "auc"}} published for `dataset` (empty when none)."""
    return dict((load_published()["datasets"].get(dataset) or {}).get("rows") or {})


def baseline(dataset: str) -> dict[str, float] | None:
    """The published ResNet-18 (28) row of `dataset`, the study's baseline, if known."""
    pub = load_published()
    return published_rows(dataset).get(pub["baseline_method"])


def reference_study_rows(dataset: str) -> dict[str, dict[str, Any]]:
    """{model: {"acc", ...}} of the reference study for `dataset` (empty when none)."""
    return dict(load_published()["reference_study"]["rows"].get(dataset) or {})


def medmnist_plus_rows(dataset: str) -> list[dict[str, Any]]:
    """The MedMNIST+ paper's rows for `dataset` ({"model", "regime", "size", "acc", and
    where published "acc_std", "auc", "auc_std"}; empty when none were transcribed)."""
    block = load_published().get("medmnist_plus") or {}
    return [dict(r) for r in (block.get("datasets", {}).get(dataset) or {}).get("rows", [])]


def medmnist_plus_citation() -> str:
    """How the MedMNIST+ rows must be cited."""
    return str((load_published().get("medmnist_plus") or {}).get("citation", ""))
