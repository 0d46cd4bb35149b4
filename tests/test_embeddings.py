"""The embedding cache: keyed by what decides the values, atomic, checked on reading."""

from __future__ import annotations

import numpy as np

from medbench.models.embeddings import EmbeddingCache, EmbeddingKey


def _key(**changes) -> EmbeddingKey:
    base = dict(model="timm:resnet10t", weights_sha256="a" * 64, dataset="breastmnist",
                size=28, split="train", transform="pad224", data_md5="m")  # fmt: skip
    base.update(changes)
    return EmbeddingKey(**base)


def _counter():
    calls = []
    return calls, lambda: calls.append(1) or np.arange(6, dtype=np.float32).reshape(2, 3)


def test_second_lookup_is_a_hit_and_does_not_compute(tmp_path):
    events = []
    cache = EmbeddingCache(tmp_path, on_event=lambda kind, key: events.append(kind))
    calls, compute = _counter()
    first = cache.get_or_compute(_key(), compute)
    second = cache.get_or_compute(_key(), compute)
    assert len(calls) == 1
    assert events == ["miss", "hit"]
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)
    np.testing.assert_array_equal(first, second)


def test_a_new_cache_object_reads_what_an_earlier_one_wrote(tmp_path):
    calls, compute = _counter()
    EmbeddingCache(tmp_path).get_or_compute(_key(), compute)
    again = EmbeddingCache(tmp_path)
    again.get_or_compute(_key(), compute)
    assert len(calls) == 1 and again.stats.hits == 1


def test_every_key_field_separates_entries(tmp_path):
    cache = EmbeddingCache(tmp_path)
    calls, compute = _counter()
    cache.get_or_compute(_key(), compute)
    for change in (dict(model="timm:other"), dict(weights_sha256="b" * 64),
                   dict(dataset="pneumoniamnist"), dict(size=64), dict(split="val"),
                   dict(transform="resize224"), dict(data_md5="n")):  # fmt: skip
        cache.get_or_compute(_key(**change), compute)
    assert len(calls) == 8
    assert len(cache.entries()) == 8


def test_a_damaged_entry_is_recomputed(tmp_path):
    cache = EmbeddingCache(tmp_path)
    calls, compute = _counter()
    cache.get_or_compute(_key(), compute)
    cache.path(_key()).write_bytes(b"not an npz")
    values = cache.get_or_compute(_key(), compute)
    assert len(calls) == 2 and values.shape == (2, 3)


def test_writes_leave_no_temporary_files(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.get_or_compute(_key(), _counter()[1])
    assert [p.name for p in tmp_path.iterdir()] == [_key().filename()]
