"""SearchService: the public RPCs, each a few lines over the feature that serves it.

The features live in their own modules: `writes` (collections created and dropped, items upserted, deleted and
read), `listing` (collections, shards, ids page by page), `queries` (the searches), `combine` (SearchCombined),
`embedding` (texts and images to vectors, Encode), `postprocess` (threshold, diversity) and `stream_search`
(StreamSearch's window). Here: the call's deadline becomes the shards' timeout, admission control runs, and
`errors.rpc` maps what a feature raises onto the call's status."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import AsyncIterator, Callable

import grpc

from shardsearch import logs, validation
from shardsearch.coordinator.admission import AdaptiveLimit, admitted
from shardsearch.coordinator.catalog import Catalog
from shardsearch.coordinator.combine import Combiner
from shardsearch.coordinator.embedding import Embedding
from shardsearch.coordinator.listing import Listing
from shardsearch.coordinator.queries import Queries
from shardsearch.coordinator.router import Router
from shardsearch.coordinator.search import Searcher
from shardsearch.coordinator.shards import ShardPool
from shardsearch.coordinator.stream_search import answered
from shardsearch.coordinator.writes import Writes
from shardsearch.encoder_client import Encoders
from shardsearch.errors import DeadlineExceeded, rpc, status_of
from shardsearch.metrics import RpcMetrics
from shardsearch.offload import Offload
from shardsearch.v1 import search_pb2, search_pb2_grpc

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(
        self, pool: ShardPool, router: Router, catalog: Catalog, searcher: Searcher, executor: Executor,
        metrics: RpcMetrics, default_timeout: float, deadline_margin: float,
        limits: validation.Limits = validation.DEFAULT_LIMITS, clock: Callable[[], int] = time.time_ns,
        admission: AdaptiveLimit | None = None, encoders: Encoders | None = None,
    ) -> None:
        run = Offload(executor)
        self.metrics = metrics
        self.admission = admission or AdaptiveLimit(0, 1)
        self._default_timeout = default_timeout
        self._margin = deadline_margin
        self.embedding = Embedding(encoders or Encoders({}, None, None), catalog, run, limits)
        self.writes = Writes(pool, router, catalog, searcher, run, limits, clock, self.embedding)
        self.listing = Listing(pool, router, catalog, limits)
        self.queries = Queries(catalog, searcher, run, limits, self.embedding, self.writes)
        self.combiner = Combiner(catalog, searcher, run, limits, self.queries, self.writes, self.embedding)

    def _timeout(self, context: Context) -> float:
        """Time the shards get: the caller's remaining deadline minus a margin to merge and answer."""
        remaining = context.time_remaining()
        if remaining is None:
            return self._default_timeout
        if remaining <= 0:
            raise DeadlineExceeded("the call's deadline passed before it could be served")
        return max(0.001, min(remaining - self._margin, remaining * 0.9))

    # ---- collections ----------------------------------------------------------------------------------------

    @rpc("CreateCollection")
    async def CreateCollection(
        self, request: search_pb2.CreateCollectionRequest, context: Context
    ) -> search_pb2.CreateCollectionResponse:
        return await self.writes.create_collection(request, self._timeout(context))

    @rpc("DropCollection")
    async def DropCollection(
        self, request: search_pb2.DropCollectionRequest, context: Context
    ) -> search_pb2.DropCollectionResponse:
        return await self.writes.drop_collection(request, self._timeout(context))

    @rpc("ListCollections")
    async def ListCollections(
        self, request: search_pb2.ListCollectionsRequest, context: Context
    ) -> search_pb2.ListCollectionsResponse:
        return await self.listing.collections(self._timeout(context))

    @rpc("DescribeCollection")
    async def DescribeCollection(
        self, request: search_pb2.DescribeCollectionRequest, context: Context
    ) -> search_pb2.DescribeCollectionResponse:
        return await self.listing.describe(request, self._timeout(context))

    # ---- writes and point reads -----------------------------------------------------------------------------

    @rpc("Upsert")
    async def Upsert(self, request: search_pb2.UpsertRequest, context: Context) -> search_pb2.UpsertResponse:
        return await self.writes.upsert(request, self._timeout(context))

    @rpc("Delete")
    async def Delete(self, request: search_pb2.DeleteRequest, context: Context) -> search_pb2.DeleteResponse:
        return await self.writes.delete(request, self._timeout(context))

    @rpc("Get")
    async def Get(self, request: search_pb2.GetRequest, context: Context) -> search_pb2.GetResponse:
        return await self.writes.get(request, self._timeout(context))

    @rpc("ListIds")
    async def ListIds(self, request: search_pb2.ListIdsRequest, context: Context) -> search_pb2.ListIdsResponse:
        return await self.listing.ids(request, self._timeout(context))

    # ---- search ---------------------------------------------------------------------------------------------

    @rpc("Search")
    @admitted()
    async def Search(self, request: search_pb2.SearchRequest, context: Context) -> search_pb2.SearchResponse:
        return await self.queries.one(request, self._timeout(context))

    @rpc("BatchSearch")
    @admitted(signal=False)  # its latency grows with its size: not a load signal
    async def BatchSearch(
        self, request: search_pb2.BatchSearchRequest, context: Context
    ) -> search_pb2.BatchSearchResponse:
        return await self.queries.rows(request, request.vectors, request.vectors_f32, self._timeout(context))

    @rpc("SearchById")
    @admitted()
    async def SearchById(self, request: search_pb2.SearchByIdRequest, context: Context) -> search_pb2.SearchResponse:
        return await self.queries.by_id(request, self._timeout(context))

    @rpc("SearchCombined")
    @admitted(signal=False)  # it runs one search per part: not a load signal
    async def SearchCombined(
        self, request: search_pb2.CombinedSearchRequest, context: Context
    ) -> search_pb2.SearchResponse:
        return await self.combiner.search(request, self._timeout(context))

    @rpc("SearchByText")
    @admitted(signal=False)  # encoding time is not the shards' load
    async def SearchByText(self, request: search_pb2.SearchByTextRequest, context: Context) -> search_pb2.SearchResponse:
        return await self.queries.by_content(request, "text", request.text, self._timeout(context))

    @rpc("SearchByImage")
    @admitted(signal=False)
    async def SearchByImage(
        self, request: search_pb2.SearchByImageRequest, context: Context
    ) -> search_pb2.SearchResponse:
        return await self.queries.by_content(request, "image", request.image, self._timeout(context))

    @rpc("Encode")
    async def Encode(self, request: search_pb2.EncodeRequest, context: Context) -> search_pb2.EncodeResponse:
        return await self.embedding.encode(request, self._timeout(context))

    async def StreamSearch(
        self, request_iterator: AsyncIterator[search_pb2.SearchRequest], context: Context
    ) -> AsyncIterator[search_pb2.StreamSearchResponse]:
        """Each message is searched concurrently and answered as it completes (see stream_search). The stream's
        request id (x-request-id) is bound for its whole life; each message's log lines and access line carry
        `<stream id>/<request_id field>`. A message that does not parse ends the stream as gRPC ends it (it is not
        this servicer's to answer: no handler saw it)."""
        logs.bind_request_id(logs.request_id_from(context.invocation_metadata()))
        peer = context.peer()  # the answering tasks may outlive the call: they must not touch its context

        async def answer(request: search_pb2.SearchRequest) -> search_pb2.StreamSearchResponse:
            return await self._stream_message(request, context, peer)

        async for response in answered(request_iterator, answer):
            yield response

    async def _stream_message(
        self, request: search_pb2.SearchRequest, context: Context, peer: str
    ) -> search_pb2.StreamSearchResponse:
        """One StreamSearch message: counted and logged as a call of its own; a failure is reported in its answer
        (as `errors.rpc` would for a call), and the stream goes on."""
        start = asyncio.get_running_loop().time()
        code = grpc.StatusCode.OK
        self.metrics.inflight.inc()
        if request.request_id:  # this runs in a task of its own: the binding ends with it
            logs.bind_request_id(logs.child_request_id(logs.current_request_id(), request.request_id))
        try:
            with self.admission.admitted(signal=not request.vectors_f32):  # as BatchSearch: by size
                if request.vectors_f32:  # several queries: one BatchSearch
                    batch = await self.queries.stream_rows(request, self._timeout(context))
                    return search_pb2.StreamSearchResponse(request_id=request.request_id, batch=batch)
                response = await self.queries.one(request, self._timeout(context))
            return search_pb2.StreamSearchResponse(request_id=request.request_id, response=response)
        except Exception as exc:
            code, details = status_of(exc, "StreamSearch")
            return search_pb2.StreamSearchResponse(
                request_id=request.request_id, error_code=code.value[0], error_message=details
            )
        finally:
            self.metrics.inflight.dec()
            elapsed = asyncio.get_running_loop().time() - start
            self.metrics.observe_request("StreamSearch", code, elapsed)
            logs.log_access("StreamSearch", code, elapsed, peer)
