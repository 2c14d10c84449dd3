"""Catching up from peer replicas: at start-up, and when a coordinator says this replica missed a write.

A replica catching up refuses reads (UNAVAILABLE, so coordinators read from another replica; health says
NOT_SERVING, so Kubernetes does too) but keeps applying writes. It streams every peer's collections (items and delete
markers with their versions) and applies them as ordinary versioned writes, through its write-ahead log. A version
only replaces an older one, so the outcome does not depend on the order in which writes and the peers' items
arrive: afterwards this replica holds, per id, the newest write any of them acknowledged. Peers that are catching up
themselves are still valid sources (they only ever hand over real writes), so replicas restarted together do not
wait for each other; peers that serve reads are tried first.

Reads come back once one peer has been copied completely, or, if no peer can be reached within `wait_s`, with the
local data alone (logged as a warning: that is the case where every other replica is down too); the replica then
keeps trying its peers in the background and copies the first that comes back (it may hold writes acknowledged
while this replica was away).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shardsearch import logs
from shardsearch.errors import AlreadyExists, ShardSearchError
from shardsearch.metrics import LATENCY_BUCKETS
from shardsearch.shard_server.core import ShardCore
from shardsearch.shard_server.index import Collection
from shardsearch.v1 import search_pb2, shard_pb2, shard_pb2_grpc

logger = logging.getLogger(__name__)

RETRY_S = 0.5
HEALTH_TIMEOUT_S = 1.0
CLOCK_SKEW_NS = 1_000_000_000  # margin between a coordinator's write versions and this machine's clock


class ReplicationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.catching_up = Gauge(
            "shardsearch_shard_catching_up", "1 while this replica catches up from its peers (reads refused).",
            registry=registry,
        )
        self.runs = Counter(
            "shardsearch_shard_catch_ups", "Catch-ups finished, by result (copied: from a peer; alone: no peer).",
            ["result"], registry=registry,
        )
        self.duration = Histogram(
            "shardsearch_shard_catch_up_duration_seconds", "Time from the start of a catch-up to serving reads.",
            buckets=(*LATENCY_BUCKETS, 30.0, 60.0, 300.0, 1800.0), registry=registry,
        )
        self.items = Counter(
            "shardsearch_shard_catch_up_items", "Items and delete markers received from peers.", registry=registry
        )


class Replication:
    def __init__(
        self, core: ShardCore, peers: Sequence[str], connect: Callable[[str], grpc.aio.Channel],
        wait_s: float, metrics: ReplicationMetrics, on_state: Callable[[bool], Awaitable[None]],
    ) -> None:
        self._core = core
        self._peers = list(peers)
        self._connect = connect
        self._wait_s = wait_s
        self._metrics = metrics
        self._on_state = on_state
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._background = False  # serving reads while still looking for a peer
        self._copy_started_ns = 0  # when the copy under way began
        self._covered_ns = 0  # when the last complete copy began: writes older than that are here
        core.on_resync = self.request
        core.on_write_failure(lambda reason: self.request(reason))

    def request(self, reason: str, missed_version: int = 0) -> None:
        """Starts a catch-up, unless a copy that began after the missed write has finished or is under way."""
        if missed_version and missed_version + CLOCK_SKEW_NS < self._covered_ns:
            logger.info("resync not needed (%s): a catch-up that began later has finished", reason)
            return
        running = self._task is not None and not self._task.done()
        if running and not self._background and missed_version and missed_version + CLOCK_SKEW_NS < self._copy_started_ns:
            logger.info("resync not needed (%s): the catch-up under way began later", reason)
            return
        self._core.catching_up = True
        self._metrics.catching_up.set(1)
        if running and not self._background:
            self._again = True  # the missed write may postdate the copy under way: copy once more
            logger.info("catch-up requested again (%s); will run once more after the current one", reason)
            return
        if running:
            assert self._task is not None
            self._task.cancel()
        logger.info("replica %s catching up from %s: %s", self._core.name, ", ".join(self._peers), reason)
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        if not logs.current_request_id():  # at start-up; a Resync's catch-up keeps the id of the write it missed
            logs.bind_request_id("catch-up-" + logs.new_request_id())
        self._background = False
        await self._on_state(False)
        while True:
            self._again = False
            started = time.perf_counter()
            source = await self._catch_up(self._wait_s)
            elapsed = time.perf_counter() - started
            self._metrics.duration.observe(elapsed)
            self._metrics.runs.labels("copied" if source else "alone").inc()
            if source:
                logger.info("replica %s caught up from %s in %.2fs", self._core.name, source, elapsed)
            else:
                logger.warning(
                    "replica %s: no peer reachable in %.0fs (%s); serving its own data", self._core.name,
                    self._wait_s, ", ".join(self._peers),
                )
            if not self._again:
                break
        self._core.catching_up = False
        self._metrics.catching_up.set(0)
        await self._on_state(True)
        if source is None:
            self._background = True
            source = await self._catch_up(None)
            logger.info("replica %s copied %s in the background (it was unreachable at first)",
                        self._core.name, source)

    async def _catch_up(self, wait_s: float | None) -> str | None:
        """Copies peers until one was copied completely; returns its address, or None if none could be in
        `wait_s` (None: keep trying)."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            stuck_here = False  # a peer answered but this replica could not apply what it sent
            for peer in await self._by_readiness():
                try:
                    started = time.time_ns()
                    self._copy_started_ns = started
                    await self._copy(peer)
                    self._covered_ns = max(self._covered_ns, started)
                    self._core.reseeded()
                    return peer
                except (grpc.aio.AioRpcError, OSError) as exc:
                    code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
                    logger.info("catch-up from %s failed (%s); trying the next peer", peer, code)
                except ShardSearchError as exc:  # this replica could not apply what it got (its disk is full?)
                    stuck_here = True
                    logger.warning("catch-up from %s failed here: %s; trying again", peer, exc)
            # Serving alone is for peers that cannot be reached; a replica that knows it is behind (its own writes
            # fail) keeps refusing reads until it has caught up.
            if deadline is not None and time.monotonic() >= deadline and not stuck_here:
                return None
            await asyncio.sleep(RETRY_S)

    async def _by_readiness(self) -> list[str]:
        """The peers, those serving reads first: a peer that is catching up itself is a valid source (it hands over
        only real writes), but a current one is a better one, and two stale replicas then do not copy each other
        while a current one answers (anti-entropy repairs what a copy from a stale one missed)."""

        async def serving(peer: str) -> bool:
            try:
                async with self._connect(peer) as channel:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                           timeout=HEALTH_TIMEOUT_S)
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
            except (grpc.aio.AioRpcError, OSError):
                return False

        ready = await asyncio.gather(*(serving(peer) for peer in self._peers))
        return [p for p, r in zip(self._peers, ready) if r] + [p for p, r in zip(self._peers, ready) if not r]

    async def _copy(self, peer: str) -> None:
        core = self._core
        async with self._connect(peer) as channel:
            stub = shard_pb2_grpc.ShardServiceStub(channel)
            layout = await stub.GetTopology(shard_pb2.ShardGetTopologyRequest(), metadata=logs.outgoing_metadata())
            await core.layout.adopt(layout)  # a move ran while this replica was away
            coll = None
            export = stub.ExportCollection(shard_pb2.ShardExportRequest(), metadata=logs.outgoing_metadata())
            async for chunk in export:
                if chunk.HasField("collection"):
                    coll = await self._local(chunk.collection)
                elif coll is None:
                    continue  # a collection this replica cannot hold (see _local)
                elif chunk.HasField("items"):
                    self._metrics.items.inc(len(chunk.items.ids))
                    await core.apply_copy(coll, items=chunk.items)
                elif chunk.HasField("deletes"):
                    self._metrics.items.inc(len(chunk.deletes.ids))
                    await core.apply_copy(coll, deletes=chunk.deletes)

    async def _local(self, spec: search_pb2.Collection) -> Collection | None:
        """This replica's copy of a peer's collection, created if missing (it was created while this one was
        down). None if the two disagree on the vector space (a half-finished drop and re-create; fix by hand)."""
        core = self._core
        coll = core.get_collection(spec.name)
        if coll is None:
            try:
                coll = await core.create(spec)
            except AlreadyExists:
                coll = core.get_collection(spec.name)
        if coll is not None and (coll.spec.dim, coll.spec.metric) != (spec.dim, spec.metric):
            logger.error(
                "collection %s: peer has dim %d metric %d, this replica dim %d metric %d; not copied",
                spec.name, spec.dim, spec.metric, coll.spec.dim, coll.spec.metric,
            )
            return None
        return coll
