"""ShardService RPCs: thin handlers over `index.Collection`, with FAISS and numpy work in an executor.

Concurrent Search RPCs go through a dynamic batcher: one FAISS call answers every request queued at that moment.
A batch of a few queries whose search was measured to cost less than an executor hop runs on the event loop
(`InlinePolicy`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Hashable, Iterator

import grpc
import numpy as np

from shard_server.batch_search import search_batch
from shard_server.index import Collection, Relabelled
from shard_server.inline import InlinePolicy
from shard_server.maintenance import Maintenance
from shard_server.metrics import ShardMetrics
from shard_server.storage import write_atomically
from shard_server.writes import Writer
from shardsearch import codec, logs, topology, tracing, validation
from shardsearch.batching import Batcher, BatchingConfig, BatchMetrics
from shardsearch.clock import HybridClock
from shardsearch.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    rpc,
    rpc_stream,
    status_of,
)
from shardsearch.offload import Offload
from shardsearch.v1 import search_pb2, shard_pb2, shard_pb2_grpc

logger = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext

DEFAULT_TIMEOUT_S = 30.0  # for a search whose caller set no deadline
EXPORT_CHUNK_ITEMS = 4096
DRAIN_TIMEOUT_S = 30.0  # longest SetTopology waits for writes admitted under an older layout
class ShardServicer(shard_pb2_grpc.ShardServiceServicer):
    def __init__(
        self, executor: Executor, maintenance: Maintenance, metrics: ShardMetrics, use_gpu: bool,
        batching: BatchingConfig, batch_metrics: BatchMetrics, writer: Writer, name: str = "shard",
        topology_path: Path | None = None, inline_search: bool = False, max_delete_markers: int = 5_000_000,
    ) -> None:
        self.name = name
        self.topology = shard_pb2.ShardSetTopologyRequest()
        """The ring layout this shard last stored, and its name on that ring (version 0: none)."""
        self.topology_version = 0
        """Requests routed by an older layout are refused (ABORTED). It moves only with a stored layout (a request
        naming a newer one is served: that coordinator read it from another shard, where it was stored first)."""
        self._topology_path = topology_path
        self._pending: shard_pb2.ShardSetTopologyRequest | None = None
        """A layout being stored (writes under older ones are already refused, so GetTopology shows it)."""
        self._writes_by_version: collections.Counter[int] = collections.Counter()
        self._layout_lock = asyncio.Lock()
        self.catching_up = False
        """While set, reads are refused (UNAVAILABLE) so callers use another replica; writes are still applied."""
        self.on_resync: Callable[[str, int], None] | None = None
        self.on_read: Callable[[], None] = lambda: None
        self.repairing = False
        """After a pause (see antientropy.StallWatch): reads are refused until a peer has been compared."""
        self.clock = HybridClock()
        self.run = self._run = Offload(executor)  # run: for the replication parts (catch-up, anti-entropy)
        self._writer = writer
        self._batcher: Batcher[tuple[np.ndarray, int], shard_pb2.ShardSearchResponse] = Batcher(
            "shard batcher", batching, self._run_batch, batch_metrics
        )
        self._maintenance = maintenance
        self.metrics = metrics
        self._use_gpu = use_gpu
        self._inline = InlinePolicy(enabled=inline_search and not use_gpu)
        self._max_markers = max_delete_markers
        self._collections: dict[str, Collection] = {}
        metrics.collections = lambda: list(self._collections.values())
        self._creating: set[str] = set()
        self._lock = threading.Lock()

    def collection_names(self) -> list[str]:
        return list(self._collections)

    def _collection(self, name: str, read: bool = False) -> Collection:
        self._writer.check_intact(name)
        if read:
            self.on_read()  # notices a pause before the first read after it is answered
        if read and self.repairing:
            raise Unavailable(f"replica {self.name} was paused and is comparing with its peers; read from another "
                              "replica")
        if read and self.catching_up:
            raise Unavailable(f"replica {self.name} is catching up from its peers; read from another replica")
        if read and name in self._writer.reseeding:
            raise Unavailable(f"replica {self.name} is re-seeding collection {name!r} from its peers (its log was "
                              "damaged); read from another replica")
        coll = self._collections.get(name)
        if coll is None:
            raise NotFound(f"collection {name!r} does not exist on this shard")
        return coll

    @rpc("CreateCollection")
    async def CreateCollection(
        self, request: shard_pb2.ShardCreateCollectionRequest, context: Context
    ) -> shard_pb2.ShardCreateCollectionResponse:
        spec = request.collection
        validation.check_collection(spec)
        await self.create(spec)
        return shard_pb2.ShardCreateCollectionResponse(collection=spec)

    async def create(self, spec: Any) -> Collection:
        with self._lock:
            if spec.name in self._collections or spec.name in self._creating:
                raise AlreadyExists(f"collection {spec.name!r} already exists")
            self._creating.add(spec.name)
        try:
            await self._writer.create(spec)  # durable before it is acknowledged
            with self._lock:
                self._collections[spec.name] = coll = Collection(spec, use_gpu=self._use_gpu)
                coll.keep = self._keep()
        finally:
            self._creating.discard(spec.name)
        self.metrics.vectors.labels(spec.name).set(0)
        logger.info("created collection %s (dim %d)", spec.name, spec.dim)
        return coll

    def on_write_failure(self, callback: Callable[[str], None]) -> None:
        """`callback(reason)` runs when a write could not be logged (a replica then catches up from its peers)."""
        self._writer.on_failure = callback

    def reseeded(self) -> None:
        """A peer has been copied completely: collections re-seeded after damage serve reads again."""
        if self._writer.reseeding:
            logger.info("collections re-seeded from a peer: %s", ", ".join(sorted(self._writer.reseeding)))
            self._writer.reseeding.clear()

    def get_collection(self, name: str) -> Collection | None:
        return self._collections.get(name)

    @rpc("DropCollection")
    async def DropCollection(
        self, request: shard_pb2.ShardDropCollectionRequest, context: Context
    ) -> shard_pb2.ShardDropCollectionResponse:
        with self._lock:
            if self._collections.pop(request.name, None) is None and request.name not in self._writer.damaged:
                raise NotFound(f"collection {request.name!r} does not exist on this shard")
        await self._writer.drop(request.name)
        self.metrics.vectors.remove(request.name)
        logger.info("dropped collection %s", request.name)
        return shard_pb2.ShardDropCollectionResponse()

    @rpc("ListCollections")
    async def ListCollections(
        self, request: shard_pb2.ShardListCollectionsRequest, context: Context
    ) -> shard_pb2.ShardListCollectionsResponse:
        if self.catching_up:
            raise Unavailable(f"replica {self.name} is catching up from its peers; read from another replica")
        specs = [coll.spec for coll in list(self._collections.values())]
        specs += [store.spec for store, _ in self._writer.damaged.values()]  # they exist; every call says DATA_LOSS
        return shard_pb2.ShardListCollectionsResponse(collections=sorted(specs, key=lambda s: s.name))

    @rpc("Upsert")
    async def Upsert(self, request: shard_pb2.ShardUpsertRequest, context: Context) -> shard_pb2.ShardUpsertResponse:
        coll = self._collection(request.collection)
        ids = list(request.ids)
        validation.check_ids(ids, "ids", unique=True)
        vectors = codec.unpack(request.vectors_f32, coll.dim)
        if vectors.shape[0] != len(ids):
            raise InvalidArgument(f"vectors_f32: {vectors.shape[0]} vectors for {len(ids)} ids")
        payloads = list(request.payloads)
        if payloads and len(payloads) != len(ids):
            raise InvalidArgument(f"payloads: {len(payloads)} payloads for {len(ids)} ids")
        if request.fields and len(request.fields) != len(ids):
            raise InvalidArgument(f"fields: {len(request.fields)} field sets for {len(ids)} ids")
        codec.check_finite(vectors, "vectors_f32")
        self._stamp(request)
        with self._admitted(request.topology_version):
            upserted = await self.upsert(coll, request, self._deadline(context))
        return shard_pb2.ShardUpsertResponse(upserted=upserted)

    async def upsert(self, coll: Collection, request: shard_pb2.ShardUpsertRequest, timeout: float) -> int:
        """Applies a checked, versioned upsert (from a client write or from a peer while catching up)."""
        vectors = codec.unpack(request.vectors_f32, coll.dim)
        upserted = await self._writer.upsert(coll, request, list(request.ids), vectors, list(request.payloads), timeout)
        self._after_write(coll)
        return upserted

    async def apply_copy(self, coll: Collection, items: shard_pb2.ShardUpsertRequest | None = None,
                         deletes: shard_pb2.ShardDeleteRequest | None = None) -> int:
        """Applies a chunk a peer sent (catch-up, anti-entropy): only the writes newer than what this replica holds
        are logged and applied, so copying a peer that is mostly the same costs reads, not disk. Returns how many
        were newer."""
        if items is not None:
            vectors = codec.unpack(items.vectors_f32, coll.dim)  # a malformed chunk fails here, not in the log
            picked = await self._newer(coll, items.ids, items.versions)
            if picked is None:
                return 0
            if len(picked) < len(items.ids):
                items = shard_pb2.ShardUpsertRequest(
                    collection=items.collection, ids=[items.ids[i] for i in picked],
                    vectors_f32=codec.pack(vectors[picked]), versions=[items.versions[i] for i in picked],
                    payloads=[items.payloads[i] for i in picked] if len(items.payloads) else (),
                    fields=[items.fields[i] for i in picked] if len(items.fields) else (),
                )
            await self.upsert(coll, items, APPLY_TIMEOUT_S)
            return len(items.ids)
        assert deletes is not None
        picked = await self._newer(coll, deletes.ids, deletes.versions)
        if picked is None:
            return 0
        if len(picked) < len(deletes.ids):
            deletes = shard_pb2.ShardDeleteRequest(collection=deletes.collection, ids=[deletes.ids[i] for i in picked],
                                                   versions=[deletes.versions[i] for i in picked])
        await self.delete(coll, deletes, APPLY_TIMEOUT_S)
        return len(deletes.ids)

    async def _newer(self, coll: Collection, ids: Any, versions: Any) -> list[int] | None:
        """Positions of the (id, version) writes that would change something here; None if none would."""
        keep = await self._run(coll.newer, list(ids), np.asarray(versions, dtype=np.uint64))
        return np.flatnonzero(keep).tolist() if keep.any() else None

    async def delete(self, coll: Collection, request: shard_pb2.ShardDeleteRequest, timeout: float) -> int:
        deleted = await self._writer.delete(coll, request, list(request.ids), timeout)
        self._after_write(coll)
        return deleted

    def _stamp(self, request: shard_pb2.ShardUpsertRequest | shard_pb2.ShardDeleteRequest) -> None:
        """Unversioned writes get this shard's clock; per-id versions must match the ids."""
        if len(request.versions):
            if len(request.versions) != len(request.ids):
                raise InvalidArgument(f"versions: {len(request.versions)} versions for {len(request.ids)} ids")
        elif request.version == 0:
            request.version = self.clock.now()

    @rpc("Delete")
    async def Delete(self, request: shard_pb2.ShardDeleteRequest, context: Context) -> shard_pb2.ShardDeleteResponse:
        coll = self._collection(request.collection)
        validation.check_ids(list(request.ids), "ids")
        held = await self._run(coll.room_for_markers, len(request.ids), self._max_markers)
        if held:  # checked before the delete is logged: a logged delete is always applied
            raise ResourceExhausted(
                f"collection {coll.spec.name!r} holds {held} delete markers on shard {self.name}, the limit "
                f"(--max-delete-markers {self._max_markers}; each is kept --delete-retention-s so replicas converge): "
                "delete fewer ids that do not exist, or wait for older markers to expire"
            )
        self._stamp(request)
        with self._admitted(request.topology_version):
            deleted = await self.delete(coll, request, self._deadline(context))
        return shard_pb2.ShardDeleteResponse(deleted=deleted)

    @staticmethod
    def _deadline(context: Any) -> float:
        remaining = context.time_remaining()
        return DEFAULT_TIMEOUT_S if remaining is None else remaining

    def recover(self, reseed: bool = False, stale: str = "") -> None:
        """Loads the ring layout and the collections kept in the data directory (before serving); items of ids the
        layout gives to other shards (replayed from the log after a move dropped them) are dropped again."""
        if self._topology_path is not None and self._topology_path.exists():
            self.topology = shard_pb2.ShardSetTopologyRequest.FromString(self._topology_path.read_bytes())
            self.topology_version = self.topology.topology.version
            logger.info("ring layout %d (this shard is %s on it)", self.topology_version, self.topology.shard)
        keep = self._keep()
        for coll in self._writer.recover(self._use_gpu, reseed, stale):
            self._collections[coll.spec.name] = coll
            dropped = coll.set_keep(keep)
            if dropped:
                logger.info("collection %s: dropped %d items owned by other shards", coll.spec.name, dropped)
            self._after_write(coll)

    async def close(self) -> None:
        await self._batcher.close()
        await self._writer.close()

    def _after_write(self, coll: Collection) -> None:
        self.metrics.vectors.labels(coll.spec.name).set(coll.live)
        self._maintenance.nudge(coll)

    @rpc("Get")
    async def Get(self, request: shard_pb2.ShardGetRequest, context: Context) -> shard_pb2.ShardGetResponse:
        self._check_layout(request.topology_version)
        coll = self._collection(request.collection, read=True)
        ids = list(request.ids)
        validation.check_ids(ids, "ids")
        found, vectors, payloads = await self._run(coll.get, ids)
        fields = await self._run(coll.fields_of_ids, found)
        return shard_pb2.ShardGetResponse(
            ids=found, vectors_f32=codec.pack(vectors), payloads=payloads,
            fields=[search_pb2.Fields.FromString(blob) for blob in fields] if any(fields) else (),
        )

    @rpc("Search")
    async def Search(self, request: shard_pb2.ShardSearchRequest, context: Context) -> shard_pb2.ShardSearchResponse:
        return await self._search(request, self._deadline(context))

    async def SearchStream(
        self, requests: AsyncIterator[shard_pb2.ShardSearchStreamRequest], context: grpc.aio.ServicerContext
    ) -> None:
        """Each message is a Search of its own (its own deadline, request id, status, metrics and access line),
        answered as soon as it is done; the stream ends when the caller closes its side and every answer is sent."""
        replies: asyncio.Queue[shard_pb2.ShardSearchStreamResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def answer(message: shard_pb2.ShardSearchStreamRequest) -> None:
            reply = shard_pb2.ShardSearchStreamResponse(tag=message.tag)
            reply.code, reply.message = await self._one_search(message, reply.response)
            replies.put_nowait(reply)

        async def read() -> None:
            try:
                async for message in requests:
                    task = asyncio.create_task(answer(message))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.wait(list(running))
            finally:
                replies.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (reply := await replies.get()) is not None:
                await context.write(reply)
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def _one_search(
        self, message: shard_pb2.ShardSearchStreamRequest, into: shard_pb2.ShardSearchResponse
    ) -> tuple[int, str]:
        """One stream message's search, as `rpc` runs a unary call: its status code and message."""
        start = time.perf_counter()
        code, details = grpc.StatusCode.OK, ""
        self.metrics.inflight.inc()
        bound = logs.bind_request_id(logs.request_id_from(((logs.REQUEST_ID_HEADER, message.request_id),)))
        try:
            into.CopyFrom(await self._search(message.request, message.timeout_s or DEFAULT_TIMEOUT_S))
        except Exception as exc:
            code, details = status_of(exc, "Search")
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.inflight.dec()
            self.metrics.observe_request("Search", code, elapsed)
            logs.log_access("Search", code, elapsed, "stream")
            logs.unbind_request_id(bound)
        return code.value[0], details

    async def _search(self, request: shard_pb2.ShardSearchRequest, timeout: float) -> shard_pb2.ShardSearchResponse:
        self._check_layout(request.topology_version)
        coll = self._collection(request.collection, read=True)
        queries = codec.unpack(request.queries_f32, coll.dim, "queries_f32")
        if queries.shape[0] != request.n:
            raise InvalidArgument(f"queries_f32: holds {queries.shape[0]} queries, n says {request.n}")
        validation.check_query_count(request.n)
        validation.check_search(request.k, request.nprobe)
        flt = request.filter if request.HasField("filter") else None
        if request.explain:  # alone, so that what it reports is its own
            return await self._explained(coll, request, queries, flt, timeout)
        # Only searches with the same filter share a FAISS call: the key holds its canonical bytes.
        key = (coll, request.nprobe, max(request.shards, 1), request.include_payload, request.include_fields,
               flt.SerializeToString(deterministic=True) if flt is not None else b"")
        self._inline.arrival(busy=bool(self._batcher.waiting or self._batcher.in_flight))
        return await self._batcher.submit(key, (queries, request.k, flt), queries.shape[0], timeout)

    async def _explained(self, coll: Collection, request: shard_pb2.ShardSearchRequest, queries: np.ndarray,
                         flt: Any, timeout: float) -> shard_pb2.ShardSearchResponse:
        submitted = time.perf_counter()
        stats: dict[str, Any] = {}

        def run() -> tuple[shard_pb2.ShardSearchResponse, float, float]:
            started = time.perf_counter()
            (response,) = search_batch(coll, [(queries, request.k, flt)], request.nprobe, request.include_payload,
                                        request.include_fields, explain=stats, shards=max(request.shards, 1))
            if isinstance(response, BaseException):
                raise response
            return response, started - submitted, time.perf_counter() - started

        response, queued, searched = await asyncio.wait_for(self._run(run), timeout)
        response.explain.CopyFrom(search_pb2.ShardExplain(queued_seconds=queued, search_seconds=searched, **stats))
        return response

    async def _run_batch(
        self, key: Hashable, items: list[tuple[np.ndarray, int, Any]], timeout: float
    ) -> list[shard_pb2.ShardSearchResponse]:
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
        self, coll: Collection, items: list[tuple[np.ndarray, int, Any]], nprobe: int, shards: int,
        include_payload: bool, include_fields: bool, flt: Any, rows: int, timing: list[int] | None,
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
        self, coll: Collection, items: list[tuple[np.ndarray, int, Any]], nprobe: int, shards: int,
        include_payload: bool, include_fields: bool, rows: int, timing: list[int] | None,
    ) -> list[shard_pb2.ShardSearchResponse]:
        """`_search_batch` in the executor; its CPU time is recorded for the inline policy when `rows` (0: a batch
        the inline path would not serve)."""
        started = time.thread_time()
        responses = search_batch(coll, items, nprobe, include_payload, include_fields, timing=timing, shards=shards)
        assert responses is not None
        if rows:
            self._inline.record(coll, rows, time.thread_time() - started)
        return responses

    @rpc("Stats")
    async def Stats(self, request: shard_pb2.ShardStatsRequest, context: Context) -> shard_pb2.ShardStatsResponse:
        coll = self._collection(request.collection, read=True)
        return shard_pb2.ShardStatsResponse(info=await self._run(coll.info))

    @rpc("ListIds")
    async def ListIds(self, request: shard_pb2.ShardListIdsRequest, context: Context) -> shard_pb2.ShardListIdsResponse:
        self._check_layout(request.topology_version)
        coll = self._collection(request.collection, read=True)
        if not 1 <= request.limit <= validation.DEFAULT_LIMITS.max_items:
            raise InvalidArgument(f"limit: {request.limit} must be between 1 and {validation.DEFAULT_LIMITS.max_items}")
        after = request.after if request.resume else None
        select = topology.Selector(request.select).mask if request.HasField("select") else None
        ids, last, more = await self._run(coll.list_ids, after, request.limit, select)
        return shard_pb2.ShardListIdsResponse(ids=ids, next_after=last, more=more)

    # ---- replication ----------------------------------------------------------------------------------------

    @rpc_stream("ExportCollection")
    async def ExportCollection(
        self, request: shard_pb2.ShardExportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[shard_pb2.ShardExportChunk]:
        """Streams one collection ("" = all) as versioned items and delete markers. Allowed while catching up:
        a peer applying what this replica holds never loses anything (versions decide)."""
        if request.collection:
            coll = self._collections.get(request.collection)
            if coll is None:
                raise NotFound(f"collection {request.collection!r} does not exist")
            colls = [coll]
        else:
            colls = sorted(self._collections.values(), key=lambda c: c.spec.name)
        limit = request.chunk_items or EXPORT_CHUNK_ITEMS
        select = topology.Selector(request.select).mask if request.HasField("select") else None
        for coll in colls:
            assert coll is not None
            yield shard_pb2.ShardExportChunk(collection=coll.spec)
            async for chunk in self._export(coll, limit, select):
                yield chunk

    async def _export(
        self, coll: Collection, limit: int, select: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> AsyncIterator[shard_pb2.ShardExportChunk]:
        name, after, generation = coll.spec.name, -1, coll.generation
        while True:
            try:
                ids, vectors, payloads, versions, after, fields = await self._run(
                    coll.export_chunk, after, limit, select, generation)
            except Relabelled:  # labels moved under the cursor: all again (items sent twice apply as no-ops)
                after, generation = -1, coll.generation
                continue
            if ids:
                yield shard_pb2.ShardExportChunk(items=shard_pb2.ShardUpsertRequest(
                    collection=name, ids=ids, vectors_f32=codec.pack(vectors),
                    payloads=payloads if any(payloads) else (), versions=versions.tolist(),
                    fields=[search_pb2.Fields.FromString(blob) for blob in fields] if any(fields) else (),
                ))
            if after < 0:
                break
        markers = await self._run(coll.delete_markers, select)
        for lo in range(0, len(markers), limit):
            part = markers[lo : lo + limit]
            yield shard_pb2.ShardExportChunk(deletes=shard_pb2.ShardDeleteRequest(
                collection=name, ids=[i for i, _ in part], versions=[v for _, v in part],
            ))

    @rpc("Resync")
    async def Resync(self, request: shard_pb2.ShardResyncRequest, context: Context) -> shard_pb2.ShardResyncResponse:
        if self.on_resync is None:
            raise FailedPrecondition(f"replica {self.name} has no peers configured (--peers) to catch up from")
        # Before answering, reads stop (unless a later catch-up already covers the write): from then on no reader
        # can see the missed write's absence here.
        self.on_resync(request.reason or "asked by a coordinator", request.missed_version)
        return shard_pb2.ShardResyncResponse()

    # ---- ring layout (resharding) ---------------------------------------------------------------------------

    def _check_layout(self, version: int) -> None:
        """Refuses a request routed by an older ring layout than this shard's (0: not checked)."""
        if version and version < self.topology_version:
            raise Aborted(
                f"routed by ring layout {version}, but shard {self.name} has layout {self.topology_version}; "
                "re-read the layout and send the request again"
            )

    @contextlib.contextmanager
    def _admitted(self, version: int) -> Iterator[None]:
        """A write admitted under `version` (counted until applied, so a new layout can wait for it)."""
        self._check_layout(version)
        self._writes_by_version[version] += 1
        try:
            yield
        finally:
            self._writes_by_version[version] -= 1
            if not self._writes_by_version[version]:
                del self._writes_by_version[version]

    def _keep(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """Which ids this shard keeps under its stored layout. None (all) before any move: the initial layout
        (version 1, stored from the first coordinator's flags) cannot tell how data loaded before it was placed, so
        nothing is dropped on its word."""
        if self.topology.topology.version <= 1:
            return None
        layout, name = topology.Layout.of(self.topology.topology), self.topology.shard
        return lambda hashes: layout.owned(name, hashes)

    @rpc("GetTopology")
    async def GetTopology(
        self, request: shard_pb2.ShardGetTopologyRequest, context: Context
    ) -> shard_pb2.ShardGetTopologyResponse:
        shown = self._pending or self.topology
        return shard_pb2.ShardGetTopologyResponse(topology=shown.topology, shard=shown.shard)

    @rpc("SetTopology")
    async def SetTopology(
        self, request: shard_pb2.ShardSetTopologyRequest, context: Context
    ) -> shard_pb2.ShardSetTopologyResponse:
        if not request.topology.version or not request.shard:
            raise InvalidArgument("topology.version and shard are required")
        return shard_pb2.ShardSetTopologyResponse(dropped=await self.set_topology(request))

    async def set_topology(self, request: shard_pb2.ShardSetTopologyRequest) -> int:
        """Stores a newer layout, then waits for the writes admitted under older ones, then drops what this shard
        no longer owns. Setting the stored layout again is a no-op; an older one is refused."""
        async with self._layout_lock:
            version = request.topology.version
            stored = self.topology.topology.version
            same = request.topology.SerializeToString(deterministic=True) == \
                self.topology.topology.SerializeToString(deterministic=True)
            if request.HasField("replaces") and not same:
                if request.replaces.SerializeToString(deterministic=True) != \
                        self.topology.topology.SerializeToString(deterministic=True) or version < stored:
                    raise Aborted(f"shard {self.name} has ring layout {stored}, not the one to replace")
                return await self._replace_topology(request)
            if version < stored or (version == stored and request.SerializeToString(deterministic=True)
                                    != self.topology.SerializeToString(deterministic=True)):
                raise Aborted(f"shard {self.name} already has ring layout {stored} (offered {version})")
            if version == stored:
                return 0
            previous, self.topology_version = self.topology_version, version  # refuse older writes from now on
            self._pending = request
            try:
                await self._drain(version)
                if self._topology_path is not None:
                    await self._run(write_atomically, self._topology_path, request.SerializeToString())
            except BaseException:
                self.topology_version = previous  # not stored: GetTopology must still agree with the refusals
                raise
            finally:
                self._pending = None
            self.topology = request
            dropped = await self._drop_unowned()
            logger.info("ring layout %d stored (this shard is %s on it); %d items of other shards dropped",
                        version, request.shard, dropped)
            return dropped

    async def _replace_topology(self, request: shard_pb2.ShardSetTopologyRequest) -> int:
        """The compare-and-set branch of set_topology (under the layout lock): a rival layout of the same version
        gives way to the one the proposers settled on."""
        stored = shard_pb2.ShardSetTopologyRequest(topology=request.topology, shard=request.shard)
        if self._topology_path is not None:
            await self._run(write_atomically, self._topology_path, stored.SerializeToString())
        self.topology, self.topology_version = stored, request.topology.version
        dropped = await self._drop_unowned()
        logger.warning("ring layout %d replaced by the one the coordinators settled on (this shard is %s on it)",
                       request.topology.version, request.shard)
        return dropped

    async def _drop_unowned(self) -> int:
        """Applies the stored layout's ownership to every collection; returns the items dropped."""
        keep = self._keep()
        dropped = 0
        for coll in list(self._collections.values()):
            dropped += await self._run(coll.set_keep, keep)
            self._after_write(coll)
        return dropped

    async def _drain(self, version: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        while any(v < version for v in self._writes_by_version) and loop.time() < deadline:
            await asyncio.sleep(0.005)

    async def adopt_topology(self, response: shard_pb2.ShardGetTopologyResponse) -> None:
        """A peer's layout (while catching up), if newer than this replica's."""
        if response.topology.version > self.topology.topology.version and response.shard:
            await self.set_topology(shard_pb2.ShardSetTopologyRequest(topology=response.topology, shard=response.shard))

    @rpc("Checksum")
    async def Checksum(
        self, request: shard_pb2.ShardChecksumRequest, context: Context
    ) -> shard_pb2.ShardChecksumResponse:
        self._check_layout(request.topology_version)
        coll = self._collection(request.collection, read=True)
        counts, sums = await self._run(coll.checksum, topology.Selector(request.select).mask)
        return shard_pb2.ShardChecksumResponse(counts=counts.tolist(), sums=sums.tolist())

    # ---- retraining -----------------------------------------------------------------------------------------

    @rpc("Retrain")
    async def Retrain(self, request: shard_pb2.ShardRetrainRequest, context: Context) -> shard_pb2.ShardRetrainResponse:
        """Hands a retrain (where due, or forced) to the maintenance thread and answers at once with the state;
        one already running or asked for is not started twice."""
        coll = self._collection(request.collection)
        try:
            asked = await self._run(coll.ask_retrain, request.force)
        except ValueError as exc:
            raise FailedPrecondition(str(exc)) from exc
        if asked:
            self._maintenance.nudge(coll)
        return shard_pb2.ShardRetrainResponse(status=await self._run(coll.retrain_status))

    @rpc("RetrainStatus")
    async def RetrainStatus(
        self, request: shard_pb2.ShardRetrainStatusRequest, context: Context
    ) -> shard_pb2.ShardRetrainResponse:
        coll = self._collection(request.collection)
        if request.measure:
            await self._run(coll.measure_recall)
        return shard_pb2.ShardRetrainResponse(status=await self._run(coll.retrain_status))


APPLY_TIMEOUT_S = 120.0  # a chunk copied from a peer
