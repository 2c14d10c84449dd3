"""SearchService RPCs: validate, route (ring) or fan out (Searcher), map errors. Heavy work goes to the executor."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import time
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable, Sequence, TypeVar

import grpc
import numpy as np

from coordinator.admission import AdaptiveLimit
from coordinator.catalog import Catalog
from coordinator.diversity import depth as diversity_depth
from coordinator.diversity import diversify, strip_fields
from coordinator.router import Router, remaining
from coordinator.search import Searcher, SearchOptions
from coordinator.shards import Outcome, ShardPool
from encoder_client import Encoders
from shardsearch import codec, logs, topology, validation
from shardsearch.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ShardSearchError,
    rpc,
)
from shardsearch.metrics import RpcMetrics
from shardsearch.v1 import search_pb2, search_pb2_grpc, shard_pb2

logger = logging.getLogger(__name__)

T = TypeVar("T")
STREAM_WINDOW = 64  # requests of one StreamSearch processed concurrently
DEFAULT_PAGE_SIZE = 1000
MAX_COMBINED_PARTS = 64
RRF_K = 60  # the usual reciprocal rank fusion constant (Cormack et al., 2009)
RRF_MIN_DEPTH = 20  # each part's list is at least this deep, else 2 x the hits wanted
PAGE_TOKEN_VERSION = 2  # 2: tokens name the ring layout's version (1 named the shard count)


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(
        self, pool: ShardPool, router: Router, catalog: Catalog, searcher: Searcher, executor: Executor,
        metrics: RpcMetrics, default_timeout: float, deadline_margin: float,
        limits: validation.Limits = validation.DEFAULT_LIMITS, clock: Callable[[], int] = time.time_ns,
        admission: AdaptiveLimit | None = None, encoders: Encoders | None = None,
    ) -> None:
        self._clock = clock
        self._encoders = encoders or Encoders({}, None, None)
        self._admission = admission or AdaptiveLimit(0, 1)
        self._pool = pool
        self._router = router
        self._catalog = catalog
        self._searcher = searcher
        self._executor = executor
        self.metrics = metrics
        self._default_timeout = default_timeout
        self._margin = deadline_margin
        self._limits = limits

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        """Time the shards get: the caller's remaining deadline minus a margin to merge and answer."""
        remaining = context.time_remaining()
        if remaining is None:
            return self._default_timeout
        if remaining <= 0:
            raise DeadlineExceeded("the call's deadline passed before it could be served")
        return max(0.001, min(remaining - self._margin, remaining * 0.9))

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _invalidate(self, collection: str, outcomes: Sequence[Outcome]) -> None:
        """After any shard applied a write (even if others failed), cached answers for the collection are dead."""
        cache = self._searcher.cache
        if cache is not None and any(o.ok for o in outcomes):
            await cache.invalidate(collection)

    def _raise_write_failure(self, collection: str, outcomes: Sequence[Outcome], what: str) -> None:
        failed = [o for o in outcomes if not o.ok]
        if not failed:
            return
        for outcome in failed:
            assert outcome.error is not None
            if outcome.error.code == grpc.StatusCode.NOT_FOUND:
                self._catalog.forget(collection)
                raise NotFound(f"collection {collection!r} does not exist")
        error = failed[0].error
        assert error is not None
        raise ShardSearchError(
            f"{what} reached {len(outcomes) - len(failed)} of {len(outcomes)} owning shards; {error} "
            "(retrying the whole call is safe)", error.code,
        )

    # ---- collections ----------------------------------------------------------------------------------------

    @rpc("CreateCollection")
    async def CreateCollection(self, request: search_pb2.CreateCollectionRequest, context: Any) -> Any:
        spec = search_pb2.Collection(name=request.name, dim=request.dim, metric=request.metric, index=request.index)
        validation.check_collection(spec, self._limits)
        outcomes = await self._pool.write_broadcast(
            "CreateCollection", shard_pb2.ShardCreateCollectionRequest(collection=spec), self._timeout(context),
            every_replica=True, benign=grpc.StatusCode.ALREADY_EXISTS,
        )
        await self._invalidate(spec.name, outcomes)
        exists = [o for o in outcomes if o.error is not None and o.error.code == grpc.StatusCode.ALREADY_EXISTS]
        if len(exists) == len(outcomes):
            raise AlreadyExists(f"collection {spec.name!r} already exists")
        failed = [o for o in outcomes if not o.ok and o not in exists]
        if failed:
            raise ShardSearchError(
                f"collection {spec.name!r} is on {len(outcomes) - len(failed)} of {len(outcomes)} shards; "
                f"{failed[0].error} (retry CreateCollection to finish)", failed[0].error.code,  # type: ignore[union-attr]
            )
        self._catalog.put(spec)
        return search_pb2.CreateCollectionResponse(collection=spec)

    @rpc("DropCollection")
    async def DropCollection(self, request: search_pb2.DropCollectionRequest, context: Any) -> Any:
        outcomes = await self._pool.write_broadcast(
            "DropCollection", shard_pb2.ShardDropCollectionRequest(name=request.name), self._timeout(context),
            every_replica=True, benign=grpc.StatusCode.NOT_FOUND,
        )
        self._catalog.forget(request.name)
        await self._invalidate(request.name, outcomes)
        missing = [o for o in outcomes if o.error is not None and o.error.code == grpc.StatusCode.NOT_FOUND]
        if len(missing) == len(outcomes):
            raise NotFound(f"collection {request.name!r} does not exist")
        failed = [o for o in outcomes if not o.ok and o not in missing]
        if failed:
            raise ShardSearchError(
                f"collection {request.name!r} was dropped on {len(outcomes) - len(failed)} of {len(outcomes)} "
                f"shards; {failed[0].error} (retry DropCollection to finish)", failed[0].error.code,  # type: ignore[union-attr]
            )
        return search_pb2.DropCollectionResponse()

    @rpc("ListCollections")
    async def ListCollections(self, request: search_pb2.ListCollectionsRequest, context: Any) -> Any:
        return search_pb2.ListCollectionsResponse(collections=await self._catalog.refresh(self._timeout(context)))

    @rpc("DescribeCollection")
    async def DescribeCollection(self, request: search_pb2.DescribeCollectionRequest, context: Any) -> Any:
        timeout = self._timeout(context)
        spec = await self._catalog.get(request.name, timeout)
        outcomes = await self._pool.broadcast("Stats", shard_pb2.ShardStatsRequest(collection=spec.name), timeout)
        shards = []
        for outcome in outcomes:
            info = search_pb2.ShardInfo()
            if outcome.ok:
                info.CopyFrom(outcome.response.info)
            else:
                info.error = str(outcome.error)
            info.shard = outcome.shard.name
            info.address = outcome.replica.address if outcome.replica is not None else outcome.shard.address
            shards.append(info)
        if all(o.error is not None and o.error.code == grpc.StatusCode.NOT_FOUND for o in outcomes):
            self._catalog.forget(spec.name)
            raise NotFound(f"collection {spec.name!r} does not exist")
        return search_pb2.DescribeCollectionResponse(
            collection=spec, shards=shards, total_vectors=sum(s.vectors for s in shards)
        )

    # ---- writes and point reads -----------------------------------------------------------------------------

    @rpc("Upsert")
    async def Upsert(self, request: search_pb2.UpsertRequest, context: Any) -> Any:
        timeout = self._timeout(context)
        deadline = time.monotonic() + timeout
        spec = await self._catalog.get(request.collection, timeout)
        embedded = await self._embed_items(spec, request.items, timeout)
        version = self._clock()

        async def attempt(timeout: float) -> list[Outcome]:
            routed = await self._run(route_items, request, spec, self._router, self._limits, version, embedded)
            return await self._pool.write_fan_out("Upsert", routed, timeout, version=version)

        outcomes = await self._router.routed(attempt, deadline)
        await self._invalidate(spec.name, outcomes)
        self._raise_write_failure(spec.name, outcomes, "upsert")
        return search_pb2.UpsertResponse(upserted=sum(o.response.upserted for o in outcomes))

    @rpc("Delete")
    async def Delete(self, request: search_pb2.DeleteRequest, context: Any) -> Any:
        timeout = self._timeout(context)
        spec = await self._catalog.get(request.collection, timeout)
        ids = list(request.ids)
        validation.check_ids(ids, "ids", self._limits)
        version = self._clock()
        deadline = time.monotonic() + timeout

        async def attempt(timeout: float) -> list[Outcome]:
            routed = [
                (shard, shard_pb2.ShardDeleteRequest(
                    collection=spec.name, ids=[ids[i] for i in rows], version=version,
                    topology_version=self._router.version,
                ))
                for shard, rows in self._router.write_groups(ids)
            ]
            return await self._pool.write_fan_out("Delete", routed, timeout, version=version)

        outcomes = await self._router.routed(attempt, deadline)
        await self._invalidate(spec.name, outcomes)
        self._raise_write_failure(spec.name, outcomes, "delete")
        return search_pb2.DeleteResponse(deleted=sum(o.response.deleted for o in outcomes))

    @rpc("Get")
    async def Get(self, request: search_pb2.GetRequest, context: Any) -> Any:
        timeout = self._timeout(context)
        spec = await self._catalog.get(request.collection, timeout)
        ids = list(request.ids)
        validation.check_ids(ids, "ids", self._limits)
        outcomes = await self._get(spec, ids, timeout)
        found: dict[str, search_pb2.Item] = {}
        row = 4 * spec.dim
        for outcome in outcomes:
            r = outcome.response
            with_fields = len(r.fields) == len(r.ids)
            for i, item_id in enumerate(r.ids):
                found[item_id] = item = search_pb2.Item(
                    id=item_id, vector_f32=r.vectors_f32[i * row : (i + 1) * row], payload=r.payloads[i]
                )
                if with_fields:
                    item.fields.MergeFrom(r.fields[i].values)
        return search_pb2.GetResponse(items=[found[i] for i in dict.fromkeys(ids) if i in found])

    async def _get(self, spec: search_pb2.Collection, ids: list[str], timeout: float) -> list[Outcome]:
        """Reads items by id from their owners (any replica); raises unless every owner answered."""

        async def attempt(timeout: float) -> list[Outcome]:
            routed = [
                (shard, shard_pb2.ShardGetRequest(collection=spec.name, ids=group, topology_version=self._router.version))
                for shard, group in self._router.read_groups(ids)
            ]
            return await self._pool.fan_out("Get", routed, timeout)

        outcomes = await self._router.routed(attempt, time.monotonic() + timeout)
        self._raise_write_failure(spec.name, outcomes, "get")
        return outcomes

    # ---- search ---------------------------------------------------------------------------------------------

    async def _search_one(self, request: search_pb2.SearchRequest, timeout: float) -> search_pb2.SearchResponse:
        if request.vectors_f32:
            raise InvalidArgument("vectors_f32: Search takes one query (vector or vector_f32); several go in one "
                                  "BatchSearch, or in one StreamSearch message")
        spec = await self._catalog.get(request.collection, timeout)
        query = codec.one_vector(request.vector, request.vector_f32, spec.dim, "vector")
        return await self._search_vector(spec, query, request, timeout)

    async def _search_vector(
        self, spec: search_pb2.Collection, query: np.ndarray, request: Any, timeout: float
    ) -> search_pb2.SearchResponse:
        """One query vector, with a request's options (Search, SearchByText, SearchByImage share them)."""
        opts = self._options(request)
        explain = search_pb2.Explain() if getattr(request, "explain", False) else None
        outcome = await self._searcher.search(
            spec, query.reshape(1, -1), replace(opts, k=self._depth(request, opts.k)), timeout,
            use_cache=not request.skip_cache, explain=explain,
        )
        response = outcome.results[0]
        response.request_id = request.request_id
        finish(response, request, spec.metric, opts.k)
        if explain is not None:
            response.explain.CopyFrom(explain)
        return response

    def _options(self, request: Any) -> SearchOptions:
        """A request's search options, validated; `k` is the caller's (see _depth for what the shards are asked)."""
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

    def _depth(self, request: Any, k: int) -> int:
        """Hits to search for to answer with k: k, or with diversity the deeper list its walk needs."""
        return diversity_depth(k, self._limits.max_k) if request.HasField("diversity") else k

    @rpc("Search")
    async def Search(self, request: search_pb2.SearchRequest, context: Any) -> Any:
        started = self._admission.acquire()
        try:
            return await self._search_one(request, self._timeout(context))
        finally:
            self._admission.release(started)

    @rpc("BatchSearch")
    async def BatchSearch(self, request: search_pb2.BatchSearchRequest, context: Any) -> Any:
        started = self._admission.acquire()
        try:
            return await self._batch_search(request, context)
        finally:
            self._admission.release(started, signal=False)  # its latency grows with its size: not a load signal

    async def _batch_search(self, request: search_pb2.BatchSearchRequest, context: Any) -> Any:
        return await self._search_rows(request, request.vectors, request.vectors_f32, self._timeout(context))

    async def _search_rows(self, request: Any, vectors: Sequence[float], packed: bytes,
                           timeout: float) -> search_pb2.BatchSearchResponse:
        """Many queries with one request's options: a BatchSearch, or a StreamSearch message's vectors_f32."""
        spec = await self._catalog.get(request.collection, timeout)
        opts = self._options(request)
        queries = await self._run(codec.many_vectors, vectors, packed, spec.dim, "vectors")
        n = queries.shape[0]
        validation.check_query_count(n, self._limits, k=opts.k)
        searched = self._depth(request, opts.k)
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

    @rpc("SearchById")
    async def SearchById(self, request: search_pb2.SearchByIdRequest, context: Any) -> Any:
        started = self._admission.acquire()
        try:
            return await self._search_by_id(request, self._timeout(context))
        finally:
            self._admission.release(started)

    async def _search_by_id(self, request: search_pb2.SearchByIdRequest, timeout: float) -> search_pb2.SearchResponse:
        spec = await self._catalog.get(request.collection, timeout)
        validation.check_ids([request.id], "id", self._limits)
        opts = self._options(request)
        if opts.k >= self._limits.max_k:  # one more is searched for, the item itself
            raise InvalidArgument(f"k: {opts.k} must be below {self._limits.max_k} for SearchById")
        query = await self._stored_vector(spec, request.id, timeout)
        searched = min(self._limits.max_k, self._depth(request, opts.k) + 1)
        outcome = await self._searcher.search(
            spec, query.reshape(1, -1), replace(opts, k=searched), timeout, use_cache=not request.skip_cache
        )
        response = outcome.results[0]
        leave_out(response, {request.id}, searched if request.HasField("diversity") else opts.k)
        response.request_id = request.request_id
        finish(response, request, spec.metric, opts.k)
        return response

    async def _stored_vector(self, spec: search_pb2.Collection, item_id: str, timeout: float) -> np.ndarray:
        """The vector stored for `item_id`, from the shard that owns it (any of its replicas)."""
        outcome = (await self._get(spec, [item_id], timeout))[0]
        if not outcome.response.ids:
            raise NotFound(f"collection {spec.name!r} has no item {item_id!r}")
        return codec.unpack(outcome.response.vectors_f32, spec.dim)[0]

    @rpc("SearchCombined")
    async def SearchCombined(self, request: search_pb2.CombinedSearchRequest, context: Any) -> Any:
        started = self._admission.acquire()
        try:
            return await self._search_combined(request, self._timeout(context))
        finally:
            self._admission.release(started, signal=False)  # RRF runs one search per part: not a load signal

    async def _search_combined(
        self, request: search_pb2.CombinedSearchRequest, timeout: float
    ) -> search_pb2.SearchResponse:
        deadline = time.monotonic() + timeout
        spec = await self._catalog.get(request.collection, timeout)
        opts = self._options(request)
        parts = list(request.queries)
        if not 1 <= len(parts) <= MAX_COMBINED_PARTS:
            raise InvalidArgument(f"queries: {len(parts)} parts; between 1 and {MAX_COMBINED_PARTS} are allowed")
        weights = np.array([check_weight(part.weight, i) for i, part in enumerate(parts)], dtype=np.float64)
        vectors = await self._part_vectors(spec, parts, timeout)
        timeout = remaining(deadline)
        exclude = set() if request.include_query_items else {p.id for p in parts if p.WhichOneof("query") == "id"}
        wanted = opts.k + len(exclude)
        if wanted > self._limits.max_k:
            raise InvalidArgument(f"k: {opts.k} plus {len(exclude)} query items to leave out exceeds {self._limits.max_k}")
        use_cache = not request.skip_cache
        listed = self._depth(request, opts.k)  # the result list before diversity (k without it)
        if request.combine in (search_pb2.COMBINE_UNSPECIFIED, search_pb2.COMBINE_MEAN):
            query = await self._run(mean_query, vectors, weights, spec.metric)
            searched = min(self._limits.max_k, listed + len(exclude))
            outcome = await self._searcher.search(spec, query, replace(opts, k=searched), timeout, use_cache=use_cache)
            response = outcome.results[0]
            leave_out(response, exclude, listed)
            metric = spec.metric
        elif request.combine == search_pb2.COMBINE_RRF:
            depth = min(self._limits.max_k, max(2 * (listed + len(exclude)), RRF_MIN_DEPTH))
            outcome = await self._searcher.search(spec, vectors, replace(opts, k=depth), timeout, use_cache=use_cache)
            response = await self._run(fuse_rrf, outcome.results, weights, listed, exclude)
            response.partial = bool(outcome.missing)
            response.missing_shards.extend(outcome.missing)
            metric = search_pb2.METRIC_INNER_PRODUCT  # fused scores: larger is better
        else:
            raise InvalidArgument(f"combine: {request.combine} is not a Combine value")
        response.request_id = request.request_id
        finish(response, request, metric, opts.k)
        return response

    async def _part_vectors(
        self, spec: search_pb2.Collection, parts: list[search_pb2.WeightedQuery], timeout: float
    ) -> np.ndarray:
        """The query vector of each part: given, or read from the shard owning the item."""
        vectors = np.empty((len(parts), spec.dim), dtype=np.float32)
        by_id: dict[str, list[int]] = {}
        content: dict[str, list[int]] = {"text": [], "image": []}
        for i, part in enumerate(parts):
            kind = part.WhichOneof("query")
            if kind == "vector_f32":
                vectors[i] = codec.one_vector((), part.vector_f32, spec.dim, f"queries[{i}].vector")
            elif kind == "id":
                by_id.setdefault(part.id, []).append(i)
            elif kind in content:
                content[kind].append(i)
            else:
                raise InvalidArgument(f"queries[{i}]: set vector_f32, id, text or image")
        deadline = time.monotonic() + timeout
        for kind, indices in content.items():
            if indices:
                embedded, _ = await self._embed(
                    spec, kind, [getattr(parts[i], kind) for i in indices], [f"queries[{i}].{kind}" for i in indices],
                    remaining(deadline),
                )
                vectors[indices] = embedded
        timeout = remaining(deadline)
        if by_id:
            ids = list(by_id)
            validation.check_ids(ids, "queries.id", self._limits)
            outcomes = await self._get(spec, ids, timeout)
            found = set()
            for outcome in outcomes:
                stored = codec.unpack(outcome.response.vectors_f32, spec.dim)
                for row, item_id in enumerate(outcome.response.ids):
                    vectors[by_id[item_id]] = stored[row]
                    found.add(item_id)
            missing = [i for i in ids if i not in found]
            if missing:
                raise NotFound(f"collection {spec.name!r} has no item {', '.join(map(repr, missing[:5]))}")
        return vectors

    # ---- encoder: search by text or image, embeddings ---------------------------------------------------------

    async def _embed(
        self, spec: search_pb2.Collection | None, kind: str, values: Sequence[Any], field: str | Sequence[str],
        timeout: float,
    ) -> tuple[np.ndarray, list[bool]]:
        """Embeddings as `spec` stores them: its dimension checked, L2-normalised for METRIC_INNER_PRODUCT."""
        encoder = self._encoders.get(kind)
        if spec is not None and encoder.dim != spec.dim:
            raise FailedPrecondition(
                f"collection {spec.name!r} has dim {spec.dim}, but the {kind} model {encoder.info.label} makes "
                f"{encoder.dim}-d embeddings; create the collection with dim {encoder.dim} to use it"
            )
        encoded = await encoder.encode(values, field, timeout)
        vectors = encoded.vectors
        if spec is not None and spec.metric == search_pb2.METRIC_INNER_PRODUCT:
            vectors = await self._run(normalize_rows, vectors)
        return vectors, encoded.cached

    async def _embed_items(
        self, spec: search_pb2.Collection, items: Sequence[search_pb2.Item], timeout: float
    ) -> dict[int, np.ndarray]:
        """Row -> embedding for the upserted items that carry a text or an image instead of a vector."""
        rows: dict[str, list[int]] = {"text": [], "image": []}
        for i, item in enumerate(items):
            if item.text or item.image:
                if item.vector or item.vector_f32 or (item.text and item.image):
                    raise InvalidArgument(f"items[{i}]: set one of vector, vector_f32, text or image")
                rows["text" if item.text else "image"].append(i)
        embedded: dict[int, np.ndarray] = {}
        deadline = time.monotonic() + timeout
        for kind, indices in rows.items():
            if indices:
                values = [getattr(items[i], kind) for i in indices]
                fields = [f"items[{i}].{kind}" for i in indices]
                vectors, _ = await self._embed(spec, kind, values, fields, remaining(deadline))
                embedded.update(zip(indices, vectors))
        return embedded

    @rpc("SearchByText")
    async def SearchByText(self, request: search_pb2.SearchByTextRequest, context: Any) -> Any:
        return await self._search_by_content(request, "text", request.text, context)

    @rpc("SearchByImage")
    async def SearchByImage(self, request: search_pb2.SearchByImageRequest, context: Any) -> Any:
        return await self._search_by_content(request, "image", request.image, context)

    async def _search_by_content(self, request: Any, kind: str, content: Any, context: Any) -> Any:
        started = self._admission.acquire()
        try:
            timeout = self._timeout(context)
            deadline = time.monotonic() + timeout
            spec = await self._catalog.get(request.collection, timeout)
            self._options(request)  # bad k or nprobe fail before any encoding
            vectors, _ = await self._embed(spec, kind, [content], [kind], timeout)
            return await self._search_vector(spec, vectors[0], request, remaining(deadline))
        finally:
            self._admission.release(started, signal=False)  # encoding time is not the shards' load

    @rpc("Encode")
    async def Encode(self, request: search_pb2.EncodeRequest, context: Any) -> Any:
        timeout = self._timeout(context)
        deadline = time.monotonic() + timeout
        count = len(request.texts) + len(request.images)
        if count == 0:
            raise InvalidArgument("texts, images: give at least one text or image")
        if count > self._limits.max_items:
            raise InvalidArgument(f"texts, images: {count} inputs; at most {self._limits.max_items} per call")
        spec = await self._catalog.get(request.collection, timeout) if request.collection else None
        response = search_pb2.EncodeResponse()
        for kind, values in (("text", list(request.texts)), ("image", list(request.images))):
            if not values:
                continue
            vectors, cached = await self._embed(spec, kind, values, f"{kind}s", remaining(deadline))
            response.embeddings.extend(
                search_pb2.Embedding(vector_f32=codec.pack(row), cached=hit) for row, hit in zip(vectors, cached)
            )
            setattr(response, f"{kind}_model", self._encoders.get(kind).info.label)
        return response

    # ---- listing --------------------------------------------------------------------------------------------

    @rpc("ListIds")
    async def ListIds(self, request: search_pb2.ListIdsRequest, context: Any) -> Any:
        timeout = self._timeout(context)
        spec = await self._catalog.get(request.collection, timeout)
        size = request.page_size or DEFAULT_PAGE_SIZE
        if size > self._limits.max_items:
            raise InvalidArgument(f"page_size: {size} exceeds {self._limits.max_items}")
        shards = self._router.list_shards()
        layout = self._router.version
        read_ring = self._router.layout.read_ring() if self._router.layout.moving else None
        cursor = PageCursor.decode(request.page_token, spec.name, layout)
        ids: list[str] = []
        while cursor.shard < len(shards) and len(ids) < size:
            outcome = await self._pool.call(shards[cursor.shard], "ListIds", shard_pb2.ShardListIdsRequest(
                collection=spec.name, after=cursor.after, resume=cursor.resume, limit=size - len(ids),
                topology_version=layout,
                select=topology.selection(read_ring, [shards[cursor.shard].name]) if read_ring else None,
            ), timeout)
            if outcome.error is not None:
                if outcome.error.code == grpc.StatusCode.ABORTED:
                    await self._router.refresh()
                    raise InvalidArgument("page_token: the cluster's shards changed since the listing began; "
                                          "start the listing again") from None
                raise outcome.error
            page = outcome.response
            ids.extend(page.ids)
            cursor = cursor.next(page.next_after, page.more)
        token = cursor.encode(spec.name, layout) if cursor.shard < len(shards) else ""
        return search_pb2.ListIdsResponse(ids=ids, next_page_token=token)

    async def StreamSearch(
        self, request_iterator: AsyncIterator[search_pb2.SearchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[search_pb2.StreamSearchResponse]:
        """Each request is searched concurrently; answers go out as they complete. At most STREAM_WINDOW requests
        are searched or answered-but-unsent at a time: a client that stops reading stops the stream (gRPC flow
        control then stops its writes), so its answers never pile up here.

        The stream's request id (x-request-id) is bound for its whole life; each request's log lines and access line
        carry `<stream id>/<request_id field>`."""
        logs.bind_request_id(logs.request_id_from(context.invocation_metadata()))
        peer = context.peer()  # the answering tasks may outlive the call: they must not touch its context
        answers: asyncio.Queue[search_pb2.StreamSearchResponse | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)

        async def answer(request: search_pb2.SearchRequest) -> None:
            try:
                response = await self._stream_item(request, context, peer)
            except BaseException:
                window.release()
                raise
            answers.put_nowait(response)  # its window slot is released once it has been sent

        async def feed() -> None:
            pending: set[asyncio.Task[None]] = set()
            try:
                async for request in request_iterator:
                    await window.acquire()
                    task = asyncio.create_task(answer(request))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                if pending:
                    await asyncio.gather(*pending)
            except BaseException:  # the stream broke (a message that does not parse, a cancelled call)
                for task in pending:
                    task.cancel()  # nobody will read their answers
                raise
            finally:
                await answers.put(None)

        feeder = asyncio.create_task(feed())
        try:
            while (item := await answers.get()) is not None:
                yield item  # returns once gRPC has taken the message (flow control: once the client reads)
                window.release()
            await feeder
        finally:
            feeder.cancel()

    async def _stream_rows(self, request: search_pb2.SearchRequest, timeout: float) -> search_pb2.BatchSearchResponse:
        if request.vector or request.vector_f32:
            raise InvalidArgument("vectors_f32: a message holds either one query (vector, vector_f32) or several "
                                  "(vectors_f32), not both")
        if request.explain:
            raise InvalidArgument("explain: explains one query; send it in a message of its own (vector_f32)")
        return await self._search_rows(request, (), request.vectors_f32, timeout)

    async def _stream_item(
        self, request: search_pb2.SearchRequest, context: grpc.aio.ServicerContext, peer: str
    ) -> search_pb2.StreamSearchResponse:
        """One StreamSearch request: errors are reported in the message, the stream goes on."""
        start = asyncio.get_running_loop().time()
        code = grpc.StatusCode.OK
        self.metrics.inflight.inc()
        if request.request_id:  # this runs in a task of its own: the binding ends with it
            logs.bind_request_id(logs.child_request_id(logs.current_request_id(), request.request_id))
        try:
            admitted = self._admission.acquire()
            try:
                if request.vectors_f32:  # several queries: one BatchSearch
                    batch = await self._stream_rows(request, self._timeout(context))
                    return search_pb2.StreamSearchResponse(request_id=request.request_id, batch=batch)
                response = await self._search_one(request, self._timeout(context))
            finally:
                self._admission.release(admitted, signal=not request.vectors_f32)  # as BatchSearch: by size
            return search_pb2.StreamSearchResponse(request_id=request.request_id, response=response)
        except ShardSearchError as exc:
            code = exc.code
            return search_pb2.StreamSearchResponse(
                request_id=request.request_id, error_code=exc.code.value[0], error_message=str(exc)
            )
        except Exception:
            code = grpc.StatusCode.INTERNAL
            logger.exception("StreamSearch request failed")
            return search_pb2.StreamSearchResponse(
                request_id=request.request_id, error_code=grpc.StatusCode.INTERNAL.value[0],
                error_message="internal error; see server logs",
            )
        finally:
            self.metrics.inflight.dec()
            elapsed = asyncio.get_running_loop().time() - start
            self.metrics.observe_request("StreamSearch", code, elapsed)
            logs.log_access("StreamSearch", code, elapsed, peer)


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalised copy (rows of norm 0 stay 0)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1)).astype(np.float32)


def check_weight(weight: float, index: int) -> float:
    if weight == 0:
        return 1.0
    if not (math.isfinite(weight) and weight > 0):
        raise InvalidArgument(f"queries[{index}].weight: {weight} must be a finite number > 0 (0 means 1)")
    return weight


def mean_query(vectors: np.ndarray, weights: np.ndarray, metric: int) -> np.ndarray:
    """The weighted mean of the parts (1 x dim); for inner product of the L2-normalised parts."""
    if metric == search_pb2.METRIC_INNER_PRODUCT:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        zero = np.flatnonzero(norms[:, 0] == 0)
        if len(zero):
            raise InvalidArgument(f"queries[{zero[0]}]: a zero vector has no direction to average")
        vectors = vectors / norms
    mean = (weights[:, None] * vectors).sum(axis=0) / weights.sum()
    return mean.astype(np.float32).reshape(1, -1)


def fuse_rrf(
    results: Sequence[search_pb2.SearchResponse], weights: np.ndarray, k: int, exclude: set[str]
) -> search_pb2.SearchResponse:
    """Weighted reciprocal rank fusion: each part's hit at rank r (from 1) adds weight / (RRF_K + r); best k by
    fused score, ties by id. Items in `exclude` still hold their ranks in each list but are not returned.
    Each fused hit keeps the payload and fields it had in the parts' hits."""
    fused: dict[str, float] = {}
    first: dict[str, search_pb2.Hit] = {}
    for weight, result in zip(weights.tolist(), results):
        for rank, hit in enumerate(result.hits, 1):
            if hit.id in exclude:
                continue
            fused[hit.id] = fused.get(hit.id, 0.0) + weight / (RRF_K + rank)
            first.setdefault(hit.id, hit)
    best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
    return search_pb2.SearchResponse(hits=[
        search_pb2.Hit(id=item_id, score=score, payload=first[item_id].payload, fields=first[item_id].fields)
        for item_id, score in best
    ])


def leave_out(response: search_pb2.SearchResponse, ids: set[str], k: int) -> None:
    """Drops the hits on `ids` (the items a query was made from) and keeps the best k of the rest."""
    kept = [hit for hit in response.hits if hit.id not in ids][:k]
    del response.hits[:]
    response.hits.extend(kept)


def finish(response: search_pb2.SearchResponse, request: Any, metric: int, k: int) -> None:
    """What follows the merge, in this order: the score threshold, then diversity (down to k hits), then the fields
    fetched only for diversity are dropped (kept with include_payload)."""
    if request.HasField("score_threshold"):
        apply_threshold(response, request.score_threshold, metric)
    if request.HasField("diversity"):
        diversify(response, request.diversity, k)
        if not request.include_payload:
            strip_fields(response)


def finish_all(responses: Sequence[search_pb2.SearchResponse], request: Any, metric: int, k: int) -> None:
    """finish() for each query of a BatchSearch (runs in the executor)."""
    for response in responses:
        finish(response, request, metric, k)


def apply_threshold(response: search_pb2.SearchResponse, threshold: float, metric: int) -> None:
    """Drops the hits worse than `threshold` (scores below it for inner product, distances above it for L2); hits
    are best first, so that is a tail."""
    higher_is_better = metric == search_pb2.METRIC_INNER_PRODUCT
    hits = response.hits
    for i, hit in enumerate(hits):
        if hit.score < threshold if higher_is_better else hit.score > threshold:
            del hits[i:]
            return


@dataclass(frozen=True)
class PageCursor:
    """Where a ListIds listing stands: shard index, and within it the hash order position (see ShardListIdsRequest).
    Its token names the collection and the ring layout's version, so a token is refused once either no longer
    matches (shards were added or removed meanwhile)."""

    shard: int = 0
    after: int = 0
    resume: bool = False

    def next(self, last: int, more: bool) -> "PageCursor":
        return PageCursor(self.shard, last, True) if more else PageCursor(self.shard + 1)

    def encode(self, collection: str, layout: int) -> str:
        raw = json.dumps([PAGE_TOKEN_VERSION, collection, layout, self.shard, self.after, self.resume])
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, collection: str, layout: int) -> "PageCursor":
        if not token:
            return cls()
        try:
            raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)), parse_constant=_no_constant)
            version, name, count, shard, after, resume = raw
            numbers = (version, count, shard, after)
            valid = all(type(n) is int for n in numbers) and type(resume) is bool and isinstance(name, str)
            cursor = cls(shard, after, resume)
            valid = valid and version == PAGE_TOKEN_VERSION and 0 <= shard and 0 <= after < 2**64
        except (ValueError, TypeError, binascii.Error, RecursionError):
            valid = False
        if not valid:
            raise InvalidArgument("page_token: not a token from ListIds; pass next_page_token as it was returned")
        if name != collection:
            raise InvalidArgument(f"page_token: it lists collection {name!r}, not {collection!r}")
        if count != layout:
            raise InvalidArgument(
                f"page_token: the cluster's shards changed since the listing began (ring layout {count}, now "
                f"{layout}); start the listing again"
            )
        return cursor


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a page token holds")


def route_items(
    request: search_pb2.UpsertRequest, spec: search_pb2.Collection, router: Router,
    limits: validation.Limits, version: int = 0, embedded: dict[int, np.ndarray] | None = None,
) -> list[tuple[Any, shard_pb2.ShardUpsertRequest]]:
    """Validates the items and splits them by owning shard (both owners during a move; runs in the executor: numpy
    and per-item work). `embedded` holds the vectors of items given as a text or an image, by row."""
    items = request.items
    if not items:
        raise InvalidArgument("items: at least one item is required")
    ids = [item.id for item in items]
    validation.check_ids(ids, "items", limits, unique=True)
    dim = spec.dim
    matrix = np.empty((len(items), dim), dtype=np.float32)
    embedded = embedded or {}
    for i, item in enumerate(items):
        if i in embedded:
            matrix[i] = embedded[i]
        elif item.text or item.image:
            raise InvalidArgument(f"items[{i}]: has a text or image that was not embedded")
        else:
            matrix[i] = codec.one_vector(item.vector, item.vector_f32, dim, f"items[{i}].vector")
    payloads = [item.payload for item in items]
    validation.check_payloads(payloads, "items", limits)
    has_payload = any(payloads)
    fields = item_fields(items, limits)
    routed = []
    for shard, rows in router.write_groups(ids):
        routed.append((shard, shard_pb2.ShardUpsertRequest(
            collection=spec.name, ids=[ids[i] for i in rows], vectors_f32=codec.pack(matrix[rows]),
            payloads=[payloads[i] for i in rows] if has_payload else (), version=version,
            fields=[fields[i] for i in rows] if fields and any(fields[i].values for i in rows) else (),
            topology_version=router.version,
        )))
    return routed


def item_fields(items: Sequence[search_pb2.Item], limits: validation.Limits) -> list[search_pb2.Fields]:
    """Each item's structured fields, validated; [] when no item has any (the shard requests then carry none)."""
    if not any(item.fields for item in items):
        return []
    fields = []
    for i, item in enumerate(items):
        one = search_pb2.Fields(values=item.fields)
        if item.fields:
            validation.check_fields(one, f"items[{i}].fields", limits)
        fields.append(one)
    return fields
