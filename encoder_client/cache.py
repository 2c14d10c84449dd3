"""Embedding cache: Redis (shared by every coordinator) or an in-process LRU.

Keys are `<prefix>:emb:<model>:<version>:<kind>:<sha256 of the content>` (the normalised text's UTF-8, or the image
bytes); values are the embedding's float32 bytes, exactly as the model returned it. An embedding of one model version
never changes, so entries need no invalidation; the TTL only bounds memory. Redis down or slow means no cache, never a
failed call: lookups and stores time out quickly, and the cache stays off for `retry_s` after an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from shardsearch import redis_store
from shardsearch.config import cache_kind
from shardsearch.lru import ByteLRU

logger = logging.getLogger(__name__)

MAX_PENDING_STORES = 64


def content_key(model_label: str, kind: str, content: bytes) -> str:
    return f"{model_label}:{kind}:{hashlib.sha256(content).hexdigest()}"


class EmbeddingCacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter(
            "shardsearch_encoder_cache_lookups", "Embedding cache lookups, by result (hit, miss, unavailable).",
            ["result"], registry=registry,
        )
        self.errors = Counter(
            "shardsearch_encoder_cache_errors", "Embedding cache calls to Redis that failed, by operation.",
            ["operation"], registry=registry,
        )
        self.up = Gauge(
            "shardsearch_encoder_cache_up", "1 while the embedding cache is in use, 0 while it is off or failing.",
            registry=registry,
        )
        for result in ("hit", "miss", "unavailable"):
            self.lookups.labels(result)
        for operation in ("get", "set"):
            self.errors.labels(operation)
        self.up.set(1)


class EmbeddingCache:
    kind = "off"

    def __init__(self, metrics: EmbeddingCacheMetrics) -> None:
        self.metrics = metrics

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        raise NotImplementedError

    def put_many(self, entries: Sequence[tuple[str, bytes]]) -> None:
        """Stores in the background; never fails the caller."""
        raise NotImplementedError

    async def close(self) -> None:
        pass

    def _count(self, values: Sequence[bytes | None]) -> None:
        hits = sum(v is not None for v in values)
        self.metrics.lookups.labels("hit").inc(hits)
        self.metrics.lookups.labels("miss").inc(len(values) - hits)


class LocalEmbeddingCache(EmbeddingCache):
    kind = "in-process LRU"

    def __init__(self, metrics: EmbeddingCacheMetrics, max_bytes: int) -> None:
        super().__init__(metrics)
        self._entries: ByteLRU[str] = ByteLRU(max_bytes, key_bytes=len)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values = [self._entries.get(key) for key in keys]
        self._count(values)
        return values

    def put_many(self, entries: Sequence[tuple[str, bytes]]) -> None:
        for key, value in entries:
            self._entries.put(key, value)


class RedisEmbeddingCache(EmbeddingCache):
    kind = "Redis"

    def __init__(
        self, metrics: EmbeddingCacheMetrics, url: str, ttl_s: float, timeout_s: float = 0.1, retry_s: float = 1.0,
        prefix: str = "shardsearch:emb:",
    ) -> None:
        super().__init__(metrics)
        self._redis = redis_store.connect(url, timeout_s)
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._timeout = timeout_s
        self._retry_s = retry_s
        self._prefix = prefix
        self._off_until = 0.0
        self._fills = redis_store.Fills(MAX_PENDING_STORES)

    def _available(self) -> bool:
        return time.monotonic() >= self._off_until

    def _trip(self, operation: str, exc: BaseException) -> None:
        self.metrics.errors.labels(operation).inc()
        if self._available():
            logger.warning("embedding cache off for %.1f s: Redis %s failed: %r", self._retry_s, operation, exc)
        self._off_until = time.monotonic() + self._retry_s
        self.metrics.up.set(0)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        if not self._available():
            self.metrics.lookups.labels("unavailable").inc(len(keys))
            return [None] * len(keys)
        try:
            async with asyncio.timeout(self._timeout):
                values = await self._redis.mget([self._prefix + key for key in keys])
        except Exception as exc:
            self._trip("get", exc)
            self.metrics.lookups.labels("unavailable").inc(len(keys))
            return [None] * len(keys)
        self.metrics.up.set(1)
        self._count(values)
        return list(values)

    def put_many(self, entries: Sequence[tuple[str, bytes]]) -> None:
        if not entries or not self._available() or self._fills.full():
            return
        self._fills.start(self._store(list(entries)))

    async def _store(self, entries: list[tuple[str, bytes]]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await redis_store.set_all(self._redis, [(self._prefix + key, value) for key, value in entries],
                                          self._ttl_ms)
        except Exception as exc:
            self._trip("set", exc)

    async def close(self) -> None:
        self._fills.cancel()
        with contextlib.suppress(Exception):
            await self._redis.aclose()


def build(
    kind: str, metrics: EmbeddingCacheMetrics, redis_url: str, ttl_s: float, max_bytes: int, timeout_s: float = 0.1,
    retry_s: float = 1.0,
) -> EmbeddingCache | None:
    """kind: auto (Redis if a URL is set, else local), redis, local or off."""
    kind = cache_kind(kind, redis_url, "embedding_cache")
    if kind == "off":
        metrics.up.set(0)
        return None
    if kind == "local":
        return LocalEmbeddingCache(metrics, max_bytes)
    return RedisEmbeddingCache(metrics, redis_url, ttl_s, timeout_s, retry_s)
