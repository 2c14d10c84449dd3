"""The shard's write path: log with group commit, apply, acknowledge; snapshots; recovery at start-up.

With a data directory, every Upsert and Delete goes through one batcher: the writes queued while the previous fsync
ran are appended together and covered by a single fsync, then applied in log order, then acknowledged. So an
acknowledged write is on disk, and the in-memory state is always a prefix of the log. Snapshots are captured in the
same serial path (consistent with a log position), written off it, and let the covered log segments go.
Without a data directory writes are applied directly (nothing survives a restart).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from shardsearch import codec
from shardsearch.batching import Batcher, BatchingConfig, BatchMetrics
from shardsearch.errors import AlreadyExists, DataLoss, ResourceExhausted, ShardSearchError, Unavailable
from shardsearch.metrics import LATENCY_BUCKETS
from shardsearch.offload import Offload
from shardsearch.shard_server import memory
from shardsearch.shard_server.index import Collection
from shardsearch.shard_server.storage import DELETE, UPSERT, CollectionStore, CorruptLog, Storage, WalFailed, fsync_dir
from shardsearch.v1 import search_pb2, shard_pb2

logger = logging.getLogger(__name__)

SNAPSHOT = 0
SNAPSHOT_RETRY_S = 10.0
WRITE_BATCHING = BatchingConfig(max_batch_size=4096, max_queue_delay_us=0, max_queue_size=8192, max_in_flight=1)


@dataclass(frozen=True)
class WriteOp:
    kind: int  # UPSERT, DELETE or SNAPSHOT
    request: Any = None  # the shard RPC's request, logged as is (serialised in the executor, off the event loop)
    ids: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = None
    payloads: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Capture:
    """A snapshot's content, consistent with log position `seq`, and the segments it makes redundant."""

    state: dict[str, np.ndarray]
    seq: int
    covered: list[Any]


class Writer:
    def __init__(
        self, executor: Executor, storage: Storage | None, snapshot_bytes: int, registry: CollectorRegistry,
    ) -> None:
        self._run = Offload(executor)
        self.storage = storage
        self._snapshot_bytes = snapshot_bytes
        self._stores: dict[str, CollectionStore] = {}
        self.damaged: dict[str, tuple[CollectionStore, str]] = {}
        """Collections whose log was found damaged at start-up (kept as they are on disk; served as DATA_LOSS)."""
        self.reseeding: set[str] = set()
        """Collections set aside as damaged and created empty: no reads until a peer has been copied."""
        self.on_failure: Callable[[str], None] = lambda reason: None
        """Called when a write could not be logged (a replica then knows it may be behind its peers)."""
        self._snapshotting: set[str] = set()
        self._snapshot_after: dict[str, float] = {}  # after a failed snapshot, the next waits a while
        self._tasks: set[asyncio.Task[None]] = set()
        self._batcher: Batcher[WriteOp, Any] = Batcher(
            "write batcher", WRITE_BATCHING, self._run_batch, BatchMetrics(registry, "shardsearch_shard_write")
        )
        self.snapshots = Counter("shardsearch_shard_snapshots", "Snapshots written.", registry=registry)
        self.snapshot_time = Histogram(
            "shardsearch_shard_snapshot_duration_seconds", "Time to write one snapshot.", buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    @property
    def durable(self) -> bool:
        return self.storage is not None


    # ---- collections ---------------------------------------------------------------------------------------

    async def create(self, spec: search_pb2.Collection) -> None:
        if self.storage is None:
            return
        try:
            self._stores[spec.name] = await self._run(self.storage.create, spec)
        except FileExistsError as exc:
            raise AlreadyExists(f"collection {spec.name!r} is already stored on this shard ({exc.strerror})") from exc
        except OSError as exc:
            raise _write_error(exc, f"collection {spec.name!r} was not created") from exc

    async def drop(self, name: str) -> None:
        store = self._stores.pop(name, None) or self.damaged.pop(name, (None, ""))[0]
        if store is not None:
            await self._run(store.destroy)

    def recover(self, use_gpu: bool, reseed: bool = False, stale: str = "") -> list[Collection]:
        """Loads every collection from its snapshot and log (blocking; call before serving).

        A collection whose log is damaged (see storage.CorruptLog) is not served from what survived: with `reseed`
        (the shard has peers) its folder is set aside and it comes back empty, to be copied from a peer; without,
        it stays on disk untouched and every call to it is DATA_LOSS (in `self.damaged`). With `stale` (why this
        replica's data cannot rejoin as it is) and `reseed`, every collection is set aside and re-seeded."""
        if self.storage is None:
            return []
        collections = []
        for store in self.storage.existing():
            started = time.perf_counter()
            why = stale if reseed else ""
            coll: Collection | None = None
            if not why:
                try:
                    coll, after, replayed = _load(store, use_gpu)
                except CorruptLog as exc:
                    store.wal.close()
                    if not reseed:
                        logger.error("collection %s NOT served: its log is damaged: %s", store.spec.name, exc)
                        self.damaged[store.spec.name] = (store, str(exc))
                        continue
                    why = f"its log is damaged ({exc})"
            if coll is None:
                if stale:  # nothing to inspect: the peers hold everything newer
                    store.destroy()
                    logger.warning("collection %s: %s; dropped here, re-seeding from the peers", store.spec.name, why)
                else:
                    aside = store.set_aside()
                    logger.error("collection %s: %s; set aside as %s, re-seeding from the peers", store.spec.name, why,
                                 aside)
                store = self.storage.create(store.spec)
                coll, after, replayed = Collection(store.spec, use_gpu=use_gpu), 0, 0
                self.reseeding.add(store.spec.name)
            self._stores[store.spec.name] = store
            collections.append(coll)
            logger.info(
                "recovered collection %s: %d vectors (snapshot at %d, %d log records replayed) in %.2fs",
                store.spec.name, coll.live, after, replayed, time.perf_counter() - started,
            )
        return collections

    def check_intact(self, name: str) -> None:
        if name in self.damaged:
            raise DataLoss(
                f"collection {name!r} is not served by this shard: {self.damaged[name][1]}. Restore the shard's "
                "data directory from a backup, or drop the collection and write it again"
            )

    # ---- writes --------------------------------------------------------------------------------------------

    async def upsert(
        self, coll: Collection, request: shard_pb2.ShardUpsertRequest, ids: list[str], vectors: np.ndarray,
        payloads: list[bytes], timeout: float,
    ) -> int:
        if not self.durable:
            return await self._run(coll.upsert, ids, vectors, payloads, versions_of(request), list(request.fields))
        op = WriteOp(UPSERT, request, ids, vectors, payloads)
        return int(await self._batcher.submit(coll, op, 1, timeout))

    async def delete(self, coll: Collection, request: shard_pb2.ShardDeleteRequest, ids: list[str], timeout: float) -> int:
        if not self.durable:
            return await self._run(coll.delete, ids, versions_of(request))
        return int(await self._batcher.submit(coll, WriteOp(DELETE, request, ids), 1, timeout))

    async def _run_batch(self, key: Hashable, ops: list[WriteOp], timeout: float) -> list[Any]:
        coll: Collection = key  # type: ignore[assignment]
        store = self._stores.get(coll.spec.name)
        if store is None:
            raise RuntimeError(f"collection {coll.spec.name!r} has no storage (dropped?)")
        if store.wal.failure is not None:
            logger.info("collection %s: writing again after a failed append, on a new log segment", coll.spec.name)
        try:
            results = await self._run(_commit, coll, store, ops)
        except WalFailed as exc:
            self.on_failure(f"a write to collection {coll.spec.name} could not be logged")
            raise _write_error(exc, f"collection {coll.spec.name!r}: the write was not applied") from exc
        if (store.wal.bytes_since_snapshot >= self._snapshot_bytes and coll.spec.name not in self._snapshotting
                and time.monotonic() >= self._snapshot_after.get(coll.spec.name, 0.0)):
            task = asyncio.create_task(self.snapshot(coll))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return results

    async def snapshot(self, coll: Collection) -> None:
        """Captures the collection in the write path, then writes the snapshot and drops the log it covers."""
        name = coll.spec.name
        store = self._stores.get(name)
        if store is None or name in self._snapshotting:
            return
        self._snapshotting.add(name)
        try:
            started = time.perf_counter()
            capture: Capture = await self._batcher.submit(coll, WriteOp(SNAPSHOT), 1, 3600)
            await self._run(_persist, store, capture)
            self.snapshots.inc()
            self.snapshot_time.observe(time.perf_counter() - started)
            logger.info("collection %s: snapshot at log position %d in %.2fs", name, capture.seq,
                        time.perf_counter() - started)
        except (OSError, ShardSearchError) as exc:  # a full or failing disk: say so, no traceback
            self._snapshot_after[name] = time.monotonic() + SNAPSHOT_RETRY_S
            logger.warning("snapshot of collection %s failed: %s (the log still holds everything; next try in %.0fs)",
                           name, getattr(exc, "strerror", None) or exc, SNAPSHOT_RETRY_S)
        except Exception:
            self._snapshot_after[name] = time.monotonic() + SNAPSHOT_RETRY_S
            logger.exception("snapshot of collection %s failed (the log still holds everything)", name)
        finally:
            self._snapshotting.discard(name)

    async def close(self) -> None:
        for task in list(self._tasks):
            await asyncio.gather(task, return_exceptions=True)
        await self._batcher.close()
        for store in self._stores.values():
            store.wal.close()


def _load(store: CollectionStore, use_gpu: bool) -> tuple[Collection, int, int]:
    """The collection as its snapshot and log hold it; sets store.seq. Raises CorruptLog before applying anything
    past a damaged record."""
    coll = Collection(store.spec, use_gpu=use_gpu)
    after = 0
    if store.snapshot_path.exists():
        with np.load(store.snapshot_path) as npz:
            state = {key: npz[key] for key in npz.files}
        after = int(state.pop("seq")[0])
        coll.import_state(state)
    replayed = 0
    store.seq = after
    for record in store.wal.replay(after):
        _apply(coll, record.kind, record.payload)
        store.seq = record.seq
        replayed += 1
    memory.trim()  # the snapshot's arrays and the replayed records are garbage now
    return coll, after, replayed


def _write_error(exc: OSError, what: str) -> ShardSearchError:
    """A failed write to disk as the status a caller can act on: a full disk (or quota, or file size limit) is a
    limit hit, RESOURCE_EXHAUSTED; anything else UNAVAILABLE (another replica, or later)."""
    reason = str(exc.strerror or exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return ResourceExhausted(f"{what}: the shard's disk is full ({reason}); free space on its data volume")
    return Unavailable(f"{what}: the shard could not write to its disk ({reason})")


def versions_of(request: shard_pb2.ShardUpsertRequest | shard_pb2.ShardDeleteRequest) -> np.ndarray:
    """Per-id write versions: `versions` if given, else `version` for every id."""
    if len(request.versions):
        return np.array(request.versions, dtype=np.uint64)
    return np.full(len(request.ids), request.version, dtype=np.uint64)


def _apply(coll: Collection, kind: int, payload: bytes) -> int:
    if kind == UPSERT:
        upsert = shard_pb2.ShardUpsertRequest.FromString(payload)
        return coll.upsert(
            list(upsert.ids), codec.unpack(upsert.vectors_f32, coll.dim), list(upsert.payloads), versions_of(upsert),
            list(upsert.fields),
        )
    if kind == DELETE:
        delete = shard_pb2.ShardDeleteRequest.FromString(payload)
        return coll.delete(list(delete.ids), versions_of(delete))
    raise ValueError(f"unknown log record kind {kind}")


def _commit(coll: Collection, store: CollectionStore, ops: list[WriteOp]) -> list[Any]:
    """Runs in the executor: one append + fsync for every write in the batch, then applies them in log order."""
    entries = [(op.kind, op.request.SerializeToString()) for op in ops if op.kind != SNAPSHOT]
    if entries:
        store.log(entries)
    results: list[Any] = []
    for op in ops:
        if op.kind == UPSERT:
            results.append(coll.upsert(  # type: ignore[arg-type]
                op.ids, op.vectors, op.payloads, versions_of(op.request), list(op.request.fields)  # type: ignore[union-attr]
            ))
        elif op.kind == DELETE:
            results.append(coll.delete(op.ids, versions_of(op.request)))
        else:
            results.append(None)
    if any(op.kind == SNAPSHOT for op in ops):
        snapshot: Any
        try:  # the writes above are logged and applied whatever happens to the snapshot
            snapshot = Capture(coll.export_state(), store.seq, store.wal.rotate(store.seq + 1))
        except OSError as exc:
            snapshot = _write_error(exc, f"snapshot of collection {coll.spec.name!r}")
        results = [snapshot if op.kind == SNAPSHOT else result for op, result in zip(ops, results)]
    return results


def _persist(store: CollectionStore, capture: Capture) -> None:
    """Writes snapshot.npz atomically (temp file, fsync, rename, fsync dir), then deletes the covered segments."""
    tmp = store.snapshot_path.with_name("snapshot.npz.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, seq=np.array([capture.seq], dtype=np.int64), **capture.state)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, store.snapshot_path)
    finally:
        tmp.unlink(missing_ok=True)  # a half-written snapshot must not keep a full disk full
    fsync_dir(store.folder)
    for segment in capture.covered:
        segment.unlink(missing_ok=True)
    capture.state.clear()
    memory.trim()
