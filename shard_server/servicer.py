"""ShardService RPCs: thin handlers over `index.Collection`, with all FAISS and numpy work in an executor."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Executor
from typing import Any, Callable, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry, Gauge

from shard_server.index import Collection
from shard_server.maintenance import Maintenance
from shardsearch import codec, validation
from shardsearch.errors import AlreadyExists, InvalidArgument, NotFound, rpc
from shardsearch.metrics import RpcMetrics
from shardsearch.v1 import shard_pb2, shard_pb2_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ShardMetrics(RpcMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, "shardsearch_shard")
        self.vectors = Gauge(
            "shardsearch_shard_vectors", "Live vectors held by this shard, by collection.", ["collection"],
            registry=registry,
        )


class ShardServicer(shard_pb2_grpc.ShardServiceServicer):
    def __init__(self, executor: Executor, maintenance: Maintenance, metrics: ShardMetrics, use_gpu: bool) -> None:
        self._executor = executor
        self._maintenance = maintenance
        self.metrics = metrics
        self._use_gpu = use_gpu
        self._collections: dict[str, Collection] = {}
        self._lock = threading.Lock()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _collection(self, name: str) -> Collection:
        coll = self._collections.get(name)
        if coll is None:
            raise NotFound(f"collection {name!r} does not exist on this shard")
        return coll

    @rpc("CreateCollection")
    async def CreateCollection(self, request: shard_pb2.ShardCreateCollectionRequest, context: Any) -> Any:
        spec = request.collection
        validation.check_collection(spec)
        with self._lock:
            if spec.name in self._collections:
                raise AlreadyExists(f"collection {spec.name!r} already exists")
            self._collections[spec.name] = Collection(spec, use_gpu=self._use_gpu)
        self.metrics.vectors.labels(spec.name).set(0)
        logger.info("created collection %s (dim %d)", spec.name, spec.dim)
        return shard_pb2.ShardCreateCollectionResponse(collection=spec)

    @rpc("DropCollection")
    async def DropCollection(self, request: shard_pb2.ShardDropCollectionRequest, context: Any) -> Any:
        with self._lock:
            if self._collections.pop(request.name, None) is None:
                raise NotFound(f"collection {request.name!r} does not exist on this shard")
        self.metrics.vectors.remove(request.name)
        logger.info("dropped collection %s", request.name)
        return shard_pb2.ShardDropCollectionResponse()

    @rpc("ListCollections")
    async def ListCollections(self, request: shard_pb2.ShardListCollectionsRequest, context: Any) -> Any:
        specs = [coll.spec for coll in list(self._collections.values())]
        return shard_pb2.ShardListCollectionsResponse(collections=sorted(specs, key=lambda s: s.name))

    @rpc("Upsert")
    async def Upsert(self, request: shard_pb2.ShardUpsertRequest, context: Any) -> Any:
        coll = self._collection(request.collection)
        ids = list(request.ids)
        validation.check_ids(ids, "ids", unique=True)
        vectors = codec.unpack(request.vectors_f32, coll.dim)
        if vectors.shape[0] != len(ids):
            raise InvalidArgument(f"vectors_f32: {vectors.shape[0]} vectors for {len(ids)} ids")
        payloads = list(request.payloads)
        if payloads and len(payloads) != len(ids):
            raise InvalidArgument(f"payloads: {len(payloads)} payloads for {len(ids)} ids")
        codec.check_finite(vectors, "vectors_f32")
        upserted = await self._run(coll.upsert, ids, vectors, payloads)
        self._after_write(coll)
        return shard_pb2.ShardUpsertResponse(upserted=upserted)

    @rpc("Delete")
    async def Delete(self, request: shard_pb2.ShardDeleteRequest, context: Any) -> Any:
        coll = self._collection(request.collection)
        ids = list(request.ids)
        validation.check_ids(ids, "ids")
        deleted = await self._run(coll.delete, ids)
        self._after_write(coll)
        return shard_pb2.ShardDeleteResponse(deleted=deleted)

    def _after_write(self, coll: Collection) -> None:
        self.metrics.vectors.labels(coll.spec.name).set(coll.live)
        self._maintenance.nudge(coll)

    @rpc("Get")
    async def Get(self, request: shard_pb2.ShardGetRequest, context: Any) -> Any:
        coll = self._collection(request.collection)
        ids = list(request.ids)
        validation.check_ids(ids, "ids")
        found, vectors, payloads = await self._run(coll.get, ids)
        return shard_pb2.ShardGetResponse(ids=found, vectors_f32=codec.pack(vectors), payloads=payloads)

    @rpc("Search")
    async def Search(self, request: shard_pb2.ShardSearchRequest, context: Any) -> Any:
        coll = self._collection(request.collection)
        queries = codec.unpack(request.queries_f32, coll.dim, "queries_f32")
        if queries.shape[0] != request.n:
            raise InvalidArgument(f"queries_f32: holds {queries.shape[0]} queries, n says {request.n}")
        validation.check_query_count(request.n)
        validation.check_search(request.k, request.nprobe)
        return await self._run(_search, coll, queries, request.k, request.nprobe, request.include_payload)

    @rpc("Stats")
    async def Stats(self, request: shard_pb2.ShardStatsRequest, context: Any) -> Any:
        coll = self._collection(request.collection)
        return shard_pb2.ShardStatsResponse(info=await self._run(coll.info))


def _search(coll: Collection, queries: np.ndarray, k: int, nprobe: int, include_payload: bool) -> shard_pb2.ShardSearchResponse:
    """Runs in the executor: the FAISS call and building the (n x k) response."""
    result = coll.search(queries, k, nprobe)
    return shard_pb2.ShardSearchResponse(
        n=queries.shape[0],
        k=k,
        ids=coll.ids_for(result.labels),
        scores_f32=codec.pack(result.scores),
        payloads=coll.payloads_for(result.labels) if include_payload else (),
    )

