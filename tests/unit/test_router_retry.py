"""The router's one retry rule (Router.routed): a request the shards refuse as routed by a stale ring layout
(ABORTED) is routed again by the layout re-read from them and re-sent, a bounded number of times, within the
caller's deadline; any other outcome is returned as it is. Against the fake replicas of fake_shards.py, which store
a layout and refuse requests stamped with an older version, as shards do."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import grpc
import pytest

from shardsearch import topology
from shardsearch.coordinator.router import LAYOUT_RETRIES, Router
from shardsearch.coordinator.shards import Outcome, Replication
from shardsearch.errors import DeadlineExceeded
from shardsearch.topology import Layout
from shardsearch.v1 import admin_pb2, shard_pb2
from tests.unit.fake_shards import FakeCluster, failing, hanging

IDS = [f"item-{i}" for i in range(60)]


def layout(version: int, *names: str, replicas: int = 1) -> admin_pb2.Topology:
    shards = [(name, [f"{name}-r{i}:50061" for i in range(replicas)]) for name in names]
    stored = topology.bootstrap(shards, vnodes=16)
    stored.version = version
    return stored


def announce(cluster: FakeCluster, stored: admin_pb2.Topology) -> None:
    """Every replica of every shard of `stored` (and of the others known) stores it, as an AddShard would."""
    for spec in stored.shards:
        for address in spec.addresses:
            cluster.replica(address)
    for replica in cluster.replicas.values():
        replica.topology = stored


class Reads:
    """`attempt` for Router.routed, as a Get by id is made: routed by the router's current layout and stamped with
    its version. Records the version and timeout of each attempt."""

    def __init__(self, router: Router, cluster: FakeCluster) -> None:
        self.router, self.pool = router, cluster.under_test
        assert self.pool is not None
        self.versions: list[int] = []
        self.timeouts: list[float] = []

    async def __call__(self, timeout: float) -> list[Outcome]:
        self.versions.append(self.router.version)
        self.timeouts.append(timeout)
        routed = [
            (shard, shard_pb2.ShardGetRequest(collection="c", ids=group, topology_version=self.router.version))
            for shard, group in self.router.read_groups(IDS)
        ]
        return await self.pool.fan_out("Get", routed, timeout)  # type: ignore[union-attr]


@pytest.fixture
async def cluster() -> AsyncIterator[FakeCluster]:
    cluster = FakeCluster()
    yield cluster
    await cluster.close()


async def started(cluster: FakeCluster, replicas: int = 1) -> Router:
    """Two shards storing layout 1, and a router that has read it (as a coordinator does at start-up)."""
    pool = cluster.pool({"s0": replicas, "s1": replicas}, Replication(write_quorum=1))
    announce(cluster, layout(1, "s0", "s1", replicas=replicas))
    router = Router(pool, topology.bootstrap([(s.name, [r.address for r in s.replicas]) for s in pool.shards], 16))
    assert await router.refresh() and router.version == 1
    return router


def topology_reads(cluster: FakeCluster) -> int:
    return len(cluster.called("GetTopology"))


async def test_a_request_refused_for_a_stale_layout_is_routed_again_by_the_new_layout(cluster: FakeCluster) -> None:
    """Another coordinator added shard s2 (layout 2): the first attempt is refused, the router re-reads the layout,
    and the second attempt, stamped 2, reaches the new shard with the ids it owns there."""
    router = await started(cluster)
    new = layout(2, "s0", "s1", "s2")
    announce(cluster, new)
    reads = Reads(router, cluster)
    outcomes = await router.routed(reads, time.monotonic() + 5.0)
    assert reads.versions == [1, 2] and router.version == 2
    assert all(o.ok for o in outcomes)
    assert sorted(i for o in outcomes for i in o.response.ids) == sorted(IDS)
    ring = Layout.of(new).read_ring()
    owned = [i for i, owner in zip(IDS, ring.owner_indices(IDS)) if ring.shards[owner] == "s2"]
    assert owned and [list(r.ids) for r in cluster.replicas["s2-r0:50061"].requests("Get")] == [owned]


@pytest.mark.parametrize("code", [None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.FAILED_PRECONDITION])
async def test_an_outcome_that_is_not_a_stale_layout_refusal_is_not_retried(
    cluster: FakeCluster, code: grpc.StatusCode | None
) -> None:
    """Answers, or failures of any other kind: one attempt, returned as it is, and the layout is not re-read."""
    router = await started(cluster)
    if code is not None:
        cluster.replicas["s1-r0:50061"].on["Get"] = failing(code)
    before = topology_reads(cluster)
    reads = Reads(router, cluster)
    outcomes = await router.routed(reads, time.monotonic() + 5.0)
    assert reads.versions == [1] and topology_reads(cluster) == before
    assert [o.error.code if o.error is not None else None for o in outcomes] == [None, code]


async def test_a_refusal_before_the_new_layout_can_be_read_pauses_and_reads_it_again(cluster: FakeCluster) -> None:
    """The shards already refuse layout 1, but the first re-read still finds it (a shard is storing layout 2): the
    router pauses, reads again, and the retry goes out by layout 2."""
    router = await started(cluster)
    announce(cluster, layout(2, "s0", "s1"))
    stale = layout(1, "s0", "s1")
    reads_seen = 0

    async def lagging_get_topology(request: Any) -> shard_pb2.ShardGetTopologyResponse | None:
        nonlocal reads_seen
        reads_seen += 1
        return shard_pb2.ShardGetTopologyResponse(topology=stale) if reads_seen <= 2 else None

    for replica in cluster.replicas.values():
        replica.on["GetTopology"] = lagging_get_topology
    reads = Reads(router, cluster)
    outcomes = await router.routed(reads, time.monotonic() + 5.0)
    assert reads.versions == [1, 2] and all(o.ok for o in outcomes)
    assert reads_seen == 4  # two reads of both shards


async def test_retries_are_bounded_by_layout_retries(cluster: FakeCluster) -> None:
    """A layout that keeps moving on: LAYOUT_RETRIES attempts in all, each by the newest layout read, and the last
    refusal is returned (the caller sees ABORTED)."""
    router = await started(cluster)
    reads = Reads(router, cluster)

    async def outrun(timeout: float) -> list[Outcome]:
        announce(cluster, layout(router.version + 1, "s0", "s1"))  # another coordinator moves on meanwhile
        return await reads(timeout)

    outcomes = await router.routed(outrun, time.monotonic() + 5.0)
    assert reads.versions == list(range(1, LAYOUT_RETRIES + 1))
    assert outcomes and all(o.error is not None and o.error.code == grpc.StatusCode.ABORTED for o in outcomes)


async def test_every_attempt_gets_what_is_left_of_the_deadline(cluster: FakeCluster) -> None:
    """The retry does not start a new deadline: each attempt's timeout is what remains of the caller's."""
    router = await started(cluster)
    announce(cluster, layout(2, "s0", "s1"))
    reads = Reads(router, cluster)
    start = time.monotonic()
    await router.routed(reads, start + 5.0)
    assert len(reads.timeouts) == 2
    assert 0 < reads.timeouts[1] <= reads.timeouts[0] <= 5.0


async def test_a_deadline_that_passes_during_a_refused_attempt_ends_the_call(cluster: FakeCluster) -> None:
    """The first attempt is refused after the deadline has passed: no retry, DEADLINE_EXCEEDED (the layout is still
    re-read, so the next call routes right)."""
    router = await started(cluster)
    announce(cluster, layout(2, "s0", "s1"))
    reads = Reads(router, cluster)

    async def slow(timeout: float) -> list[Outcome]:
        outcomes = await reads(timeout)
        await asyncio.sleep(0.03)
        return outcomes

    with pytest.raises(DeadlineExceeded):
        await router.routed(slow, time.monotonic() + 0.01)
    assert reads.versions == [1] and router.version == 2


async def test_a_deadline_already_passed_sends_nothing(cluster: FakeCluster) -> None:
    """A call whose deadline has passed raises DEADLINE_EXCEEDED before any attempt."""
    router = await started(cluster)
    reads = Reads(router, cluster)
    with pytest.raises(DeadlineExceeded):
        await router.routed(reads, time.monotonic() - 1.0)
    assert reads.versions == [] and cluster.called("Get") == []


async def test_a_write_refused_for_a_stale_layout_is_resent_and_fences_no_replica(cluster: FakeCluster) -> None:
    """Upserts routed by layout 1 to two-replica shards that hold layout 2: refused, re-sent with the same write
    version stamped with layout 2, and no replica is taken for one that missed a write."""
    router = await started(cluster, replicas=2)
    announce(cluster, layout(2, "s0", "s1", replicas=2))
    pool = cluster.under_test
    assert pool is not None

    async def writes(timeout: float) -> list[Outcome]:
        routed = [
            (shard, shard_pb2.ShardUpsertRequest(collection="c", ids=[IDS[i] for i in rows], version=42,
                                                 topology_version=router.version))
            for shard, rows in router.write_groups(IDS)
        ]
        return await pool.write_fan_out("Upsert", routed, timeout, version=42)

    outcomes = await router.routed(writes, time.monotonic() + 5.0)
    assert all(o.ok for o in outcomes) and sum(o.response.upserted for o in outcomes) == len(IDS)
    for replica in cluster.replicas.values():
        assert [(r.topology_version, r.version) for r in replica.requests("Upsert")] == [(1, 42), (2, 42)]
    assert not any(r.fenced for s in pool.shards for r in s.replicas) and cluster.called("Resync") == []


async def test_a_layout_read_that_hangs_is_not_waited_for_past_the_deadline(cluster: FakeCluster) -> None:
    """A refused call whose layout re-read meets a replica that does not answer ends with DEADLINE_EXCEEDED by its
    own deadline, not the read's; the read goes on without it (not cancelled) and serves the next call."""
    router = await started(cluster)
    announce(cluster, layout(2, "s0", "s1"))
    hung = cluster.replicas["s1-r0:50061"]
    answer = asyncio.Event()
    hung.on["GetTopology"] = hanging(answer)
    reads = Reads(router, cluster)
    with pytest.raises(DeadlineExceeded):
        await router.routed(reads, time.monotonic() + 0.2)
    assert reads.versions == [1]
    assert hung.requests("GetTopology") and "GetTopology" not in hung.cancelled  # still reading when the call ended
    answer.set()
    await router.refresh()  # the read in flight, shared
    assert router.version == 2
