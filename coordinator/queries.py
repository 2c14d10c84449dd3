"""Search requests: their options validated, one query or many searched through the Searcher (cache, batching,
fan-out, merge), and the merged hits finished (threshold, diversity). Search, BatchSearch, StreamSearch,
SearchById, SearchByText and SearchByImage share this."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from shardsearch import codec, validation
from shardsearch.coordinator.catalog import Catalog
from shardsearch.coordinator.diversity import depth as diversity_depth
from shardsearch.coordinator.embedding import Embedding
from shardsearch.coordinator.postprocess import finish, finish_all, leave_out
from shardsearch.coordinator.router import remaining
from shardsearch.coordinator.search import Searcher, SearchOptions
from shardsearch.coordinator.writes import Writes
from shardsearch.errors import InvalidArgument
from shardsearch.offload import Offload
from shardsearch.v1 import search_pb2


class Queries:
    def __init__(
        self, catalog: Catalog, searcher: Searcher, run: Offload, limits: validation.Limits, embedding: Embedding,
        writes: Writes,
    ) -> None:
        self._catalog = catalog
        self._searcher = searcher
        self._run = run
        self._limits = limits
        self._embedding = embedding
        self._writes = writes

    def options(self, request: Any) -> SearchOptions:
        """A request's search options, validated; `k` is the caller's (see depth for what the shards are asked)."""
        validation.check_search(request.k, request.nprobe, self._limits)
        flt = b""
        if request.HasField("filter"):
            validation.check_filter(request.filter, "filter", self._limits)
            flt = request.filter.SerializeToString(deterministic=True)
        diverse = request.HasField("diversity")
        if diverse:
            validation.check_diversity(request.diversity, "diversity", self._limits)
        return SearchOptions(
            k=request.k, nprobe=request.nprobe,
            allow_partial=request.partial_policy == search_pb2.PARTIAL_POLICY_ALLOW,
            include_payload=request.include_payload, min_shards=request.min_shards,
            filter=flt, include_fields=request.include_payload or diverse,
        )

    def depth(self, request: Any, k: int) -> int:
        """Hits to search for to answer with k: k, or with diversity the deeper list its walk needs."""
        return diversity_depth(k, self._limits.max_k) if request.HasField("diversity") else k

    async def one(self, request: search_pb2.SearchRequest, timeout: float) -> search_pb2.SearchResponse:
        """A Search (or a StreamSearch message with one query)."""
        if request.vectors_f32:
            raise InvalidArgument("vectors_f32: Search takes one query (vector or vector_f32); several go in one "
                                  "BatchSearch, or in one StreamSearch message")
        spec = await self._catalog.get(request.collection, timeout)
        query = codec.one_vector(request.vector, request.vector_f32, spec.dim, "vector")
        return await self.vector(spec, query, request, timeout)

    async def vector(
        self, spec: search_pb2.Collection, query: np.ndarray, request: Any, timeout: float
    ) -> search_pb2.SearchResponse:
        """One query vector, with a request's options (Search, SearchByText, SearchByImage share them)."""
        opts = self.options(request)
        explain = search_pb2.Explain() if getattr(request, "explain", False) else None
        outcome = await self._searcher.search(
            spec, query.reshape(1, -1), replace(opts, k=self.depth(request, opts.k)), timeout,
            use_cache=not request.skip_cache, explain=explain,
        )
        response = outcome.results[0]
        response.request_id = request.request_id
        finish(response, request, spec.metric, opts.k)
        if explain is not None:
            response.explain.CopyFrom(explain)
        return response

    async def rows(self, request: Any, vectors: Sequence[float], packed: bytes,
                   timeout: float) -> search_pb2.BatchSearchResponse:
        """Many queries with one request's options: a BatchSearch, or a StreamSearch message's vectors_f32."""
        spec = await self._catalog.get(request.collection, timeout)
        opts = self.options(request)
        queries = await self._run(codec.many_vectors, vectors, packed, spec.dim, "vectors")
        n = queries.shape[0]
        validation.check_query_count(n, self._limits, k=opts.k)
        searched = self.depth(request, opts.k)
        if n * searched > self._limits.max_hits:
            raise InvalidArgument(
                f"vectors, diversity: {n} queries x {searched} hits searched for diversity at k {opts.k} exceeds the "
                f"maximum of {self._limits.max_hits} results per request (send at most "
                f"{self._limits.max_hits // searched} queries per call)"
            )
        outcome = await self._searcher.search(
            spec, queries, replace(opts, k=searched), timeout, use_cache=not request.skip_cache
        )
        if request.HasField("score_threshold") or request.HasField("diversity"):
            await self._run(finish_all, outcome.results, request, spec.metric, opts.k)
        return search_pb2.BatchSearchResponse(
            results=outcome.results, partial=bool(outcome.missing), missing_shards=outcome.missing
        )

    async def stream_rows(self, request: search_pb2.SearchRequest, timeout: float) -> search_pb2.BatchSearchResponse:
        """A StreamSearch message with several queries (vectors_f32), searched as one BatchSearch."""
        if request.vector or request.vector_f32:
            raise InvalidArgument("vectors_f32: a message holds either one query (vector, vector_f32) or several "
                                  "(vectors_f32), not both")
        if request.explain:
            raise InvalidArgument("explain: explains one query; send it in a message of its own (vector_f32)")
        return await self.rows(request, (), request.vectors_f32, timeout)

    async def by_id(self, request: search_pb2.SearchByIdRequest, timeout: float) -> search_pb2.SearchResponse:
        """The neighbours of a stored item (the item itself left out)."""
        spec = await self._catalog.get(request.collection, timeout)
        validation.check_ids([request.id], "id", self._limits)
        opts = self.options(request)
        if opts.k >= self._limits.max_k:  # one more is searched for, the item itself
            raise InvalidArgument(f"k: {opts.k} must be below {self._limits.max_k} for SearchById")
        query = await self._writes.stored_vector(spec, request.id, timeout)
        searched = min(self._limits.max_k, self.depth(request, opts.k) + 1)
        outcome = await self._searcher.search(
            spec, query.reshape(1, -1), replace(opts, k=searched), timeout, use_cache=not request.skip_cache
        )
        response = outcome.results[0]
        leave_out(response, {request.id}, searched if request.HasField("diversity") else opts.k)
        response.request_id = request.request_id
        finish(response, request, spec.metric, opts.k)
        return response

    async def by_content(self, request: Any, kind: str, content: Any, timeout: float) -> search_pb2.SearchResponse:
        """SearchByText, SearchByImage: the content embedded as the collection stores it, then searched."""
        deadline = time.monotonic() + timeout
        spec = await self._catalog.get(request.collection, timeout)
        self.options(request)  # bad k or nprobe fail before any encoding
        vectors, _ = await self._embedding.embed(spec, kind, [content], [kind], timeout)
        return await self.vector(spec, vectors[0], request, remaining(deadline))
