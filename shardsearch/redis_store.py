"""What the two Redis-backed caches (results, embeddings) share: how they connect and how they fill Redis.

A cache must never make a search slow or fail: each call waits at most the cache's timeout, redis-py's own retries
are off (the caches turn themselves off after an error instead), and fills run in the background, a bounded number
at a time (beyond it a fill is dropped: the cache is an optimisation)."""

from __future__ import annotations

import asyncio
from typing import Coroutine, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def connect(url: str, timeout_s: float) -> aioredis.Redis:
    """A client that waits at most `timeout_s` to connect or for a reply, and never retries by itself."""
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


async def set_all(redis: aioredis.Redis, entries: Sequence[tuple[str, bytes]], ttl_ms: int) -> None:
    """Sets every (key, value) with a time to live, in one round trip (a pipeline without a transaction)."""
    if len(entries) == 1:
        key, value = entries[0]
        await redis.set(key, value, px=ttl_ms)
        return
    async with redis.pipeline(transaction=False) as pipe:
        for key, value in entries:
            pipe.set(key, value, px=ttl_ms)
        await pipe.execute()


class Fills:
    """Fire-and-forget cache fills, at most `limit` pending."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    def full(self) -> bool:
        return len(self._tasks) >= self._limit

    def start(self, fill: Coroutine[None, None, None]) -> None:
        """Runs `fill` in the background (check `full()` first: the caller decides what a dropped fill counts as)."""
        task = asyncio.create_task(fill)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
