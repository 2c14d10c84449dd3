"""A shard's search path: checks, the dynamic batcher, the inline policy, explain, and one FAISS call per batch.

Concurrent searches go through a dynamic batcher: one FAISS call answers every request queued at that moment with
the same parameters (collection, nprobe, fan-out, what to include, the filter's canonical bytes). A batch of a few
queries whose search was measured to cost less than an executor hop runs on the event loop (`InlinePolicy`); an
`explain` search runs alone, so that what it reports is its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Hashable

import grpc
import numpy as np

from shardsearch import codec, logs, tracing, validation
from shardsearch.batching import Batcher, BatchingConfig, BatchMetrics
from shardsearch.errors import InvalidArgument, status_of
from shardsearch.shard_server.batch_search import search_batch
from shardsearch.shard_server.core import ShardCore
from shardsearch.shard_server.index import Collection
from shardsearch.shard_server.inline import InlinePolicy
from shardsearch.v1 import search_pb2, shard_pb2

DEFAULT_TIMEOUT_S = 30.0  # for a search whose caller set no deadline

Item = tuple[np.ndarray, int, Any]  # queries, k, filter


class ShardQueries:
    def __init__(self, core: ShardCore, batching: BatchingConfig, batch_metrics: BatchMetrics,
                 inline_search: bool = False) -> None:
        self._core = core
        self._run = core.run
        self._batcher: Batcher[Item, shard_pb2.ShardSearchResponse] = Batcher(
            "shard batcher", batching, self._run_batch, batch_metrics
        )
        self._inline = InlinePolicy(enabled=inline_search and not core.use_gpu)

    async def close(self) -> None:
        await self._batcher.close()

    async def search(self, request: shard_pb2.ShardSearchRequest, timeout: float) -> shard_pb2.ShardSearchResponse:
        self._core.layout.check(request.topology_version)
        coll = self._core.collection(request.collection, read=True)
        queries = codec.unpack(request.queries_f32, coll.dim, "queries_f32")
        if queries.shape[0] != request.n:
            raise InvalidArgument(f"queries_f32: holds {queries.shape[0]} queries, n says {request.n}")
        validation.check_query_count(request.n)
        validation.check_search(request.k, request.nprobe)
        flt = request.filter if request.HasField("filter") else None
        if request.explain:
            return await self._explained(coll, request, queries, flt, timeout)
        # Only searches with the same filter share a FAISS call: the key holds its canonical bytes.
        key = (coll, request.nprobe, shards_reached(request), request.include_payload, request.include_fields,
               flt.SerializeToString(deterministic=True) if flt is not None else b"")
        self._inline.arrival(busy=bool(self._batcher.waiting or self._batcher.in_flight))
        return await self._batcher.submit(key, (queries, request.k, flt), queries.shape[0], timeout)

    async def stream_message(
        self, message: shard_pb2.ShardSearchStreamRequest, into: shard_pb2.ShardSearchResponse
    ) -> tuple[int, str]:
        """One SearchStream message's search, as `errors.rpc` runs a unary call (its own deadline, request id,
        metrics and access line): its status code and message."""
        metrics = self._core.metrics
        start = time.perf_counter()
        code, details = grpc.StatusCode.OK, ""
        metrics.inflight.inc()
        bound = logs.bind_request_id(logs.request_id_from(((logs.REQUEST_ID_HEADER, message.request_id),)))
        try:
            into.CopyFrom(await self.search(message.request, message.timeout_s or DEFAULT_TIMEOUT_S))
        except Exception as exc:
            code, details = status_of(exc, "Search")
        finally:
            elapsed = time.perf_counter() - start
            metrics.inflight.dec()
            metrics.observe_request("Search", code, elapsed)
            logs.log_access("Search", code, elapsed, "stream")
            logs.unbind_request_id(bound)
        return code.value[0], details

    async def _explained(self, coll: Collection, request: shard_pb2.ShardSearchRequest, queries: np.ndarray,
                         flt: Any, timeout: float) -> shard_pb2.ShardSearchResponse:
        submitted = time.perf_counter()
        stats: dict[str, Any] = {}

        def run() -> tuple[shard_pb2.ShardSearchResponse, float, float]:
            started = time.perf_counter()
            (response,) = search_batch(coll, [(queries, request.k, flt)], request.nprobe, request.include_payload,
                                        request.include_fields, explain=stats, shards=shards_reached(request))
            if isinstance(response, BaseException):
                raise response
            return response, started - submitted, time.perf_counter() - started

        response, queued, searched = await asyncio.wait_for(self._run(run), timeout)
        response.explain.CopyFrom(search_pb2.ShardExplain(queued_seconds=queued, search_seconds=searched, **stats))
        return response

    async def _run_batch(self, key: Hashable, items: list[Item], timeout: float) -> list[shard_pb2.ShardSearchResponse]:
        coll, nprobe, shards, include_payload, include_fields, flt = key  # type: ignore[misc]
        rows = sum(queries.shape[0] for queries, _, _ in items)
        timing: list[int] | None = [] if tracing.current() is not None else None  # the FAISS call's span, traced
        responses = await self._search_rows(coll, items, nprobe, shards, include_payload, include_fields, flt, rows,
                                            timing)
        if timing:
            tracing.record("faiss", timing[0], timing[1], **{"faiss.rows": rows, "faiss.nprobe": nprobe,
                                                               "faiss.filtered": bool(flt)})
        return responses

    async def _search_rows(
        self, coll: Collection, items: list[Item], nprobe: int, shards: int, include_payload: bool,
        include_fields: bool, flt: Any, rows: int, timing: list[int] | None,
    ) -> list[shard_pb2.ShardSearchResponse]:
        plain = not (include_payload or include_fields or flt)  # what the inline path serves and is measured on
        if plain and self._inline.allows(coll, rows):
            started = time.thread_time()
            responses = search_batch(coll, items, nprobe, False, False, wait=False, timing=timing, shards=shards)
            self._inline.ran_inline()
            if responses is not None:  # None: a write or maintenance holds the collection; wait in the executor
                self._inline.record(coll, rows, time.thread_time() - started)
                return responses
        return await self._run(self._timed_search_batch, coll, items, nprobe, shards, include_payload,
                               include_fields, rows if plain else 0, timing)

    def _timed_search_batch(
        self, coll: Collection, items: list[Item], nprobe: int, shards: int, include_payload: bool,
        include_fields: bool, rows: int, timing: list[int] | None,
    ) -> list[shard_pb2.ShardSearchResponse]:
        """`search_batch` in the executor; its CPU time is recorded for the inline policy when `rows` (0: a batch
        the inline path would not serve)."""
        started = time.thread_time()
        responses = search_batch(coll, items, nprobe, include_payload, include_fields, timing=timing, shards=shards)
        assert responses is not None
        if rows:
            self._inline.record(coll, rows, time.thread_time() - started)
        return responses


def shards_reached(request: shard_pb2.ShardSearchRequest) -> int:
    """How many shards the search reached (an older coordinator's `shards`, sent with --refine-share, counts)."""
    return max(request.shards_searched or request.shards, 1)
