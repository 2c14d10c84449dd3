"""One shard's core, free of any transport: its collections, the write path over the log, reads by id and scans,
the ring layout, and the states in which this replica refuses reads (catching up, repairing, re-seeding).

The gRPC servicer (servicer.py) is a thin layer over this and over the search path (queries.py); replication and
anti-entropy call the same core. Requests and answers are the internal `shard_pb2` messages (the log stores them
as they are); FAISS and numpy work runs in the executor (`run`).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shardsearch import codec, topology, validation
from shardsearch.clock import HybridClock
from shardsearch.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from shardsearch.offload import Offload
from shardsearch.shard_server.index import Collection
from shardsearch.shard_server.layout import Keep, RingLayout
from shardsearch.shard_server.maintenance import Maintenance
from shardsearch.shard_server.metrics import ShardMetrics
from shardsearch.shard_server.writes import Writer
from shardsearch.v1 import admin_pb2, search_pb2, shard_pb2

logger = logging.getLogger(__name__)

APPLY_TIMEOUT_S = 120.0  # a chunk copied from a peer


class ShardCore:
    def __init__(
        self, executor: Executor, maintenance: Maintenance, metrics: ShardMetrics, use_gpu: bool, writer: Writer,
        name: str = "shard", topology_path: Path | None = None, max_delete_markers: int = 5_000_000,
    ) -> None:
        self.name = name
        self.catching_up = False
        """While set, reads are refused (UNAVAILABLE) so callers use another replica; writes are still applied."""
        self.repairing = False
        """After a pause (see antientropy.StallWatch): reads are refused until a peer has been compared."""
        self.on_resync: Callable[[str, int], None] | None = None
        """Starts a catch-up from the peers (set by replication; None: no peers)."""
        self.on_read: Callable[[], None] = lambda: None
        self.clock = HybridClock()
        self.run = Offload(executor)
        self.layout = RingLayout(name, topology_path, self.run, self._apply_keep)
        self.metrics = metrics
        self.use_gpu = use_gpu
        self._writer = writer
        self._maintenance = maintenance
        self._max_markers = max_delete_markers
        self._collections: dict[str, Collection] = {}
        metrics.collections = self.collections
        self._creating: set[str] = set()
        self._lock = threading.Lock()

    # ---- collections ------------------------------------------------------------------------------------------

    def collection_names(self) -> list[str]:
        return list(self._collections)

    def collections(self) -> list[Collection]:
        return list(self._collections.values())

    def get_collection(self, name: str) -> Collection | None:
        return self._collections.get(name)

    def collection(self, name: str, read: bool = False) -> Collection:
        """The collection for a request: NOT_FOUND if there is none, DATA_LOSS if its log is damaged, and for a
        read UNAVAILABLE while this replica cannot answer reads."""
        self._writer.check_intact(name)
        if read:
            self.on_read()  # notices a pause before the first read after it is answered
            self.check_readable(name)
        coll = self._collections.get(name)
        if coll is None:
            raise NotFound(f"collection {name!r} does not exist on this shard")
        return coll

    def check_readable(self, name: str = "") -> None:
        if self.repairing:
            raise Unavailable(f"replica {self.name} was paused and is comparing with its peers; read from another "
                              "replica")
        if self.catching_up:
            raise Unavailable(f"replica {self.name} is catching up from its peers; read from another replica")
        if name in self._writer.reseeding:
            raise Unavailable(f"replica {self.name} is re-seeding collection {name!r} from its peers (its log was "
                              "damaged); read from another replica")

    async def create(self, spec: search_pb2.Collection) -> Collection:
        with self._lock:
            if spec.name in self._collections or spec.name in self._creating:
                raise AlreadyExists(f"collection {spec.name!r} already exists")
            self._creating.add(spec.name)
        try:
            await self._writer.create(spec)  # durable before it is acknowledged
            with self._lock:
                self._collections[spec.name] = coll = Collection(spec, use_gpu=self.use_gpu)
                coll.keep = self.layout.keep()
        finally:
            self._creating.discard(spec.name)
        self.metrics.vectors.labels(spec.name).set(0)
        logger.info("created collection %s (dim %d)", spec.name, spec.dim)
        return coll

    async def drop(self, name: str) -> None:
        with self._lock:
            if self._collections.pop(name, None) is None and name not in self._writer.damaged:
                raise NotFound(f"collection {name!r} does not exist on this shard")
        await self._writer.drop(name)
        self.metrics.vectors.remove(name)
        logger.info("dropped collection %s", name)

    def specs(self) -> list[search_pb2.Collection]:
        """Every collection's definition, by name; damaged ones too (they exist; every call says DATA_LOSS)."""
        if self.catching_up:
            raise Unavailable(f"replica {self.name} is catching up from its peers; read from another replica")
        specs = [coll.spec for coll in list(self._collections.values())]
        specs += [store.spec for store, _ in self._writer.damaged.values()]
        return sorted(specs, key=lambda s: s.name)

    def on_write_failure(self, callback: Callable[[str], None]) -> None:
        """`callback(reason)` runs when a write could not be logged (a replica then catches up from its peers)."""
        self._writer.on_failure = callback

    def reseeded(self) -> None:
        """A peer has been copied completely: collections re-seeded after damage serve reads again."""
        if self._writer.reseeding:
            logger.info("collections re-seeded from a peer: %s", ", ".join(sorted(self._writer.reseeding)))
            self._writer.reseeding.clear()

    def recover(self, reseed: bool = False, stale: str = "") -> None:
        """Loads the ring layout and the collections kept in the data directory (before serving); items of ids the
        layout gives to other shards (replayed from the log after a move dropped them) are dropped again."""
        self.layout.load()
        keep = self.layout.keep()
        for coll in self._writer.recover(self.use_gpu, reseed, stale):
            self._collections[coll.spec.name] = coll
            dropped = coll.set_keep(keep)
            if dropped:
                logger.info("collection %s: dropped %d items owned by other shards", coll.spec.name, dropped)
            self._after_write(coll)

    async def close(self) -> None:
        await self._writer.close()

    async def _apply_keep(self, keep: Keep | None) -> int:
        """Applies a layout's ownership to every collection; returns the items dropped."""
        dropped = 0
        for coll in list(self._collections.values()):
            dropped += await self.run(coll.set_keep, keep)
            self._after_write(coll)
        return dropped

    # ---- writes -----------------------------------------------------------------------------------------------

    async def upsert(self, request: shard_pb2.ShardUpsertRequest, timeout: float) -> int:
        """A client's upsert (through a coordinator): checked, stamped, admitted under its layout, logged, applied."""
        coll = self.collection(request.collection)
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
        with self.layout.admitted(request.topology_version):
            return await self._apply_upsert(coll, request, timeout)

    async def delete(self, request: shard_pb2.ShardDeleteRequest, timeout: float) -> int:
        """A client's delete: checked (the delete markers it would add must fit), stamped, admitted, logged, applied."""
        coll = self.collection(request.collection)
        validation.check_ids(list(request.ids), "ids")
        held = await self.run(coll.room_for_markers, len(request.ids), self._max_markers)
        if held:  # checked before the delete is logged: a logged delete is always applied
            raise ResourceExhausted(
                f"collection {coll.spec.name!r} holds {held} delete markers on shard {self.name}, the limit "
                f"(--max-delete-markers {self._max_markers}; each is kept --delete-retention-s so replicas converge): "
                "delete fewer ids that do not exist, or wait for older markers to expire"
            )
        self._stamp(request)
        with self.layout.admitted(request.topology_version):
            return await self._apply_delete(coll, request, timeout)

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
            await self._apply_upsert(coll, items, APPLY_TIMEOUT_S)
            return len(items.ids)
        assert deletes is not None
        picked = await self._newer(coll, deletes.ids, deletes.versions)
        if picked is None:
            return 0
        if len(picked) < len(deletes.ids):
            deletes = shard_pb2.ShardDeleteRequest(collection=deletes.collection, ids=[deletes.ids[i] for i in picked],
                                                   versions=[deletes.versions[i] for i in picked])
        await self._apply_delete(coll, deletes, APPLY_TIMEOUT_S)
        return len(deletes.ids)

    async def _apply_upsert(self, coll: Collection, request: shard_pb2.ShardUpsertRequest, timeout: float) -> int:
        """Applies a checked, versioned upsert (from a client write or from a peer while catching up)."""
        vectors = codec.unpack(request.vectors_f32, coll.dim)
        upserted = await self._writer.upsert(coll, request, list(request.ids), vectors, list(request.payloads), timeout)
        self._after_write(coll)
        return upserted

    async def _apply_delete(self, coll: Collection, request: shard_pb2.ShardDeleteRequest, timeout: float) -> int:
        deleted = await self._writer.delete(coll, request, list(request.ids), timeout)
        self._after_write(coll)
        return deleted

    async def _newer(self, coll: Collection, ids: Any, versions: Any) -> list[int] | None:
        """Positions of the (id, version) writes that would change something here; None if none would."""
        keep = await self.run(coll.newer, list(ids), np.asarray(versions, dtype=np.uint64))
        return np.flatnonzero(keep).tolist() if keep.any() else None

    def _stamp(self, request: shard_pb2.ShardUpsertRequest | shard_pb2.ShardDeleteRequest) -> None:
        """Unversioned writes get this shard's clock; per-id versions must match the ids."""
        if len(request.versions):
            if len(request.versions) != len(request.ids):
                raise InvalidArgument(f"versions: {len(request.versions)} versions for {len(request.ids)} ids")
        elif request.version == 0:
            request.version = self.clock.now()

    def _after_write(self, coll: Collection) -> None:
        self.metrics.vectors.labels(coll.spec.name).set(coll.live)
        self._maintenance.nudge(coll)

    # ---- reads by id, scans -----------------------------------------------------------------------------------

    async def get(self, request: shard_pb2.ShardGetRequest) -> shard_pb2.ShardGetResponse:
        self.layout.check(request.topology_version)
        coll = self.collection(request.collection, read=True)
        ids = list(request.ids)
        validation.check_ids(ids, "ids")
        found, vectors, payloads = await self.run(coll.get, ids)
        fields = await self.run(coll.fields_of_ids, found)
        return shard_pb2.ShardGetResponse(
            ids=found, vectors_f32=codec.pack(vectors), payloads=payloads,
            fields=[search_pb2.Fields.FromString(blob) for blob in fields] if any(fields) else (),
        )

    async def list_ids(self, request: shard_pb2.ShardListIdsRequest) -> shard_pb2.ShardListIdsResponse:
        self.layout.check(request.topology_version)
        coll = self.collection(request.collection, read=True)
        if not 1 <= request.limit <= validation.DEFAULT_LIMITS.max_items:
            raise InvalidArgument(f"limit: {request.limit} must be between 1 and {validation.DEFAULT_LIMITS.max_items}")
        after = request.after if request.resume else None
        select = topology.Selector(request.select).mask if request.HasField("select") else None
        ids, last, more = await self.run(coll.list_ids, after, request.limit, select)
        return shard_pb2.ShardListIdsResponse(ids=ids, next_after=last, more=more)

    async def checksum(self, request: shard_pb2.ShardChecksumRequest) -> shard_pb2.ShardChecksumResponse:
        self.layout.check(request.topology_version)
        coll = self.collection(request.collection, read=True)
        counts, sums = await self.run(coll.checksum, topology.Selector(request.select).mask)
        return shard_pb2.ShardChecksumResponse(counts=counts.tolist(), sums=sums.tolist())

    # ---- retraining -------------------------------------------------------------------------------------------

    async def retrain(self, name: str, force: bool) -> admin_pb2.RetrainStatus:
        """Hands a retrain (where due, or forced) to the maintenance thread and answers at once with the state;
        one already running or asked for is not started twice."""
        coll = self.collection(name)
        try:
            asked = await self.run(coll.ask_retrain, force)
        except ValueError as exc:
            raise FailedPrecondition(str(exc)) from exc
        if asked:
            self._maintenance.nudge(coll)
        return await self.run(coll.retrain_status)

    async def retrain_status(self, name: str, measure: bool) -> admin_pb2.RetrainStatus:
        coll = self.collection(name)
        if measure:
            await self.run(coll.measure_recall)
        return await self.run(coll.retrain_status)
