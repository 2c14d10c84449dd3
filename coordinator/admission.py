"""Adaptive admission: a cap on searches in flight that follows the latency the coordinator can keep.

By Little's law, searches in flight = throughput x latency: past its capacity a server that admits everything only
makes every answer later. The cap grows while searches finish well within `target_s` and is cut by a tenth (at most
once per target interval) when one takes longer (additive increase, multiplicative decrease, as TCP does with its
window). A search arriving at the cap gets RESOURCE_EXHAUSTED at once, costing almost nothing, so past its capacity
the coordinator keeps answering the searches it took at about the target latency and sheds the rest.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any, Awaitable, Callable, Iterator, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from shardsearch.errors import ResourceExhausted

T = TypeVar("T")
INITIAL_LIMIT = 256.0
MIN_LIMIT = 8.0
DECREASE = 0.9


class AdmissionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.limit = Gauge(
            "shardsearch_coordinator_search_concurrency_limit", "Current cap on searches in flight (adaptive).",
            registry=registry,
        )
        self.shed = Counter(
            "shardsearch_coordinator_searches_shed", "Searches refused at the adaptive concurrency cap.",
            registry=registry,
        )


class AdaptiveLimit:
    def __init__(
        self, target_s: float, maximum: int, metrics: AdmissionMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.target_s = target_s
        self.maximum = float(maximum)
        self.limit = min(INITIAL_LIMIT, self.maximum)
        self.inflight = 0
        self._last_cut = 0.0
        self._metrics = metrics
        if metrics is not None:
            metrics.limit.set(self.limit)

    @property
    def enabled(self) -> bool:
        return self.target_s > 0

    def acquire(self) -> float:
        """Admits one search or raises ResourceExhausted; returns its start time for `release`."""
        if self.enabled and self.inflight >= int(self.limit):
            if self._metrics is not None:
                self._metrics.shed.inc()
            raise ResourceExhausted(
                f"coordinator overloaded: {self.inflight} searches in flight, at its adaptive limit (searches are "
                f"kept near {self.target_s * 1000:.0f} ms); retry with backoff or add coordinators"
            )
        self.inflight += 1
        return self._clock()

    def release(self, started: float, signal: bool = True) -> None:
        """Ends a search; `signal` False keeps its latency out of the limit (e.g. a large BatchSearch)."""
        self.inflight -= 1
        if not self.enabled or not signal:
            return
        now = self._clock()
        latency = now - started
        if latency > self.target_s:
            if now - self._last_cut > self.target_s:
                self.limit = max(MIN_LIMIT, self.limit * DECREASE)
                self._last_cut = now
        elif self.inflight + 1 >= self.limit / 2:  # grow only while the cap is actually in use
            self.limit = min(self.maximum, self.limit + (1.0 if latency < self.target_s / 2 else 1.0 / self.limit))
        if self._metrics is not None:
            self._metrics.limit.set(self.limit)

    @contextlib.contextmanager
    def admitted(self, signal: bool = True) -> Iterator[None]:
        """One search admitted for the block's length (`acquire`, then `release` however the block ends)."""
        started = self.acquire()
        try:
            yield
        finally:
            self.release(started, signal)


def admitted(signal: bool = True) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Runs a servicer method admitted by its `admission` (an AdaptiveLimit). `signal` False keeps the method's
    latency out of the limit: a call whose time grows with its size (BatchSearch), with the parts it fuses, or with
    encoding says nothing about the shards' load."""

    def wrap(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def handler(self: Any, *args: Any) -> T:
            with self.admission.admitted(signal):
                return await fn(self, *args)

        return handler

    return wrap
