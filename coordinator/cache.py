"""The search result cache: Redis shared by every coordinator replica, or an in-process LRU.

Never stale: every entry is keyed by its collection's data version, a random token that the coordinator replaces
after every acknowledged write (and before acknowledging it). A search reads the token and its entries in one Redis
round trip (a Lua script), so a search that starts after a write was acknowledged can only see entries computed
under the new token, whichever coordinator did the write. Tokens are random rather than counters, so a Redis that
restarts empty can never hand out a token that matches entries computed before it.

Never in the way: Redis calls have a short timeout; an error turns the cache off (counted and logged) so searches go
straight to the shards, and Redis is probed every `retry_s` until it answers again. A write whose invalidation failed
is still acknowledged (the shards have it; a cache outage must not stop ingestion); it is remembered and retried every
50 ms, and this coordinator only uses the cache again once every such collection's token has been replaced, so it
never reads an entry older than its own acknowledged writes.

The one window left: Redis that kept its data but was unreachable from the writing coordinator only (a network
partition, or a stall that timed out one client), while another coordinator could still read it. Until the retried
invalidation lands, that other coordinator may serve an answer from before the write. A Redis that restarts empty
(the shipped configuration: no persistence) has no such entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shardsearch import redis_store
from shardsearch.config import cache_kind
from shardsearch.lru import ByteLRU
from shardsearch.metrics import LATENCY_BUCKETS

logger = logging.getLogger(__name__)

MAX_PENDING_STORES = 256  # concurrent fire-and-forget cache fills; beyond it fills are skipped
UNAPPLIED_RETRY_S = 0.05

_LOOKUP = """
local token = redis.call('GET', KEYS[1])
if not token then return {false} end
local out = {token}
local prefix = ARGV[1] .. token .. ':'
for i = 2, #ARGV do out[i] = redis.call('GET', prefix .. ARGV[i]) end
return out
"""


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter(
            "shardsearch_coordinator_cache_lookups",
            "Query rows looked up in the result cache: hit, miss, or unavailable (cache off after an error).",
            ["result"], registry=registry,
        )
        self.errors = Counter(
            "shardsearch_coordinator_cache_errors", "Failed cache operations (the search went on without the cache).",
            ["operation"], registry=registry,
        )
        self.latency = Histogram(
            "shardsearch_coordinator_cache_operation_duration_seconds", "Cache round-trip time by operation.",
            ["operation"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.up = Gauge(
            "shardsearch_coordinator_cache_up", "1 while the cache is in use, 0 while it is off after errors.",
            registry=registry,
        )
        self.skipped_stores = Counter(
            "shardsearch_coordinator_cache_skipped_stores", "Cache fills skipped because too many were pending.",
            registry=registry,
        )
        for result in ("hit", "miss", "unavailable"):
            self.lookups.labels(result)
        for operation in ("lookup", "store", "invalidate"):
            self.errors.labels(operation)
        self.up.set(1)


@dataclass(frozen=True)
class Lookup:
    token: str | None
    """The collection's data version the values belong to; None means do not fill the cache."""
    values: list[bytes | None]


def entry_keys(
    dim: int, metric: int, k: int, nprobe: int, include_payload: bool, queries: np.ndarray, flt: bytes = b"",
    include_fields: bool = False,
) -> list[str]:
    """One key per query row: the exact float32 bytes plus every option that changes the answer (the filter as its
    deterministic serialisation, hashed once)."""
    digest = hashlib.blake2b(flt, digest_size=16).hexdigest() if flt else ""
    prefix = f"{dim}:{metric}:{k}:{nprobe}:{int(include_payload)}:{int(include_fields)}:{digest}:".encode()
    rows = np.ascontiguousarray(queries, dtype=np.float32)
    return [hashlib.blake2b(prefix + row.tobytes(), digest_size=16).hexdigest() for row in rows]


class ResultCache:
    """Interface: lookup, store (fire and forget), invalidate (awaited before a write is acknowledged)."""

    def __init__(self, metrics: CacheMetrics) -> None:
        self.metrics = metrics

    async def lookup(self, collection: str, keys: Sequence[str]) -> Lookup:
        raise NotImplementedError

    def store(self, collection: str, token: str, entries: Sequence[tuple[str, bytes]]) -> None:
        raise NotImplementedError

    async def invalidate(self, collection: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None

    def _count(self, values: Sequence[bytes | None]) -> None:
        hits = sum(v is not None for v in values)
        if hits:
            self.metrics.lookups.labels("hit").inc(hits)
        if len(values) - hits:
            self.metrics.lookups.labels("miss").inc(len(values) - hits)


class LocalCache(ResultCache):
    """An in-process LRU bounded in bytes, for a single coordinator process without Redis."""

    def __init__(self, metrics: CacheMetrics, max_bytes: int) -> None:
        super().__init__(metrics)
        self._entries: ByteLRU[tuple[str, str, str]] = ByteLRU(max_bytes)
        self._versions: dict[str, int] = {}

    async def lookup(self, collection: str, keys: Sequence[str]) -> Lookup:
        token = str(self._versions.get(collection, 0))
        values = [self._entries.get((collection, token, key)) for key in keys]
        self._count(values)
        return Lookup(token, values)

    def store(self, collection: str, token: str, entries: Sequence[tuple[str, bytes]]) -> None:
        if token != str(self._versions.get(collection, 0)):
            return  # computed before a write that has since been acknowledged
        for key, value in entries:
            self._entries.put((collection, token, key), value)

    async def invalidate(self, collection: str) -> None:
        self._versions[collection] = self._versions.get(collection, 0) + 1


class RedisCache(ResultCache):
    def __init__(
        self, metrics: CacheMetrics, url: str, ttl_s: float, timeout_s: float, retry_s: float,
        prefix: str = "shardsearch",
    ) -> None:
        super().__init__(metrics)
        self._redis = redis_store.connect(url, timeout_s)
        self._lookup_script = self._redis.register_script(_LOOKUP)
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._timeout = timeout_s
        self._retry_s = retry_s
        self._prefix = prefix
        self.available = True  # False from a Redis error until _recover succeeds
        self._unapplied: set[str] = set()  # collections written while Redis was unreachable
        self._recovering: asyncio.Task[None] | None = None
        self._fills = redis_store.Fills(MAX_PENDING_STORES)

    def _version_key(self, collection: str) -> str:
        return f"{self._prefix}:{{{collection}}}:v"

    def _entry_prefix(self, collection: str) -> str:
        return f"{self._prefix}:{{{collection}}}:r:"

    def _trip(self, operation: str, exc: BaseException) -> None:
        self.metrics.errors.labels(operation).inc()
        if self.available:
            logger.warning("result cache off: Redis %s failed: %r", operation, exc)
            self.available = False
            self.metrics.up.set(0)
        if self._recovering is None or self._recovering.done():
            self._recovering = asyncio.create_task(self._recover())

    async def _recover(self) -> None:
        """Turns the cache back on once Redis answers and every write it missed has replaced its collection's token.

        Missed invalidations are retried every 50 ms (they shorten the window in which another coordinator could
        read an entry older than this coordinator's writes); otherwise Redis is probed every `retry_s`.
        """
        while True:
            await asyncio.sleep(UNAPPLIED_RETRY_S if self._unapplied else self._retry_s)
            try:
                async with asyncio.timeout(self._timeout):
                    for collection in list(self._unapplied):
                        await self._redis.set(self._version_key(collection), secrets.token_hex(8))
                        self._unapplied.discard(collection)
                    await self._redis.ping()
            except Exception as exc:
                logger.debug("result cache still unavailable: %r", exc)
                continue
            if self._unapplied:  # an invalidation failed while this round was awaiting Redis: apply it first
                continue
            self.available = True
            self.metrics.up.set(1)
            logger.info("result cache back on")
            return

    async def lookup(self, collection: str, keys: Sequence[str]) -> Lookup:
        if not self.available:
            self.metrics.lookups.labels("unavailable").inc(len(keys))
            return Lookup(None, [None] * len(keys))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                reply = await self._lookup_script(
                    keys=[self._version_key(collection)], args=[self._entry_prefix(collection), *keys]
                )
                if reply[0] is None:  # first use, or Redis lost its data: start a fresh version
                    await self._redis.set(self._version_key(collection), secrets.token_hex(8), nx=True)
        except Exception as exc:
            self._trip("lookup", exc)
            self.metrics.lookups.labels("unavailable").inc(len(keys))
            return Lookup(None, [None] * len(keys))
        finally:
            self.metrics.latency.labels("lookup").observe(time.perf_counter() - started)
        if reply[0] is None:
            self._count([None] * len(keys))
            return Lookup(None, [None] * len(keys))
        values = [reply[i] if i < len(reply) else None for i in range(1, len(keys) + 1)]
        self._count(values)
        return Lookup(reply[0].decode(), values)

    def store(self, collection: str, token: str, entries: Sequence[tuple[str, bytes]]) -> None:
        if not entries or not self.available:
            return
        if self._fills.full():
            self.metrics.skipped_stores.inc()
            return
        self._fills.start(self._store(collection, token, entries))

    async def _store(self, collection: str, token: str, entries: Sequence[tuple[str, bytes]]) -> None:
        prefix = f"{self._entry_prefix(collection)}{token}:"
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                await redis_store.set_all(self._redis, [(prefix + key, value) for key, value in entries], self._ttl_ms)
        except Exception as exc:
            self._trip("store", exc)
        finally:
            self.metrics.latency.labels("store").observe(time.perf_counter() - started)

    async def invalidate(self, collection: str) -> None:
        """Gives the collection a new data version; if Redis cannot be told now, keeps the cache off until it is."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(self._version_key(collection), secrets.token_hex(8))
        except Exception as exc:
            self._unapplied.add(collection)
            self._trip("invalidate", exc)
        finally:
            self.metrics.latency.labels("invalidate").observe(time.perf_counter() - started)

    async def close(self) -> None:
        if self._recovering is not None:
            self._recovering.cancel()
        self._fills.cancel()
        with contextlib.suppress(Exception):
            await self._redis.aclose()


def build(
    kind: str, metrics: CacheMetrics, redis_url: str, ttl_s: float, timeout_s: float, retry_s: float, max_bytes: int,
) -> ResultCache | None:
    """kind: auto (Redis if a URL is set, else local), redis, local or off."""
    kind = cache_kind(kind, redis_url, "cache")
    if kind == "off":
        metrics.up.set(0)
        return None
    if kind == "local":
        return LocalCache(metrics, max_bytes)
    return RedisCache(metrics, redis_url, ttl_s, timeout_s, retry_s)


def describe(cache: Any) -> str:
    return {LocalCache: "in-process LRU", RedisCache: "Redis"}.get(type(cache), "off")
