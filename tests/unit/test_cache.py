"""Result cache keys and the in-process LRU (the Redis cache is tested against a real redis-server in integration)."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from shardsearch.coordinator.cache import CacheMetrics, LocalCache, entry_keys


def test_keys_change_with_every_option_and_every_bit_of_the_query() -> None:
    q = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    base = entry_keys(8, 0, 10, 0, False, q)
    assert base[0] != base[1] and base == entry_keys(8, 0, 10, 0, False, q.copy())
    for variant in [(8, 1, 10, 0, False), (8, 0, 11, 0, False), (8, 0, 10, 32, False), (8, 0, 10, 0, True)]:
        assert entry_keys(*variant, q)[0] != base[0]
    nudged = q.copy()
    nudged[0, 3] = np.nextafter(nudged[0, 3], np.float32(np.inf))
    assert entry_keys(8, 0, 10, 0, False, nudged)[0] != base[0]


async def test_local_cache_hits_until_invalidated_and_counts() -> None:
    registry = CollectorRegistry()
    cache = LocalCache(CacheMetrics(registry), max_bytes=1 << 20)
    first = await cache.lookup("c", ["a", "b"])
    assert first.values == [None, None]
    cache.store("c", first.token, [("a", b"A")])  # type: ignore[arg-type]
    assert (await cache.lookup("c", ["a", "b"])).values == [b"A", None]
    assert (await cache.lookup("other", ["a"])).values == [None]
    await cache.invalidate("c")
    assert (await cache.lookup("c", ["a"])).values == [None]
    cache.store("c", first.token, [("a", b"stale")])  # computed before the write: refused
    assert (await cache.lookup("c", ["a"])).values == [None]
    assert registry.get_sample_value("shardsearch_coordinator_cache_lookups_total", {"result": "hit"}) == 1
    assert registry.get_sample_value("shardsearch_coordinator_cache_lookups_total", {"result": "miss"}) == 6


async def test_local_cache_evicts_least_recently_used_within_its_byte_budget() -> None:
    cache = LocalCache(CacheMetrics(CollectorRegistry()), max_bytes=30)
    token = (await cache.lookup("c", [])).token
    assert token is not None
    cache.store("c", token, [("a", b"x" * 10), ("b", b"x" * 10), ("c", b"x" * 10)])
    await cache.lookup("c", ["a"])  # a is now the most recent
    cache.store("c", token, [("d", b"x" * 10)])
    assert [v is not None for v in (await cache.lookup("c", ["a", "b", "c", "d"])).values] == [True, False, True, True]
