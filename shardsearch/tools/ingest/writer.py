"""Writing one batch: the resume check, retries with backoff, and bisection of rejected batches (pure logic over two
coroutines, so it is tested without a server).

- Resume: ids already stored (a `Get`) are skipped, so a run interrupted anywhere can simply be run again.
- Retries: UNAVAILABLE, RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED are retried with exponential backoff and jitter
  (an Upsert is idempotent, so retrying one that was in fact applied is harmless).
- Bisection: INVALID_ARGUMENT means some item is bad, but not which; the batch is split in halves, recursively, until
  each bad item is alone and reported with the server's reason, while the good ones land. One bad item in a batch of
  n costs about 2 log2(n) extra calls.
- Any other error fails the batch's items with its status and message.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Iterator, TypeVar

import grpc

from shardsearch.grpcserver import MAX_MESSAGE_BYTES
from shardsearch.tools.ingest.sources import Record
from shardsearch.v1 import search_pb2

logger = logging.getLogger(__name__)

T = TypeVar("T")
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       grpc.StatusCode.DEADLINE_EXCEEDED})
MAX_BATCH_BYTES = 32 << 20
"""Items per Upsert are also capped by size (image batches), well under the 64 MiB message limit."""
MAX_ITEM_BYTES = MAX_MESSAGE_BYTES - (1 << 20)
"""An item this large cannot be sent at all: it fails locally instead of being retried."""

Upsert = Callable[[list[search_pb2.Item]], Awaitable[None]]
Existing = Callable[[list[str]], Awaitable[set[str]]]


class RpcFailure(Exception):
    """A failed call as the writer sees it: the status code and the server's message (AioRpcError is mapped to it
    at the boundary)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @property
    def reason(self) -> str:
        return f"{self.code.name}: {self.message}"


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5
    """Attempts after the first for a transient error."""
    backoff_s: float = 0.2
    """Delay before the first retry; doubled each time, up to max_backoff_s, then scaled by a random 0.5-1."""
    max_backoff_s: float = 10.0

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)


async def with_retries(call: Callable[[], Awaitable[T]], policy: RetryPolicy) -> T:
    """Awaits `call()`, again after a backoff while it fails with a transient code and retries are left."""
    for attempt in range(policy.retries + 1):
        try:
            return await call()
        except RpcFailure as failure:
            if failure.code not in TRANSIENT or attempt == policy.retries:
                raise
            delay = policy.delay(attempt)
            logger.info("%s; retry %d/%d in %.2fs", failure.reason, attempt + 1, policy.retries, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


@dataclass
class BatchResult:
    """What became of a batch's records: written, skipped (already stored), or failed as (id, reason)."""

    done: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __add__(self, other: BatchResult) -> BatchResult:
        return BatchResult(self.done + other.done, self.skipped + other.skipped, self.failures + other.failures)

    @classmethod
    def failing(cls, records: Iterable[Record], reason: str) -> BatchResult:
        return cls(failures=[(record.id, reason) for record in records])


def batches(records: Iterable[Record], size: int, max_bytes: int = MAX_BATCH_BYTES) -> Iterator[list[Record]]:
    """Groups records in order: at most `size` records and `max_bytes` of items each (a larger item goes alone).

    An id already in the current batch starts a new one (a request may not repeat an id), so with the resume check
    on the first occurrence of an id wins, and with --overwrite the last.
    """
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    batch: list[Record] = []
    ids: set[str] = set()
    nbytes = 0
    for record in records:
        item_bytes = record.item.ByteSize() if record.item is not None else 0
        if batch and (len(batch) >= size or nbytes + item_bytes > max_bytes or record.id in ids):
            yield batch
            batch, ids, nbytes = [], set(), 0
        batch.append(record)
        nbytes += item_bytes
        if record.item is not None:
            ids.add(record.id)
    if batch:
        yield batch


async def write_batch(records: list[Record], upsert: Upsert, existing: Existing | None,
                      policy: RetryPolicy = RetryPolicy()) -> BatchResult:
    """Writes a batch: unreadable and oversized records fail at once, stored ids are skipped (unless `existing` is
    None: --overwrite), the rest are upserted, bisecting on INVALID_ARGUMENT."""
    result = BatchResult()
    sendable = []
    for record in records:
        if record.item is None:
            result.failures.append((record.id, record.error))
        elif record.item.ByteSize() > MAX_ITEM_BYTES:
            result.failures.append((record.id, f"item is {record.item.ByteSize()} bytes, over the "
                                               f"{MAX_ITEM_BYTES}-byte limit of one message"))
        else:
            sendable.append(record)
    if sendable:
        result = result + await _check_and_upsert(sendable, upsert, existing, policy)
    return result


async def _check_and_upsert(records: list[Record], upsert: Upsert, existing: Existing | None,
                            policy: RetryPolicy) -> BatchResult:
    if existing is None:
        return await _upsert_bisecting(records, upsert, policy)
    try:
        present = await with_retries(lambda: existing([record.id for record in records]), policy)
    except RpcFailure as failure:  # e.g. an empty or over-long id makes the whole Get invalid
        if failure.code == grpc.StatusCode.INVALID_ARGUMENT and len(records) > 1:
            half = len(records) // 2
            return (await _check_and_upsert(records[:half], upsert, existing, policy)
                    + await _check_and_upsert(records[half:], upsert, existing, policy))
        return BatchResult.failing(records, failure.reason)
    todo = [record for record in records if record.id not in present]
    result = await _upsert_bisecting(todo, upsert, policy) if todo else BatchResult()
    result.skipped += len(records) - len(todo)
    return result


async def _upsert_bisecting(records: list[Record], upsert: Upsert, policy: RetryPolicy) -> BatchResult:
    try:
        await with_retries(lambda: upsert([record.item for record in records if record.item is not None]), policy)
    except RpcFailure as failure:
        if failure.code == grpc.StatusCode.INVALID_ARGUMENT and len(records) > 1:
            half = len(records) // 2
            return (await _upsert_bisecting(records[:half], upsert, policy)
                    + await _upsert_bisecting(records[half:], upsert, policy))
        return BatchResult.failing(records, failure.reason)
    return BatchResult(done=len(records))
