"""Adding and removing shards online: the coordinator side of a move (the phases are in shardsearch.topology).

A move, driven by the coordinator that was asked (any coordinator can resume it, every step is idempotent):

1. Checks: no other move; every replica of every shard reachable; a joining shard running and empty. A joining
   shard gets every collection.
2. Announces layout v+1 (COPYING) to every replica of every shard of both rings. Each shard stores it durably and
   waits for the writes admitted under v; from then on requests routed by v are refused (ABORTED), so every write
   that is acknowledged from now on reaches the new owner too.
3. Copies each range (collection, old owner, new owner; coordinator/range_copy.py): the old owner's items and
   delete markers whose owner changes, with their write versions, applied like writes (a version only replaces an
   older one, so copies and concurrent writes land in any order).
4. Verifies each range: per bucket of the id hash, the count and a checksum of (id, version, vector) on both sides;
   buckets that differ are copied again and re-checked (writes in flight make transient differences).
5. Announces v+2 (SWITCHED): reads go to the new owners and the old ones drop what they no longer own.
6. Announces v+3: the new ring alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter

from shardsearch import logs
from shardsearch.coordinator.catalog import Catalog
from shardsearch.coordinator.range_copy import STEP_TIMEOUT_S, RangeCopy
from shardsearch.coordinator.router import Router
from shardsearch.coordinator.shards import Shard, ShardPool
from shardsearch.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ShardSearchError,
    Unavailable,
)
from shardsearch.topology import Layout
from shardsearch.v1 import admin_pb2, shard_pb2

logger = logging.getLogger(__name__)

COPY_CONCURRENCY = 2  # ranges copied at once
RETRY_MIN_S, RETRY_MAX_S = 1.0, 30.0


class MoveMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.copied = Counter(
            "shardsearch_coordinator_move_copied_items", "Items and delete markers copied by shard moves.",
            registry=registry,
        )
        self.mismatches = Counter(
            "shardsearch_coordinator_move_mismatched_buckets", "Checksum buckets that differed when a moved range "
            "was verified (each is copied again).", registry=registry,
        )
        self.moves = Counter(
            "shardsearch_coordinator_moves", "Shard moves finished by this coordinator, by kind.", ["kind"],
            registry=registry,
        )


class Resharder:
    def __init__(self, pool: ShardPool, router: Router, catalog: Catalog, metrics: MoveMetrics,
                 unverified_token: bool = False) -> None:
        """`unverified_token`: this coordinator sends a shard token to the shards it dials without checking their
        certificates against a CA of its own, so it must not dial an address a caller names (AddShard)."""
        self._unverified_token = unverified_token
        self._pool = pool
        self._router = router
        self._catalog = catalog
        self._metrics = metrics
        self._ranges = RangeCopy(pool, router, metrics)
        self._task: asyncio.Task[None] | None = None
        self._progress: admin_pb2.Move | None = None
        self._lock = asyncio.Lock()

    def describe(self) -> admin_pb2.Topology:
        """The layout in use, with this coordinator's progress on the move it drives (or drove last)."""
        answer = admin_pb2.Topology()
        answer.CopyFrom(self._router.layout.topology)
        progress = self._progress
        if progress is not None and (progress.finished_unix_ms or (
            answer.HasField("move") and (answer.move.kind, answer.move.shard) == (progress.kind, progress.shard)
        )):
            phase = answer.move.phase
            answer.move.CopyFrom(progress)
            if phase:
                answer.move.phase = phase
        return answer

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # ---- the admin calls ------------------------------------------------------------------------------------

    async def add_shard(self, spec: admin_pb2.ShardSpec, timeout: float) -> admin_pb2.Topology:
        if not spec.name or not spec.addresses or not all(a.strip() for a in spec.addresses):
            raise InvalidArgument("shard: give the new shard's name and the address of each of its replicas")
        if self._unverified_token:
            raise FailedPrecondition(
                "AddShard: this coordinator sends its shard token to every shard it dials and cannot check that "
                f"{', '.join(spec.addresses)} is a shard of this cluster (no shard_tls_ca_file); set shard_tls_ca_file "
                "(with the shards' certificates signed by that CA) to add shards, or list the shard in --shards"
            )
        async with self._lock:
            layout = await self._idle_layout()
            if spec.name in layout.ring.shards:
                raise AlreadyExists(f"shard {spec.name!r} is already on the ring")
            old = list(layout.topology.shards)
            self._pool.set_members([*layout.members(), (spec.name, list(spec.addresses))])
            try:
                await self._prepare(self._pool.by_name[spec.name], timeout)
            except BaseException:
                self._pool.set_members(layout.members())
                raise
            move = admin_pb2.Move(
                kind=admin_pb2.Move.KIND_ADD, shard=spec.name, phase=admin_pb2.Move.PHASE_COPYING, from_shards=old,
                started_unix_ms=time.time_ns() // 10**6,
            )
            return await self._start(admin_pb2.Topology(
                version=self._router.version + 1, shards=[*old, spec], vnodes=layout.ring.vnodes, move=move,
            ), timeout)

    async def remove_shard(self, name: str, timeout: float) -> admin_pb2.Topology:
        async with self._lock:
            layout = await self._idle_layout()
            if name not in layout.ring.shards:
                raise NotFound(f"shard {name!r} is not on the ring ({', '.join(layout.ring.shards)})")
            if len(layout.ring.shards) == 1:
                raise FailedPrecondition(f"shard {name!r} is the last one; a ring needs at least one shard")
            await self._check_reachable(timeout)
            old = list(layout.topology.shards)
            move = admin_pb2.Move(
                kind=admin_pb2.Move.KIND_REMOVE, shard=name, phase=admin_pb2.Move.PHASE_COPYING, from_shards=old,
                started_unix_ms=time.time_ns() // 10**6,
            )
            return await self._start(admin_pb2.Topology(
                version=self._router.version + 1, shards=[s for s in old if s.name != name],
                vnodes=layout.ring.vnodes, move=move,
            ), timeout)

    async def resume(self, timeout: float) -> admin_pb2.Topology:
        async with self._lock:
            await self._router.refresh()
            layout = self._router.layout
            if not layout.moving:
                raise FailedPrecondition("no move is in progress")
            if not self.running:
                self._progress = admin_pb2.Move()
                self._progress.CopyFrom(layout.topology.move)
                self._launch(layout.topology)
            return self.describe()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _idle_layout(self) -> Layout:
        if self.running:
            raise FailedPrecondition("this coordinator is driving a move already; wait for it (GetTopology)")
        await self._router.refresh()
        layout = self._router.layout
        if layout.moving:
            move = layout.topology.move
            raise FailedPrecondition(
                f"a move is in progress ({admin_pb2.Move.Kind.Name(move.kind)} {move.shard}); wait for it, or "
                "ResumeMove if its coordinator stopped"
            )
        return layout

    async def _check_reachable(self, timeout: float) -> None:
        """A move needs every replica of every shard: each must store each new layout."""
        replicas = [(shard, replica) for shard in self._pool.shards for replica in shard.replicas]
        answers = await asyncio.gather(*(
            replica.stub.GetTopology(shard_pb2.ShardGetTopologyRequest(), timeout=min(timeout, 5.0),
                                     metadata=logs.outgoing_metadata())
            for _, replica in replicas
        ), return_exceptions=True)
        down = [f"{shard.name} ({replica.address}): {answer.code().name}"  # type: ignore[union-attr]
                for (shard, replica), answer in zip(replicas, answers) if isinstance(answer, BaseException)]
        if down:
            raise Unavailable(f"a move needs every replica of every shard, and these did not answer: {'; '.join(down)}")

    async def _prepare(self, joining: Shard, timeout: float) -> None:
        """Checks the cluster and the joining shard, and creates every collection on it."""
        await self._check_reachable(timeout)
        await self._check_empty(joining, timeout)
        for collection in await self._catalog.refresh(timeout):
            await self._create_on(joining, collection, timeout)

    async def _create_on(self, shard: Shard | None, spec: Any, timeout: float = STEP_TIMEOUT_S) -> None:
        """Creates the collection on every replica of `shard` (None: nothing to do) unless it is there."""
        if shard is None:
            return
        outcome = await self._pool.write(
            shard, "CreateCollection", shard_pb2.ShardCreateCollectionRequest(collection=spec), timeout,
            every_replica=True, benign=grpc.StatusCode.ALREADY_EXISTS,
        )
        if not outcome.ok and outcome.error.code != grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[union-attr]
            raise outcome.error  # type: ignore[misc]

    async def _check_empty(self, shard: Shard, timeout: float) -> None:
        for replica in shard.replicas:
            stored = await replica.stub.GetTopology(shard_pb2.ShardGetTopologyRequest(), timeout=timeout)
            if stored.topology.version:
                raise FailedPrecondition(
                    f"shard {shard.name} ({replica.address}) was on a ring before (it stores layout "
                    f"{stored.topology.version}); a joining shard must start with an empty data directory"
                )
            listed = await replica.stub.ListCollections(shard_pb2.ShardListCollectionsRequest(), timeout=timeout)
            for spec in listed.collections:
                stats = await replica.stub.Stats(shard_pb2.ShardStatsRequest(collection=spec.name), timeout=timeout)
                if stats.info.vectors:
                    raise FailedPrecondition(
                        f"shard {shard.name} ({replica.address}) holds {stats.info.vectors} items in collection "
                        f"{spec.name!r}; a joining shard must be empty (start it with an empty data directory)"
                    )

    async def _start(self, target: admin_pb2.Topology, timeout: float) -> admin_pb2.Topology:
        """Stores the move's first layout as a compare-and-set (another coordinator may propose one at the same
        version at the same moment: one of the two is kept everywhere, the other withdrawn) and drives the move."""
        names = dict(Layout.of(target).members())
        self._pool.set_members(list(names.items()))
        if not await self._router.claim(target, list(names), timeout):
            self._pool.set_members(self._router.layout.members())
            raise Aborted(
                f"another ring layout change was proposed at the same time and kept (ring layout "
                f"{self._router.layout.version}); this one was withdrawn, nothing of it is stored: see GetTopology, "
                "and ask again once that move has finished"
            )
        self._router.adopt(target)
        self._progress = admin_pb2.Move()
        self._progress.CopyFrom(target.move)
        self._launch(target)
        return self.describe()

    def _launch(self, target: admin_pb2.Topology) -> None:
        self._task = asyncio.create_task(self._drive(target))

    # ---- the move -------------------------------------------------------------------------------------------

    async def _drive(self, current: admin_pb2.Topology) -> None:
        """Runs the move from its current phase to its end, retrying each step after an error."""
        assert self._progress is not None
        progress = self._progress
        started = time.perf_counter()
        backoff = RETRY_MIN_S
        while True:
            try:
                if current.move.phase == admin_pb2.Move.PHASE_COPYING:
                    await self._announce(current, STEP_TIMEOUT_S)  # again: a resumed move may not have reached all
                    await self._copy_and_verify(Layout.of(current), progress)
                    current = _next(current, phase=admin_pb2.Move.PHASE_SWITCHED)
                    await self._announce(current, STEP_TIMEOUT_S)
                await self._announce(current, STEP_TIMEOUT_S)
                done = _next(current)
                await self._announce(done, STEP_TIMEOUT_S, extra=current)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every step is retried; the error is shown in the layout
                progress.error = str(exc) if isinstance(exc, ShardSearchError) else f"{type(exc).__name__}: {exc}"
                logger.warning("move of shard %s: %s; retrying in %.0fs", progress.shard, progress.error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX_S)
                await self._router.refresh()
                if self._router.layout.version > current.version:
                    current = self._router.layout.topology  # someone else moved it on
                    if not current.HasField("move"):
                        break
        progress.error = ""
        progress.finished_unix_ms = time.time_ns() // 10**6
        took = time.perf_counter() - started
        self._metrics.moves.labels(admin_pb2.Move.Kind.Name(progress.kind)).inc()
        logger.info("move of shard %s finished in %.1fs: %d items copied in %d ranges", progress.shard, took,
                    sum(r.copied for r in progress.ranges), len(progress.ranges))

    async def _announce(
        self, target: admin_pb2.Topology, timeout: float, extra: admin_pb2.Topology | None = None
    ) -> None:
        """Stores `target` on every replica of every shard it (or `extra`) names, then uses it here."""
        names = dict(Layout.of(target).members())
        for name, addresses in Layout.of(extra).members() if extra is not None else ():
            names.setdefault(name, addresses)
        self._pool.set_members(list(names.items()))
        outcomes = await asyncio.gather(*(
            self._pool.write(
                self._pool.by_name[name], "SetTopology", shard_pb2.ShardSetTopologyRequest(topology=target, shard=name),
                timeout, every_replica=True,
            )
            for name in names
        ))
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise Unavailable(
                f"ring layout {target.version} reached {len(outcomes) - len(failed)} of {len(outcomes)} shards; "
                + "; ".join(str(o.error) for o in failed)
            )
        if not self._router.adopt(target):
            self._pool.set_members(self._router.layout.members())

    async def _copy_and_verify(self, layout: Layout, progress: admin_pb2.Move) -> None:
        move = layout.topology.move
        assert layout.previous is not None
        if move.kind == admin_pb2.Move.KIND_ADD:
            pairs = [(source, move.shard) for source in layout.previous.shards]
        else:
            pairs = [(move.shard, target) for target in layout.ring.shards]
        collections = await self._catalog.refresh(STEP_TIMEOUT_S)
        for spec in collections:  # created meanwhile by a coordinator that did not know the move yet
            await self._create_on(self._pool.by_name[move.shard] if move.kind == admin_pb2.Move.KIND_ADD else None,
                                  spec)
        ranges = {(r.collection, r.source, r.target): r for r in progress.ranges}
        for spec in collections:
            for source, target in pairs:
                if (spec.name, source, target) not in ranges:
                    ranges[spec.name, source, target] = progress.ranges.add(
                        collection=spec.name, source=source, target=target
                    )
        progress.error = ""
        gate = asyncio.Semaphore(COPY_CONCURRENCY)

        async def one(r: admin_pb2.MoveRange) -> None:
            async with gate:
                if not r.verified:
                    await self._ranges.copy(layout, r)
                    await self._ranges.verify(layout, r)

        await asyncio.gather(*(one(r) for r in list(progress.ranges)))



def _next(current: admin_pb2.Topology, phase: int | None = None) -> admin_pb2.Topology:
    """The layout after `current`: the same move in `phase`, or (no phase) the new ring alone."""
    following = admin_pb2.Topology(version=current.version + 1, shards=current.shards, vnodes=current.vnodes)
    if phase is not None:
        following.move.CopyFrom(current.move)
        following.move.phase = phase  # type: ignore[assignment]
        del following.move.ranges[:]
    return following
