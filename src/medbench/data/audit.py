"""A data audit of one MedMNIST file: exact and near-duplicate images within and across its
splits, label conflicts among duplicates, and the class balance of each split.

    from medbench.data.audit import audit_dataset
    result = audit_dataset("dermamnist", data_dir="~/.medmnist")
    result.counts["exact_cross_split_duplicates"]

- **Exact duplicates**: identical pixel arrays (a BLAKE2b hash of each image's bytes).
- **Near duplicates**: pairs that are not identical but whose embedding - the image
  area-downsampled to at most 32 x 32 per channel, centred on its mean and scaled to unit
  length - has a cosine similarity of at least `NEAR_THRESHOLD`. Centring and scaling make
  the embedding blind to brightness and contrast changes; the full (or near-full)
  resolution keeps the pixel noise that tells two different scans of one class apart.
  Images of one flat grey value have no direction and are left to the exact check.
- **Label conflicts**: duplicate pairs (exact or near) whose labels differ.

Counts are of pairs of images; a pair whose images lie in one split is "within", one
across two splits is "cross" (a test image with a copy in train is leakage).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medbench.data import load_dataset
from medbench.data.loader import SPLITS, MedMNISTData
from medbench.errors import MedbenchError
from medbench.utils.fsutil import atomic_path, atomic_write_json, atomic_write_text

NEAR_THRESHOLD = 0.98
EMBED_SIDE = 32  # embeddings are at most this many pixels on a side
MAX_LISTED = 50  # example pairs kept in the result
MAX_NEAR_PAIRS = 1_000_000  # beyond this many near pairs the search stops and says so
CHUNK = 512


@dataclass
class Pair:
    """Two images that are duplicates: (split, index) each, their kind and labels."""

    kind: str  # "exact" or "near"
    a: tuple[str, int]
    b: tuple[str, int]
    similarity: float
    labels: tuple[Any, Any]

    @property
    def cross(self) -> bool:
        return self.a[0] != self.b[0]

    @property
    def conflict(self) -> bool:
        return self.labels[0] != self.labels[1]


@dataclass
class AuditResult:
    dataset: str
    size: int
    file: str
    md5: str
    n_images: dict[str, int]
    counts: dict[str, int]
    by_splits: dict[str, dict[str, int]]  # "train-test" -> {"exact": n, "near": n}
    class_balance: dict[str, dict[str, int]]
    examples: list[dict[str, Any]]
    method: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- embeddings


def _flat_images(data: MedMNISTData) -> tuple[np.ndarray, list[tuple[str, int]], list[Any]]:
    """All images (N, H, W, C) uint8 in split order, with (split, index) and label of each."""
    images, where, labels = [], [], []
    for split in SPLITS:
        s = data.split(split)
        images.append(s.images.numpy())
        where += [(split, i) for i in range(len(s))]
        y = s.labels.numpy()
        labels += [tuple(int(v) for v in row) if y.ndim == 2 else int(row) for row in y]
    return np.concatenate(images), where, labels


def embeddings(images: np.ndarray, side: int = EMBED_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """(unit-length centred embeddings (N, D) float32, mask of images that have one), of
    images (N, H, W, C) or volumes (N, D, H, W, C), average-pooled to at most `side` per axis."""
    x = torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, 1).float()
    spatial = x.shape[2:]
    if max(spatial) > side:
        pool = F.adaptive_avg_pool3d if len(spatial) == 3 else F.adaptive_avg_pool2d
        x = pool(x, side)
    flat = x.reshape(len(x), -1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    norm = flat.norm(dim=1, keepdim=True)
    usable = (norm[:, 0] > 1e-6).numpy()
    return (flat / norm.clamp_min(1e-6)).numpy(), usable


# --------------------------------------------------------------------------- pairs


def _exact_groups(images: np.ndarray) -> list[list[int]]:
    seen: dict[bytes, list[int]] = {}
    for i, image in enumerate(images):
        seen.setdefault(hashlib.blake2b(image.tobytes(), digest_size=16).digest(), []).append(i)
    return [g for g in seen.values() if len(g) > 1]


def _near_pairs(emb: np.ndarray, usable: np.ndarray, threshold: float) -> tuple[list, bool]:
    """(i, j, cosine) with i < j and cosine >= threshold, and whether the search stopped
    at MAX_NEAR_PAIRS."""
    idx = np.flatnonzero(usable)
    e = torch.from_numpy(emb[idx])
    out: list[tuple[int, int, float]] = []
    for start in range(0, len(idx), CHUNK):
        sims = e[start : start + CHUNK] @ e.T
        rows, cols = torch.nonzero(sims >= threshold, as_tuple=True)
        keep = cols > rows + start
        for r, c in zip(rows[keep].tolist(), cols[keep].tolist(), strict=True):
            out.append((int(idx[start + r]), int(idx[c]), float(sims[r, c])))
        if len(out) >= MAX_NEAR_PAIRS:
            return out[:MAX_NEAR_PAIRS], True
    return out, False


def _pairs(images, where, labels, threshold) -> tuple[list[Pair], bool]:
    pairs: list[Pair] = []
    exact: set[tuple[int, int]] = set()
    for group in _exact_groups(images):
        for i, j in itertools.combinations(group, 2):
            exact.add((i, j))
            pairs.append(Pair("exact", where[i], where[j], 1.0, (labels[i], labels[j])))
    emb, usable = embeddings(images)
    near, truncated = _near_pairs(emb, usable, threshold)
    for i, j, sim in near:
        if (i, j) not in exact:
            pairs.append(Pair("near", where[i], where[j], sim, (labels[i], labels[j])))
    return pairs, truncated


# --------------------------------------------------------------------------- the audit


def _counts(pairs: list[Pair]) -> dict[str, int]:
    c: Counter[str] = Counter()
    for p in pairs:
        c[f"{p.kind}_{'cross' if p.cross else 'within'}_split_duplicates"] += 1
        if p.conflict:
            c["label_conflicts"] += 1
            c["cross_split_label_conflicts"] += p.cross
    keys = [f"{k}_{w}_split_duplicates" for k in ("exact", "near") for w in ("within", "cross")]
    out = {k: int(c[k]) for k in (*keys, "label_conflicts", "cross_split_label_conflicts")}
    leaked = {side for p in pairs if p.cross for side in (p.a, p.b) if side[0] == "test"}
    out["test_images_with_a_train_or_val_duplicate"] = len(leaked)
    return out


def _by_splits(pairs: list[Pair]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for a, b in itertools.combinations_with_replacement(SPLITS, 2):
        out[f"{a}-{b}"] = {"exact": 0, "near": 0}
    for p in pairs:
        a, b = sorted((p.a[0], p.b[0]), key=SPLITS.index)
        out[f"{a}-{b}"][p.kind] += 1
    return out


def _class_balance(data: MedMNISTData) -> dict[str, dict[str, int]]:
    names = list(data.info.label_names)
    out = {}
    for split in SPLITS:
        y = data.split(split).labels.numpy()
        counts = y.sum(axis=0) if y.ndim == 2 else np.bincount(y, minlength=len(names))
        out[split] = {names[i]: int(n) for i, n in enumerate(counts)}
    return out


def _example(p: Pair) -> dict[str, Any]:
    return {
        "kind": p.kind,
        "a": list(p.a),
        "b": list(p.b),
        "similarity": round(p.similarity, 4),
        "labels": [list(v) if isinstance(v, tuple) else v for v in p.labels],
    }


def audit_dataset(
    name: str,
    size: int = 28,
    data_dir: str | os.PathLike | None = None,
    *,
    threshold: float = NEAR_THRESHOLD,
    download: bool = True,
) -> AuditResult:
    """Audit dataset `name` at `size` (see the module docstring for the definitions)."""
    if not 0 < threshold < 1:
        raise MedbenchError(f"need a near-duplicate threshold between 0 and 1, got {threshold}")
    data = load_dataset(name, size, data_dir, download=download, progress=False)
    images, where, labels = _flat_images(data)
    pairs, truncated = _pairs(images, where, labels, threshold)
    pairs.sort(key=lambda p: (p.kind != "exact", not p.cross, not p.conflict, -p.similarity))
    notes = [f"the near-duplicate search stopped at {MAX_NEAR_PAIRS} pairs"] if truncated else []
    return AuditResult(
        dataset=name,
        size=data.size,
        file=str(data.path),
        md5=data.md5,
        n_images={split: len(data.split(split)) for split in SPLITS},
        counts=_counts(pairs),
        by_splits=_by_splits(pairs),
        class_balance=_class_balance(data),
        examples=[_example(p) for p in pairs[:MAX_LISTED]],
        method={
            "exact": "identical pixels (BLAKE2b hash of each image)",
            "near": f"cosine >= {threshold} between centred, unit-length images "
            f"area-downsampled to at most {EMBED_SIDE} px a side; exact pairs excluded",
            "counted": "pairs of images",
        },
        notes=notes,
    )


def format_audit(result: AuditResult) -> str:
    """The audit as a short plain-text report."""
    c, n = result.counts, result.n_images
    lines = [
        f"{result.dataset} ({result.size} px, {result.file}): "
        + ", ".join(f"{k} {v}" for k, v in n.items())
        + " images",
        f"  exact duplicates: {c['exact_within_split_duplicates']} pairs within a split, "
        f"{c['exact_cross_split_duplicates']} across splits",
        f"  near duplicates (cosine >= {result.method['near'].split()[2]}): "
        f"{c['near_within_split_duplicates']} within, {c['near_cross_split_duplicates']} across",
        f"  label conflicts among duplicates: {c['label_conflicts']} "
        f"({c['cross_split_label_conflicts']} across splits)",
    ]
    leaks = {k: v for k, v in result.by_splits.items() if "test" in k and k != "test-test"}
    pairs = ", ".join(
        f"{k.split('-')[0]}: {v['exact']} exact, {v['near']} near" for k, v in leaks.items()
    )
    lines.append(
        f"  {c['test_images_with_a_train_or_val_duplicate']} of {n['test']} test images have a "
        f"duplicate in train or val; pairs with {pairs}"
    )
    for split, counts in result.class_balance.items():
        total = sum(counts.values()) or 1
        shares = ", ".join(f"{k} {v} ({100 * v / total:.0f}%)" for k, v in counts.items())
        lines.append(f"  {split} classes: {shares}")
    lines += [f"  note: {note}" for note in result.notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- files

GALLERY_PAIRS = 12


def _gallery(result: AuditResult, data: MedMNISTData, path: Path) -> Path | None:
    """The first example pairs (cross-split and conflicting ones first) side by side."""
    shown = result.examples[:GALLERY_PAIRS]
    if not shown:
        return None
    cols = 3
    rows = -(-len(shown) // cols)
    fig = Figure(figsize=(3.2 * cols, 1.9 * rows), layout="constrained")
    names = list(data.info.label_names)
    for k, e in enumerate(shown):
        sub = fig.add_subfigure(fig.add_gridspec(rows, cols)[k // cols, k % cols])
        for side, ax in zip(("a", "b"), sub.subplots(1, 2), strict=True):
            split, index = e[side]
            image = data.split(split).images[index].numpy()
            if image.ndim == 4:  # a volume (D, H, W, C): its middle axial slice
                image = image[len(image) // 2]
            ax.imshow(
                image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255
            )
            label = e["labels"][0 if side == "a" else 1]
            text = names[label] if isinstance(label, int) and label < len(names) else str(label)
            ax.set_title(f"{split} {index}\n{text}", fontsize=7)
            ax.axis("off")
        sub.suptitle(f"{e['kind']}, cosine {e['similarity']:.4f}", fontsize=8)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", pad_inches=0.1)
    return path


def write_audit(
    result: AuditResult, out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None
) -> list[Path]:
    """audit.json, audit.txt (`format_audit`) and duplicates.png (the example pairs) in
    `out_dir`; each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [
        atomic_write_json(out / "audit.json", result.to_json()),
        atomic_write_text(out / "audit.txt", format_audit(result) + "\n"),
    ]
    data = load_dataset(result.dataset, result.size, data_dir, download=False, progress=False)
    gallery = _gallery(result, data, out / "duplicates.png")
    return files + ([gallery] if gallery else [])


# --------------------------------------------------------------------------- leakage


@dataclass
class Leakage:
    """Test images with an exact or near copy in train or val, and how many of those
    copies carry another label."""

    dataset: str
    size: int
    n_test: int
    leaked: int
    conflicting: int
    threshold: float


def _label_differs(labels: list[Any], i: int, others) -> bool:
    return any(labels[j] != labels[i] for j in others)


def test_leakage(data: MedMNISTData, threshold: float = NEAR_THRESHOLD) -> Leakage:
    """Only what bears on test scores: each test image against train and val (exact by
    hash, near by the embedding cosine), cheaper than a full `audit_dataset`."""
    images, where, labels = _flat_images(data)
    is_test = np.array([w[0] == "test" for w in where])
    leaked: set[int] = set()
    conflicting: set[int] = set()
    for group in _exact_groups(images):
        others = [j for j in group if not is_test[j]]
        for i in (i for i in group if is_test[i] and others):
            leaked.add(i)
            if _label_differs(labels, i, others):
                conflicting.add(i)
    emb, usable = embeddings(images)
    queries, keys = np.flatnonzero(is_test & usable), np.flatnonzero(~is_test & usable)
    k = torch.from_numpy(emb[keys])
    for start in range(0, len(queries), CHUNK):
        rows = queries[start : start + CHUNK]
        hits = (torch.from_numpy(emb[rows]) @ k.T) >= threshold
        for r, row in enumerate(rows):
            matched = keys[hits[r].numpy()]
            if matched.size:
                leaked.add(int(row))
                if _label_differs(labels, int(row), matched):
                    conflicting.add(int(row))
    n_test = int(is_test.sum())
    return Leakage(data.info.name, data.size, n_test, len(leaked), len(conflicting), threshold)
