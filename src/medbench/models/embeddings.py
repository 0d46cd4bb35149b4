"""A disk cache of frozen-backbone embeddings, so that probing many datasets (or probing
one dataset by linear probe and by k-NN) runs each backbone over each split once.

An entry is keyed by what decides its values: the backbone's name, the SHA-256 of its
weights, the dataset, its image size, the split, the input transform (how images reach
the backbone: zero-padding or resizing to a target size, the normalisation) and the MD5
of the data file. A changed weights file or data file therefore misses the cache instead
of returning stale embeddings. Entries are `.npz` files written atomically
(`medbench.utils.fsutil`), named by the hash of their key, with the key stored inside and
compared on reading.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medbench.errors import MedbenchError
from medbench.utils.fsutil import atomic_write_bytes


@dataclass(frozen=True)
class EmbeddingKey:
    """What one cached array of embeddings depends on."""

    model: str
    weights_sha256: str
    dataset: str
    size: int
    split: str
    transform: str = ""  # e.g. "pad224 mean=(...) std=(...)"
    data_md5: str = ""

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def filename(self) -> str:
        safe = self.model.replace(":", "-").replace("/", "-")
        return f"{self.dataset}-{self.size}-{self.split}-{safe}-{self.digest()}.npz"


@dataclass
class CacheStats:
    """How often the cache answered (hits) and how often embeddings were computed."""

    hits: int = 0
    misses: int = 0


class EmbeddingCache:
    """Embeddings on disk under `root`; `on_event(kind, key)` is called with "hit" or
    "miss" for every lookup (a test or a progress line can watch the cache that way)."""

    def __init__(
        self,
        root: str | Path,
        on_event: Callable[[str, EmbeddingKey], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.on_event = on_event
        self.stats = CacheStats()

    def path(self, key: EmbeddingKey) -> Path:
        return self.root / key.filename()

    def load(self, key: EmbeddingKey) -> np.ndarray | None:
        """The cached embeddings for `key`, or None (absent, unreadable or another key)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                stored = json.loads(str(f["key"]))
                values = f["embeddings"]
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry is recomputed and rewritten
        return values if stored == asdict(key) else None

    def save(self, key: EmbeddingKey, embeddings: np.ndarray) -> Path:
        buffer = io.BytesIO()
        np.savez(buffer, embeddings=embeddings, key=np.array(json.dumps(asdict(key))))
        try:
            return atomic_write_bytes(self.path(key), buffer.getvalue())
        except OSError as exc:
            raise MedbenchError(f"cannot write the embedding cache {self.root}: {exc}") from None

    def get_or_compute(self, key: EmbeddingKey, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The embeddings for `key`: from disk when cached, else `compute()`d and stored."""
        cached = self.load(key)
        kind = "hit" if cached is not None else "miss"
        if cached is None:
            cached = np.ascontiguousarray(compute(), dtype=np.float32)
            self.save(key, cached)
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        if self.on_event is not None:
            self.on_event(kind, key)
        return cached

    def entries(self) -> list[dict[str, Any]]:
        """The keys of every entry on disk (readable ones)."""
        out = []
        for path in sorted(self.root.glob("*.npz")):
            try:
                with np.load(path, allow_pickle=False) as f:
                    out.append(json.loads(str(f["key"])))
            except (OSError, ValueError, KeyError):
                continue
        return out
