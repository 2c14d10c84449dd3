"""Steps 3 and 4 of a shard move (coordinator/resharding.py): copying a range (collection, old owner, new owner) from
every replica of the old owner to every replica of the new one, and verifying it bucket by bucket.

A range's items and delete markers travel with their write versions and are applied like writes, so copies and
concurrent writes land in any order. Verification compares per-bucket counts and checksums of (id, version, vector)
on every replica of both sides; buckets that differ are copied again and re-checked.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc

from shardsearch import logs, topology
from shardsearch.coordinator.router import Router
from shardsearch.coordinator.shards import Shard, ShardPool
from shardsearch.errors import ShardSearchError, Unavailable
from shardsearch.topology import Layout
from shardsearch.v1 import admin_pb2, shard_pb2

if TYPE_CHECKING:
    from shardsearch.coordinator.resharding import MoveMetrics

EXPORT_CHUNK_ITEMS = 2048
VERIFY_ROUNDS = 30  # rounds of re-copying differing buckets before a range counts as failed (and is retried)
VERIFY_PAUSE_S = 0.1
STEP_TIMEOUT_S = 30.0


class RangeCopy:
    """Copies and verifies ranges through the pool, stamping each write with the router's layout version;
    `metrics` is the move's (copied items, mismatched buckets)."""

    def __init__(self, pool: ShardPool, router: Router, metrics: MoveMetrics) -> None:
        self._pool = pool
        self._router = router
        self._metrics = metrics

    async def copy(self, layout: Layout, r: admin_pb2.MoveRange, buckets: list[int] | None = None) -> bool:
        """Streams the range from every replica of the old owner (with the default write quorum of 1 an
        acknowledged write may be on one replica only; versions make the copies idempotent) to every replica of
        the new one. False if the collection was dropped meanwhile."""
        source, target = self._pool.by_name[r.source], self._pool.by_name[r.target]
        request = shard_pb2.ShardExportRequest(
            collection=r.collection, chunk_items=EXPORT_CHUNK_ITEMS,
            select=topology.move_range(layout, r.source, r.target, buckets or ()),
        )
        for replica in source.replicas:
            try:
                async for chunk in replica.stub.ExportCollection(request, metadata=logs.outgoing_metadata()):
                    if chunk.HasField("items") and chunk.items.ids:
                        chunk.items.topology_version = self._router.version
                        await self._apply(target, "Upsert", chunk.items)
                        r.copied += len(chunk.items.ids)
                        self._metrics.copied.inc(len(chunk.items.ids))
                    elif chunk.HasField("deletes") and chunk.deletes.ids:
                        chunk.deletes.topology_version = self._router.version
                        await self._apply(target, "Delete", chunk.deletes)
                        r.copied += len(chunk.deletes.ids)
                        self._metrics.copied.inc(len(chunk.deletes.ids))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False  # the collection was dropped meanwhile
                raise Unavailable(f"copying {r.collection} from {r.source} ({replica.address}): "
                                  f"{exc.code().name} {exc.details()}") from None
        return True

    async def _apply(self, shard: Shard, method: str, request: Any) -> None:
        outcome = await self._pool.write(shard, method, request, STEP_TIMEOUT_S, every_replica=True)
        if not outcome.ok:
            raise outcome.error  # type: ignore[misc]

    async def verify(self, layout: Layout, r: admin_pb2.MoveRange) -> None:
        """Compares per-bucket counts and checksums on every replica of both sides; a bucket is done once they all
        agree (from then on every write reaches both sides), and the others are copied again and re-checked
        (writes in flight make a bucket differ for a moment, never for long)."""
        pending = list(range(topology.BUCKETS))
        for _ in range(VERIFY_ROUNDS):
            answers = await asyncio.gather(
                *(self._checksums(layout, name, r) for name in (r.source, r.target))
            )
            if any(answer is None for answer in answers):
                r.verified = True  # the collection was dropped meanwhile: nothing to move
                return
            source, target = answers
            assert source is not None and target is not None
            r.items = sum(source[0].counts)
            every = [*source, *target]
            pending = [b for b in pending if len({(a.counts[b], a.sums[b]) for a in every}) > 1]
            if not pending:
                r.verified = True
                return
            r.mismatched_rounds += 1
            self._metrics.mismatches.inc(len(pending))
            await asyncio.sleep(VERIFY_PAUSE_S)
            await self.copy(layout, r, pending)
        raise ShardSearchError(
            f"{r.collection}: the copy from {r.source} to {r.target} still differs in {len(pending)} buckets after "
            f"{VERIFY_ROUNDS} rounds (a replica catching up?); the move will retry it", grpc.StatusCode.DATA_LOSS,
        )

    async def _checksums(
        self, layout: Layout, shard: str, r: admin_pb2.MoveRange
    ) -> list[shard_pb2.ShardChecksumResponse] | None:
        """The range's checksums on every replica of `shard` (None if the collection is gone)."""
        request = shard_pb2.ShardChecksumRequest(
            collection=r.collection, select=topology.move_range(layout, r.source, r.target),
            topology_version=self._router.version,
        )
        answers = []
        for replica in self._pool.by_name[shard].replicas:
            try:
                answers.append(await replica.stub.Checksum(
                    request, timeout=STEP_TIMEOUT_S, metadata=logs.outgoing_metadata()
                ))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise Unavailable(f"checksum of {r.collection} on {shard} ({replica.address}): "
                                  f"{exc.code().name} {exc.details()}") from None
        return answers
