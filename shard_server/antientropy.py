"""Anti-entropy: replicas compare per-bucket checksums with their peers periodically and pull what differs.

Coordinators fence a replica that missed a write and ask it to catch up, but that fence lives in one coordinator's
memory: if it dies first, or the client cancelled mid-write, or the replica applied nothing because its disk was
full, the replica would serve without the write for ever. So every replica with peers also repairs on its own:
every `interval_s` (jittered), for each collection both hold, it asks each peer for the 64 bucket checksums of this
shard's share (count and sum of (id, version, vector) hashes: the same checksums a shard move verifies with) and,
for the buckets that differ, streams the peer's items and delete markers in those buckets and applies them as
versioned writes through the log. A version only replaces an older one, so pulling never loses anything, and as
both sides pull from each other they converge on the newest acknowledged write of every id, whichever coordinator
sent it. Collections only one side holds are left alone (pulling one back could undo a drop), and nothing runs
while this replica is catching up or its ring layout differs from the peer's (a move re-copies ranges itself).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable, Sequence

import grpc
from prometheus_client import CollectorRegistry, Counter

from shardsearch import logs, topology
from shardsearch.errors import ShardSearchError
from shardsearch.shard_server.core import ShardCore
from shardsearch.shard_server.index import Collection
from shardsearch.v1 import shard_pb2, shard_pb2_grpc

logger = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0
REPAIR_WAIT_S = 10.0


class AntiEntropyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rounds = Counter(
            "shardsearch_shard_anti_entropy_rounds", "Comparisons of a collection with a peer, by result "
            "(same, repaired, skipped: the peer could not compare).", ["result"], registry=registry,
        )
        self.buckets = Counter(
            "shardsearch_shard_anti_entropy_buckets", "Checksum buckets that differed from a peer's (each pulled).",
            registry=registry,
        )
        self.items = Counter(
            "shardsearch_shard_anti_entropy_items", "Items and delete markers pulled from peers by anti-entropy.",
            registry=registry,
        )
        for result in ("same", "repaired", "skipped"):
            self.rounds.labels(result)


class StallWatch:
    """Notices that this process was paused (SIGSTOP, a frozen VM, a stalled event loop): a replica that was away
    may have missed writes that the coordinators acknowledged meanwhile, and the coordinator that knows may not be
    able to say so in time. `check()` runs on every read, so the first read after a pause already sees it."""

    TICK_S = 0.1

    def __init__(self, threshold_s: float, on_stall: Callable[[float], None]) -> None:
        self._threshold_s = threshold_s
        self._on_stall = on_stall
        self._last = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._threshold_s > 0:
            self._task = asyncio.create_task(self._tick(), name="stall watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def check(self) -> None:
        now = time.monotonic()
        gap, self._last = now - self._last, now
        if self._task is not None and gap > self._threshold_s:
            self._on_stall(gap)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.TICK_S)
            self.check()


class AntiEntropy:
    def __init__(
        self, core: ShardCore, peers: Sequence[str], connect: Callable[[str], grpc.aio.Channel],
        interval_s: float, metrics: AntiEntropyMetrics,
    ) -> None:
        self._core = core
        self._peers = list(peers)
        self._connect = connect
        self._interval_s = interval_s
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._repair: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval_s > 0 and self._peers:
            self._task = asyncio.create_task(self._loop(), name="anti-entropy")

    def stalled(self, gap_s: float) -> None:
        """This replica was paused for `gap_s`: it refuses reads until one round with a peer has repaired it (or
        no peer could be reached for `REPAIR_WAIT_S`)."""
        if self._repair is not None and not self._repair.done():
            return
        self._core.repairing = True
        logger.warning("replica %s was paused for %.1fs: refusing reads until it has compared with a peer",
                       self._core.name, gap_s)
        self._repair = asyncio.create_task(self._repair_after_stall(), name="repair after a stall")

    async def _repair_after_stall(self) -> None:
        logs.bind_request_id("stall-repair-" + logs.new_request_id())
        deadline = time.monotonic() + REPAIR_WAIT_S
        try:
            while time.monotonic() < deadline:
                for peer in self._peers:
                    try:
                        pulled = await self.compare(peer)
                    except (grpc.aio.AioRpcError, OSError, ShardSearchError) as exc:
                        logger.info("repair from %s failed (%s); trying the next peer", peer, exc)
                        continue
                    logger.info("replica %s compared with %s after a pause (%d pulled); serving reads again",
                                self._core.name, peer, pulled)
                    return
                await asyncio.sleep(0.2)
            logger.warning("replica %s: no peer answered in %.0fs after a pause; serving its own data",
                           self._core.name, REPAIR_WAIT_S)
        finally:
            self._core.repairing = False

    async def close(self) -> None:
        for task in (self._task, self._repair):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s * random.uniform(0.75, 1.25))
            if self._core.catching_up:
                continue
            logs.bind_request_id("anti-entropy-" + logs.new_request_id())
            for peer in self._peers:
                try:
                    await self.compare(peer)
                except (grpc.aio.AioRpcError, OSError, ShardSearchError) as exc:
                    code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                    logger.debug("anti-entropy with %s skipped (%s)", peer, code)
                    self._metrics.rounds.labels("skipped").inc()

    def _own_share(self) -> shard_pb2.RingSelection | None:
        """This shard's share of the ring (all ids when no layout is stored yet); None during a move (which copies
        and verifies its ranges itself)."""
        stored = self._core.layout.stored
        if not (stored.topology.shards and stored.shard):
            return shard_pb2.RingSelection(ring=[self._core.name], owners=[self._core.name])
        layout = topology.Layout.of(stored.topology)
        return None if layout.moving else topology.selection(layout.ring, [stored.shard])

    async def compare(self, peer: str) -> int:
        """One round against `peer`: returns the number of items and markers pulled."""
        core = self._core
        if self._own_share() is None:
            return 0
        pulled = 0
        async with self._connect(peer) as channel:
            stub = shard_pb2_grpc.ShardServiceStub(channel)
            for name in sorted(core.collection_names()):
                coll = core.get_collection(name)
                if coll is None:
                    continue
                share = self._own_share()
                if share is None:
                    return pulled
                try:
                    theirs = await stub.Checksum(shard_pb2.ShardChecksumRequest(
                        collection=name, select=share, topology_version=core.layout.version,
                    ), timeout=CALL_TIMEOUT_S, metadata=logs.outgoing_metadata())
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ABORTED,
                                      grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS):
                        self._metrics.rounds.labels("skipped").inc()  # missing there, another layout, catching up
                        continue
                    raise
                counts, sums = await core.run(coll.checksum, topology.Selector(share).mask)
                differ = [b for b in range(topology.BUCKETS)
                          if (int(counts[b]), int(sums[b])) != (theirs.counts[b], theirs.sums[b])]
                if not differ:
                    self._metrics.rounds.labels("same").inc()
                    continue
                self._metrics.rounds.labels("repaired").inc()
                self._metrics.buckets.inc(len(differ))
                share.buckets.extend(differ)
                got = await self._pull(stub, coll, share)
                pulled += got
                logger.info("anti-entropy: collection %s differed from %s in %d buckets; pulled %d items and markers",
                            name, peer, len(differ), got)
        return pulled

    async def _pull(self, stub: shard_pb2_grpc.ShardServiceStub, coll: Collection,
                    share: shard_pb2.RingSelection) -> int:
        pulled = 0
        export = stub.ExportCollection(shard_pb2.ShardExportRequest(collection=coll.spec.name, select=share),
                                       metadata=logs.outgoing_metadata())
        async for chunk in export:
            if chunk.HasField("items"):
                pulled += await self._core.apply_copy(coll, items=chunk.items)
            elif chunk.HasField("deletes"):
                pulled += await self._core.apply_copy(coll, deletes=chunk.deletes)
        self._metrics.items.inc(pulled)
        return pulled
