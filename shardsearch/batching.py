"""Dynamic batching, in the manner of Triton's dynamic batcher, shared by the coordinator and the shard server.

Callers `submit` one request (one or more query rows) under a key; requests with the same key (collection and
compatible options) are gathered into one batch and handed to a `run` coroutine that answers them all with one
shard RPC or one FAISS call. The knobs:

- `max_batch_size`: rows per batch (a single larger request forms a batch of its own);
- `max_queue_delay_us`: how long a request may wait for company while other batches are running. When nothing is in
  flight and nothing waits, a request runs at once in its caller's task (no queue hop), so a lone query under light
  load never waits for the delay; under load,
  batches form naturally while the running ones occupy the `max_in_flight` slots;
- `max_queue_size`: requests allowed to wait; beyond it `submit` fails fast with RESOURCE_EXHAUSTED instead of
  queueing without bound;
- `max_queue_time_ms`: while the oldest waiting request has waited longer than this (plus twice the recent batch
  run time, so one long batch does not count as overload), new ones fail fast with RESOURCE_EXHAUSTED: the queue is
  not draining, the server is past its capacity. This sheds load early, so that
  the requests it does take keep a bounded latency, instead of all of them waiting out their deadlines;
- `max_in_flight`: batches running at once.

A request whose deadline passes while it waits is failed with DEADLINE_EXCEEDED before its batch runs, and a
cancelled caller is skipped, so no compute is spent on answers nobody will read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, Hashable, Sequence, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shardsearch import config, logs, tracing
from shardsearch.errors import DeadlineExceeded, ResourceExhausted

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
QUEUE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class BatchingConfig:
    enabled: bool = True
    """Gather concurrent requests with the same collection and options into one batch; off sends every request on
    its own (still bounded by max_queue_size requests in flight)."""
    max_batch_size: int = 256
    """Query rows per batch."""
    max_queue_delay_us: int = 500
    """Longest a request waits for company while other batches run (never when nothing is in flight); 0 = never
    wait."""
    max_queue_size: int = 4096
    """Requests allowed to wait; beyond it new requests get RESOURCE_EXHAUSTED."""
    max_in_flight: int = 2
    """Batches running at once; 1 lets batches grow with load."""
    max_queue_time_ms: float = 0.0
    """Shed new requests (RESOURCE_EXHAUSTED) while the oldest queued one has waited longer than this: past
    capacity, fail some fast rather than make all of them late. 0 = off (only max_queue_size bounds it)."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue_size < 1 or self.max_in_flight < 1 or self.max_queue_delay_us < 0:
            raise ValueError(f"invalid batching config {self}: sizes must be >= 1 and the delay >= 0")
        if self.max_queue_time_ms < 0:
            raise ValueError(f"invalid batching config {self}: max_queue_time_ms must be >= 0")


# A server config's batching fields and the BatchingConfig field each one sets.
SETTINGS = {
    "batching": "enabled", "batch_max_size": "max_batch_size", "batch_max_queue_delay_us": "max_queue_delay_us",
    "batch_max_queue_size": "max_queue_size", "batch_max_in_flight": "max_in_flight",
    "batch_max_queue_time_ms": "max_queue_time_ms",
}


def settings(unit: str, defaults: BatchingConfig) -> type:
    """A frozen dataclass mixin holding a server config's batching fields (`batching`, `batch_max_size`, ...; see
    SETTINGS) with this server's defaults and BatchingConfig's docs: declared once, here, for both servers."""
    docs = config.settings_help(BatchingConfig)
    fields = []
    for name, knob in SETTINGS.items():
        doc = docs[knob] + (f" A batch is one {unit}." if knob == "enabled" else "")
        fields.append((name, type(getattr(defaults, knob)),
                       dataclasses.field(default=getattr(defaults, knob), metadata={"help": doc})))
    return dataclasses.make_dataclass("BatchSettings", fields, frozen=True)


def from_settings(settings: Any) -> BatchingConfig:
    """The BatchingConfig of a server config made with `settings`."""
    return BatchingConfig(**{knob: getattr(settings, name) for name, knob in SETTINGS.items()})


class BatchMetrics:
    """`<prefix>_batch_size`, `_batch_queue_duration_seconds`, `_batch_compute_duration_seconds`,
    `_batch_queue_depth` and `_batch_rejected_total{reason}` for one tier."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.size = Histogram(
            f"{prefix}_batch_size", "Query rows per dispatched batch.", buckets=BATCH_SIZE_BUCKETS, registry=registry
        )
        self.queue_time = Histogram(
            f"{prefix}_batch_queue_duration_seconds", "Time a request waited in the batch queue before dispatch.",
            buckets=QUEUE_BUCKETS, registry=registry,
        )
        self.compute_time = Histogram(
            f"{prefix}_batch_compute_duration_seconds", "Time to run one batch once dispatched.",
            buckets=QUEUE_BUCKETS, registry=registry,
        )
        self.depth = Gauge(f"{prefix}_batch_queue_depth", "Requests waiting in the batch queue.", registry=registry)
        self.rejected = Counter(
            f"{prefix}_batch_rejected",
            "Requests refused (queue_full, queue_time: the queue is not draining) or dropped unrun (expired).",
            ["reason"], registry=registry,
        )
        for reason in ("queue_full", "queue_time", "expired"):
            self.rejected.labels(reason)


@dataclass(eq=False)
class _Traced:
    """A queued request's trace (only while tracing is on): its span, and the batch that answered it."""

    span: Any
    enqueued_ns: int
    started_ns: int = 0
    ended_ns: int = 0
    batch: Any = None  # the batch's span, in the trace of the batch's first traced request
    first: bool = False  # this request is that one
    attributes: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclass(eq=False)
class _Pending(Generic[Item, Result]):
    item: Item
    rows: int
    deadline: float
    enqueued: float
    future: asyncio.Future[Result]
    request_id: str
    traced: _Traced | None = None


RunBatch = Callable[[Hashable, list[Item], float], Awaitable[Sequence[Result | BaseException]]]
"""run(key, items, timeout) -> one result (or exception) per item, in order; raising fails the whole batch."""


class Batcher(Generic[Item, Result]):
    def __init__(self, name: str, config: BatchingConfig, run: RunBatch, metrics: BatchMetrics) -> None:
        self.name = name
        self.config = config
        self._run = run
        self._metrics = metrics
        self._queues: dict[Hashable, collections.deque[_Pending[Item, Result]]] = {}
        self._queued_rows: dict[Hashable, int] = {}
        self._waiting = 0
        self._in_flight = 0
        self._compute_s = 0.0  # moving average of batch run time
        self._arrival = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def submit(self, key: Hashable, item: Item, rows: int, timeout: float) -> Result:
        """Queues one request and waits for its answer; raises what `run` raised or returned for it."""
        if self._waiting + (0 if self.config.enabled else self._in_flight) >= self.config.max_queue_size:
            self._metrics.rejected.labels("queue_full").inc()
            raise ResourceExhausted(
                f"{self.name} is overloaded: {self.config.max_queue_size} requests already queued; "
                "retry with backoff or add capacity"
            )
        if not self.config.enabled:
            return await self._run_alone(key, item, rows, timeout)
        if not self._waiting and not self._in_flight:
            return await self._run_now(key, item, rows, timeout)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if self.config.max_queue_time_ms and self._waiting:
            waited = now - min((queue[0].enqueued for queue in self._queues.values() if queue), default=now)
            if waited > self.config.max_queue_time_ms / 1000 + 2 * self._compute_s:
                self._metrics.rejected.labels("queue_time").inc()
                raise ResourceExhausted(
                    f"{self.name} is overloaded: its queue is {waited * 1000:.0f} ms behind (limit "
                    f"{self.config.max_queue_time_ms:g} ms); retry with backoff or add capacity"
                )
        span = tracing.current()
        pending: _Pending[Item, Result] = _Pending(
            item, rows, now + timeout, now, loop.create_future(), logs.current_request_id(),
            _Traced(span, tracing.now_ns()) if span is not None else None,
        )
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = collections.deque()
            self._queued_rows[key] = 0
        queue.append(pending)
        self._queued_rows[key] += rows
        self._waiting += 1
        self._metrics.depth.inc()
        self._arrival.set()
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch_forever(), name=f"{self.name}-dispatcher")
        try:
            return await pending.future
        finally:
            if pending.traced is not None:
                self._record_stages(pending.traced)

    def _record_stages(self, traced: _Traced) -> None:
        """The queued request's own spans: its wait, and (unless its trace holds the batch) the batch's time."""
        started = traced.started_ns or tracing.now_ns()
        tracing.record(f"{self.name} queue", traced.enqueued_ns, started, parent=traced.span)
        if traced.batch is not None and not traced.first:
            tracing.record(f"{self.name} batch", started, traced.ended_ns, parent=traced.span, links=[traced.batch],
                           **traced.attributes)

    async def _run_now(self, key: Hashable, item: Item, rows: int, timeout: float) -> Result:
        """The fast path: nothing waits and nothing runs, so the request is a batch of its own, run in the
        caller's task (no queue, no dispatcher or batch task hop). Requests that arrive meanwhile queue up as usual
        and form the next batch."""
        self._in_flight += 1
        self._metrics.size.observe(rows)
        self._metrics.queue_time.observe(0.0)
        started = time.monotonic()
        try:
            with tracing.batch_span(f"{self.name} batch", (tracing.current(),), **_batch_attributes(1, rows)):
                (result,) = await self._run(key, [item], timeout)
        finally:
            self._finished(started)
        if isinstance(result, BaseException):
            raise result
        return result

    async def _run_alone(self, key: Hashable, item: Item, rows: int, timeout: float) -> Result:
        self._in_flight += 1
        started = time.monotonic()
        try:
            self._metrics.size.observe(rows)
            self._metrics.queue_time.observe(0.0)
            with tracing.batch_span(f"{self.name} batch", (tracing.current(),), **_batch_attributes(1, rows)):
                (result,) = await self._run(key, [item], timeout)
        finally:
            self._in_flight -= 1
            self._metrics.compute_time.observe(time.monotonic() - started)
        if isinstance(result, BaseException):
            raise result
        return result

    async def close(self) -> None:
        """Stops dispatching; requests still queued are cancelled."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        for queue in self._queues.values():
            for pending in queue:
                pending.future.cancel()
        self._queues.clear()

    # ---- dispatching ---------------------------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        logs.bind_request_id("")  # this task was started inside some request's context: it works for none
        tracing.detach()  # nor is it part of that request's trace (each batch joins its own: _execute)
        while True:
            if self._in_flight >= self.config.max_in_flight:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            if not self._queues:  # a fast-path request may take the slot while this waits: check both again
                self._arrival.clear()
                await self._arrival.wait()
                continue
            key = min(self._queues, key=lambda k: self._queues[k][0].enqueued)
            if self._in_flight > 0:
                await self._wait_for_company(key)
            batch = self._take(key)
            if batch:
                self._in_flight += 1
                task = asyncio.create_task(self._execute(key, batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _wait_for_company(self, key: Hashable) -> None:
        """Under load, lets the batch fill for up to the queue delay (measured from its oldest request)."""
        delay = self.config.max_queue_delay_us / 1e6
        if delay <= 0:
            return
        queue = self._queues[key]
        while self._queued_rows.get(key, 0) < self.config.max_batch_size:
            remaining = queue[0].enqueued + delay - time.monotonic()
            if remaining <= 0 or self._in_flight == 0:
                return
            self._arrival.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrival.wait(), remaining)

    def _take(self, key: Hashable) -> list[_Pending[Item, Result]]:
        """Pops up to max_batch_size rows (always at least one request), dropping expired and cancelled ones."""
        queue = self._queues[key]
        now = time.monotonic()
        batch: list[_Pending[Item, Result]] = []
        rows = 0
        while queue and (not batch or rows + queue[0].rows <= self.config.max_batch_size):
            pending = queue.popleft()
            self._queued_rows[key] -= pending.rows
            self._waiting -= 1
            self._metrics.depth.dec()
            waited = now - pending.enqueued
            if pending.future.done():  # the caller went away
                continue
            if now >= pending.deadline:
                self._metrics.rejected.labels("expired").inc()
                pending.future.set_exception(DeadlineExceeded(
                    f"deadline passed after {waited * 1e3:.1f} ms in the {self.name} queue; the server is overloaded "
                    "or the deadline is too short"
                ))
                continue
            self._metrics.queue_time.observe(waited)
            batch.append(pending)
            rows += pending.rows
        if not queue:
            del self._queues[key], self._queued_rows[key]
        return batch

    async def _execute(self, key: Hashable, batch: list[_Pending[Item, Result]]) -> None:
        logs.bind_request_id(logs.join_request_ids(p.request_id for p in batch))  # its calls and logs carry them all
        started = time.monotonic()
        rows = sum(p.rows for p in batch)
        self._metrics.size.observe(rows)
        traced = [p.traced for p in batch if p.traced is not None]
        attributes = _batch_attributes(len(batch), rows)
        started_ns = tracing.now_ns() if traced else 0
        span = None
        try:
            with tracing.batch_span(f"{self.name} batch", [t.span for t in traced], **attributes) as span:
                timeout = max(p.deadline for p in batch) - started
                results = await self._run(key, [p.item for p in batch], timeout)
            for pending, result in zip(batch, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)
        except Exception as exc:  # one failure answers the whole batch
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
        finally:
            ended_ns = tracing.now_ns() if traced else 0
            for t in traced:  # read by each request's task when it wakes (_record_stages)
                t.started_ns, t.ended_ns, t.batch, t.attributes = started_ns, ended_ns, span, attributes
                t.first = t is traced[0]
            self._finished(started)

    def _finished(self, started: float) -> None:
        """A batch started at `started` (monotonic) is done: its time is counted and its slot freed."""
        elapsed = time.monotonic() - started
        self._metrics.compute_time.observe(elapsed)
        self._compute_s += 0.2 * (elapsed - self._compute_s)
        self._in_flight -= 1
        self._slot_free.set()
        self._arrival.set()  # a dispatcher waiting for company should go now if nothing else runs


def _batch_attributes(requests: int, rows: int) -> dict[str, int]:
    return {"batch.requests": requests, "batch.rows": rows}
