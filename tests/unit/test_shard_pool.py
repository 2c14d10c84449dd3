"""The shard pool's logic against fake replicas: reads fail over and hedge within one call, writes count a quorum,
a replica that missed a write is fenced (not read from) until it accepts a resync, and every call ends in an Outcome.

The fakes (tests/unit/fake_shards.py) stand in for grpc.aio channels under the generated stubs: messages cross them
serialized (the real shard_pb2 types), failures are `grpc.aio.AioRpcError`s with real status codes, and a call's
timeout ends it with DEADLINE_EXCEEDED (the handler is cancelled, as a server's would be)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import grpc
import pytest

from shardsearch.coordinator.shards import Replication, ShardPool
from shardsearch.errors import AnswerTooLarge
from shardsearch.v1 import admin_pb2, search_pb2, shard_pb2
from tests.unit.fake_shards import FakeCluster, failing, first_call, hanging, rpc_error, until


@pytest.fixture
async def cluster() -> AsyncIterator[FakeCluster]:
    cluster = FakeCluster()
    yield cluster
    await cluster.close()


async def settled(pool: ShardPool) -> None:
    """Waits until the pool's background resyncs have ended."""
    await until(lambda: not pool._tasks)


def record_resyncs(pool: ShardPool) -> list[set[str]]:
    """The collections of each resync the pool reports as accepted, in order."""
    resynced: list[set[str]] = []

    async def on_resynced(collections: set[str]) -> None:
        resynced.append(collections)

    pool.on_resynced = on_resynced
    return resynced


def get(*ids: str) -> shard_pb2.ShardGetRequest:
    return shard_pb2.ShardGetRequest(collection="c", ids=list(ids) or ["a"])


def upsert(*ids: str, collection: str = "c") -> shard_pb2.ShardUpsertRequest:
    return shard_pb2.ShardUpsertRequest(collection=collection, ids=list(ids) or ["a"], version=5)


FAILOVERS = "shardsearch_coordinator_shard_failovers_total"
HEDGES = "shardsearch_coordinator_shard_hedged_requests_total"
FENCED = "shardsearch_coordinator_shard_fenced_replicas"
RESYNCS = "shardsearch_coordinator_shard_resyncs_total"
ERRORS = "shardsearch_coordinator_shard_errors_total"


# ---- outcomes -----------------------------------------------------------------------------------------------


async def test_a_read_outcome_carries_the_response_the_shard_and_the_replica(cluster: FakeCluster) -> None:
    """An answered read: ok, the deserialized response, its shard and the replica that answered."""
    pool = cluster.pool({"s0": 1})
    request = get("x", "y")
    outcome = await pool.call(pool.by_name["s0"], "Get", request, timeout=1.0)
    assert outcome.ok and outcome.error is None
    assert isinstance(outcome.response, shard_pb2.ShardGetResponse) and list(outcome.response.ids) == ["x", "y"]
    assert outcome.shard is pool.by_name["s0"]
    assert outcome.replica is pool.by_name["s0"].replicas[0] and outcome.replica.address == "s0-r0:50061"
    assert outcome.seconds >= 0
    assert cluster.replicas["s0-r0:50061"].requests("Get") == [request]  # it crossed the wire intact


async def test_a_failed_read_outcome_keeps_the_status_and_names_the_replica(cluster: FakeCluster) -> None:
    """A refused read never raises: the outcome holds the shard's status and message, naming where it happened."""
    pool = cluster.pool({"s0": 1})
    cluster.replicas["s0-r0:50061"].on["Get"] = failing(grpc.StatusCode.NOT_FOUND, "no collection 'c'")
    outcome = await pool.call(pool.by_name["s0"], "Get", get(), timeout=1.0)
    assert not outcome.ok and outcome.response is None
    assert outcome.error is not None and outcome.error.code == grpc.StatusCode.NOT_FOUND
    assert str(outcome.error) == "shard s0 (s0-r0:50061): no collection 'c'"
    assert outcome.replica is pool.by_name["s0"].replicas[0]
    assert cluster.metric(ERRORS, code="NOT_FOUND") == 1


async def test_a_read_past_its_deadline_ends_in_deadline_exceeded(cluster: FakeCluster) -> None:
    """A replica that does not answer within the timeout: the outcome is DEADLINE_EXCEEDED, not an exception."""
    pool = cluster.pool({"s0": 1})
    cluster.replicas["s0-r0:50061"].on["Get"] = hanging()
    outcome = await pool.call(pool.by_name["s0"], "Get", get(), timeout=0.02)
    assert outcome.error is not None and outcome.error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cluster.replicas["s0-r0:50061"].cancelled == ["Get"]


async def test_fan_out_returns_one_outcome_per_shard_in_request_order(cluster: FakeCluster) -> None:
    """Concurrent reads to several shards: outcomes in the order asked, one shard's failure left to its own."""
    pool = cluster.pool({"s0": 1, "s1": 1, "s2": 1})
    cluster.replicas["s1-r0:50061"].on["Get"] = failing(grpc.StatusCode.INTERNAL, "boom")
    outcomes = await pool.fan_out("Get", [(pool.by_name[n], get(n)) for n in ("s2", "s0", "s1")], timeout=1.0)
    assert [o.shard.name for o in outcomes] == ["s2", "s0", "s1"]
    assert [o.ok for o in outcomes] == [True, True, False]
    assert [list(o.response.ids) for o in outcomes[:2]] == [["s2"], ["s0"]]
    assert [o.shard.name for o in await pool.broadcast("Get", get(), timeout=1.0)] == ["s0", "s1", "s2"]


# ---- fail-over ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.CANCELLED])
async def test_a_read_fails_over_to_another_replica(cluster: FakeCluster, code: grpc.StatusCode) -> None:
    """Unreachable, overloaded (or catching up: UNAVAILABLE) or cancelled: the next replica answers, in one call."""
    pool = cluster.pool({"s0": 2})
    first = first_call(failing(code))
    for replica in cluster.replicas.values():
        replica.on["Get"] = first
    outcome = await pool.call(pool.by_name["s0"], "Get", get(), timeout=1.0)
    tried = cluster.called("Get")
    assert len(tried) == 2 and tried[0] != tried[1]
    assert outcome.ok and outcome.replica is not None and outcome.replica.address == tried[1]
    assert cluster.metric(FAILOVERS) == 1


@pytest.mark.parametrize("code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED])
async def test_a_read_does_not_fail_over_on_an_answer_another_replica_would_give_too(
    cluster: FakeCluster, code: grpc.StatusCode
) -> None:
    """A refusal about the request (or the deadline, or a stale layout) is the outcome: no other replica is asked."""
    pool = cluster.pool({"s0": 2})
    for replica in cluster.replicas.values():
        replica.on["Get"] = failing(code)
    outcome = await pool.call(pool.by_name["s0"], "Get", get(), timeout=1.0)
    assert len(cluster.called("Get")) == 1
    assert outcome.error is not None and outcome.error.code == code
    assert cluster.metric(FAILOVERS) == 0


async def test_an_answer_too_large_is_not_failed_over(cluster: FakeCluster) -> None:
    """RESOURCE_EXHAUSTED for the message size limit: every replica would say the same, so it is the outcome."""
    pool = cluster.pool({"s0": 2})
    for replica in cluster.replicas.values():
        replica.on["Get"] = failing(grpc.StatusCode.RESOURCE_EXHAUSTED, "Sent message larger than max (9 vs. 4)")
    outcome = await pool.call(pool.by_name["s0"], "Get", get(), timeout=1.0)
    assert isinstance(outcome.error, AnswerTooLarge)
    assert len(cluster.called("Get")) == 1


async def test_when_every_replica_is_unavailable_each_is_tried_once(cluster: FakeCluster) -> None:
    """All replicas down: each is asked once, and the outcome is the last one's UNAVAILABLE."""
    pool = cluster.pool({"s0": 3})
    for replica in cluster.replicas.values():
        replica.on["Get"] = failing(grpc.StatusCode.UNAVAILABLE)
    outcome = await pool.call(pool.by_name["s0"], "Get", get(), timeout=1.0)
    tried = cluster.called("Get")
    assert sorted(tried) == sorted(cluster.replicas)
    assert outcome.error is not None and outcome.error.code == grpc.StatusCode.UNAVAILABLE
    assert outcome.replica is not None and outcome.replica.address == tried[-1]
    assert cluster.metric(FAILOVERS) == 2


async def test_a_replica_that_just_failed_is_read_last(cluster: FakeCluster) -> None:
    """After a fail-over, the next reads go to the replica that answered, not back to the one that failed."""
    pool = cluster.pool({"s0": 2})
    first = first_call(failing(grpc.StatusCode.UNAVAILABLE))
    for replica in cluster.replicas.values():
        replica.on["Get"] = first
    await pool.call(pool.by_name["s0"], "Get", get(), timeout=1.0)
    failed, answered = cluster.called("Get")
    for _ in range(3):
        assert (await pool.call(pool.by_name["s0"], "Get", get(), timeout=1.0)).replica.address == answered
    assert cluster.called("Get").count(failed) == 1


async def test_reads_go_to_the_replica_with_fewer_requests_outstanding(cluster: FakeCluster) -> None:
    """While one read is held up on a replica, the next reads go to the other, whatever the round robin says."""
    pool = cluster.pool({"s0": 2})
    release = asyncio.Event()
    first = first_call(hanging(release))
    for replica in cluster.replicas.values():
        replica.on["Get"] = first
    held = asyncio.create_task(pool.call(pool.by_name["s0"], "Get", get(), timeout=5.0))
    await until(lambda: len(cluster.log) == 1)
    busy = cluster.log[0][0]
    others = [(await pool.call(pool.by_name["s0"], "Get", get(), timeout=1.0)).replica.address for _ in range(3)]
    assert busy not in others
    release.set()
    assert (await held).replica.address == busy


# ---- hedging ------------------------------------------------------------------------------------------------


async def test_a_slow_read_is_hedged_to_another_replica_after_the_hedge_delay(cluster: FakeCluster) -> None:
    """The first replica does not answer: after the hedge delay a second one is asked, its answer wins, and the
    first call is cancelled."""
    pool = cluster.pool({"s0": 2}, Replication(hedge_delay_s=0.01))
    first = first_call(hanging())
    for replica in cluster.replicas.values():
        replica.on["Get"] = first
    outcome = await pool.call(pool.by_name["s0"], "Get", get("h"), timeout=5.0)
    slow, fast = cluster.called("Get")
    assert outcome.ok and outcome.replica.address == fast and list(outcome.response.ids) == ["h"]
    assert cluster.metric(HEDGES) == 1 and cluster.metric(FAILOVERS) == 0
    await until(lambda: cluster.replicas[slow].cancelled == ["Get"])


async def test_a_read_answered_before_the_hedge_delay_is_not_hedged(cluster: FakeCluster) -> None:
    """A prompt answer: one replica asked, no hedge."""
    pool = cluster.pool({"s0": 2}, Replication(hedge_delay_s=1.0))
    outcome = await pool.call(pool.by_name["s0"], "Get", get(), timeout=5.0)
    assert outcome.ok and len(cluster.called("Get")) == 1
    assert cluster.metric(HEDGES) == 0


async def test_without_a_hedge_delay_a_slow_read_waits_for_its_replica(cluster: FakeCluster) -> None:
    """Hedge delay 0 (the default): a slow replica is waited for, no other one is asked."""
    pool = cluster.pool({"s0": 2})

    async def slow(request: Any) -> None:
        await asyncio.sleep(0.02)

    for replica in cluster.replicas.values():
        replica.on["Get"] = slow
    outcome = await pool.call(pool.by_name["s0"], "Get", get(), timeout=5.0)
    assert outcome.ok and cluster.called("Get") == [outcome.replica.address]
    assert cluster.metric(HEDGES) == 0


async def test_a_single_replica_is_not_hedged(cluster: FakeCluster) -> None:
    """With one replica there is nobody to hedge to: the slow answer is awaited."""
    pool = cluster.pool({"s0": 1}, Replication(hedge_delay_s=0.005))

    async def slow(request: Any) -> None:
        await asyncio.sleep(0.02)

    cluster.replicas["s0-r0:50061"].on["Get"] = slow
    assert (await pool.call(pool.by_name["s0"], "Get", get(), timeout=5.0)).ok
    assert cluster.metric(HEDGES) == 0


async def test_a_read_is_hedged_once(cluster: FakeCluster) -> None:
    """Three replicas, the first two slow: one hedge only; the third is not asked while the two are pending."""
    pool = cluster.pool({"s0": 3}, Replication(hedge_delay_s=0.005))
    release = asyncio.Event()
    for replica in cluster.replicas.values():
        replica.on["Get"] = hanging(release)
    read = asyncio.create_task(pool.call(pool.by_name["s0"], "Get", get(), timeout=5.0))
    await until(lambda: len(cluster.called("Get")) == 2)
    await asyncio.sleep(0.03)  # several hedge delays
    assert len(cluster.called("Get")) == 2 and cluster.metric(HEDGES) == 1
    release.set()
    outcome = await read
    assert outcome.ok and outcome.replica.address in cluster.called("Get")


async def test_a_failed_hedge_leaves_the_first_replica_to_answer(cluster: FakeCluster) -> None:
    """The hedge fails (UNAVAILABLE) while the first replica is still working: its answer is the outcome."""
    pool = cluster.pool({"s0": 2}, Replication(hedge_delay_s=0.005))
    release = asyncio.Event()

    async def fail_and_release(request: Any) -> None:
        release.set()
        raise rpc_error(grpc.StatusCode.UNAVAILABLE)

    calls = 0

    async def handler(request: Any) -> None:
        nonlocal calls
        calls += 1
        await (hanging(release) if calls == 1 else fail_and_release)(request)

    for replica in cluster.replicas.values():
        replica.on["Get"] = handler
    outcome = await pool.call(pool.by_name["s0"], "Get", get(), timeout=5.0)
    first, hedge = cluster.called("Get")
    assert outcome.ok and outcome.replica.address == first
    assert cluster.metric(HEDGES) == 1 and cluster.metric(ERRORS, code="UNAVAILABLE") == 1


async def test_a_hedged_read_fails_over_at_once_when_the_first_replica_fails(cluster: FakeCluster) -> None:
    """With hedging on, a replica that fails fast is replaced at once (a fail-over, not a hedge)."""
    pool = cluster.pool({"s0": 2}, Replication(hedge_delay_s=5.0))
    first = first_call(failing(grpc.StatusCode.UNAVAILABLE))
    for replica in cluster.replicas.values():
        replica.on["Get"] = first
    outcome = await pool.call(pool.by_name["s0"], "Get", get(), timeout=1.0)
    failed, answered = cluster.called("Get")
    assert outcome.ok and outcome.replica.address == answered
    assert cluster.metric(FAILOVERS) == 1 and cluster.metric(HEDGES) == 0


async def test_a_hedged_read_that_nobody_answers_ends_at_the_deadline(cluster: FakeCluster) -> None:
    """Both replicas hang: the hedged read ends with DEADLINE_EXCEEDED within the call's timeout."""
    pool = cluster.pool({"s0": 2}, Replication(hedge_delay_s=0.005))
    for replica in cluster.replicas.values():
        replica.on["Get"] = hanging()
    outcome = await pool.call(pool.by_name["s0"], "Get", get(), timeout=0.04)
    assert outcome.error is not None and outcome.error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert sorted(cluster.called("Get")) == sorted(cluster.replicas)


async def test_searches_over_the_stream_are_hedged_too(cluster: FakeCluster) -> None:
    """Search goes over the long-lived SearchStream; a replica slow to answer on it is hedged like a unary read."""
    pool = cluster.pool({"s0": 2}, Replication(hedge_delay_s=0.01), streams=True)
    first = first_call(hanging())
    for replica in cluster.replicas.values():
        replica.on["Search"] = first
    request = shard_pb2.ShardSearchRequest(collection="c", n=1, k=2)
    outcome = await pool.call(pool.by_name["s0"], "Search", request, timeout=5.0)
    slow, fast = cluster.called("Search")
    assert outcome.ok and isinstance(outcome.response, shard_pb2.ShardSearchResponse)
    assert list(outcome.response.ids) == [fast, fast]
    assert cluster.metric(HEDGES) == 1
    assert all(replica.stream_opens == 1 for replica in cluster.replicas.values())


async def test_a_shard_without_search_streams_is_searched_with_unary_calls(cluster: FakeCluster) -> None:
    """An older shard answers SearchStream with UNIMPLEMENTED: the search is sent unary instead, and from then on
    no stream is opened to it."""
    pool = cluster.pool({"s0": 1}, streams=True)
    old = cluster.replicas["s0-r0:50061"]
    old.knows_streams = False
    request = shard_pb2.ShardSearchRequest(collection="c", n=1, k=1)
    for _ in range(2):
        outcome = await pool.call(pool.by_name["s0"], "Search", request, timeout=1.0)
        assert outcome.ok and list(outcome.response.ids) == [old.address]
    assert old.stream_opens == 1 and old.requests("Search") == [request, request]


# ---- writes: the quorum -------------------------------------------------------------------------------------


async def test_a_write_goes_to_every_replica_and_its_outcome_names_no_replica(cluster: FakeCluster) -> None:
    """Every replica gets the write; the outcome holds the first answer and no replica (it is the shard's)."""
    pool = cluster.pool({"s0": 3})
    request = upsert("a", "b")
    outcome = await pool.write(pool.by_name["s0"], "Upsert", request, timeout=1.0, version=5)
    assert outcome.ok and outcome.replica is None and outcome.shard is pool.by_name["s0"]
    assert outcome.response == shard_pb2.ShardUpsertResponse(upserted=2)
    assert all(replica.requests("Upsert") == [request] for replica in cluster.replicas.values())
    assert not any(replica.fenced for replica in pool.by_name["s0"].replicas)


async def test_a_write_is_acknowledged_once_the_quorum_has_it(cluster: FakeCluster) -> None:
    """Quorum 2 of 3: one replica failing still acknowledges the write."""
    pool = cluster.pool({"s0": 3}, Replication(write_quorum=2))
    cluster.replicas["s0-r2:50061"].on["Upsert"] = failing(grpc.StatusCode.UNAVAILABLE)
    outcome = await pool.write(pool.by_name["s0"], "Upsert", upsert(), timeout=1.0, version=5)
    assert outcome.ok and outcome.response.upserted == 1


async def test_a_write_short_of_the_quorum_fails_and_still_fences_the_replicas_that_missed_it(
    cluster: FakeCluster,
) -> None:
    """Quorum 2 of 3, two replicas failing: the write fails, saying how far it got, and since one replica applied
    it the two that did not are fenced."""
    pool = cluster.pool({"s0": 3}, Replication(write_quorum=2))
    for address in ("s0-r1:50061", "s0-r2:50061"):
        cluster.replicas[address].on["Upsert"] = failing(grpc.StatusCode.UNAVAILABLE, "connection refused")
        cluster.replicas[address].on["Resync"] = hanging()
    outcome = await pool.write(pool.by_name["s0"], "Upsert", upsert(), timeout=1.0, version=5)
    assert outcome.error is not None and outcome.error.code == grpc.StatusCode.UNAVAILABLE
    assert str(outcome.error).startswith("Upsert reached 1 of 3 replicas of s0, 2 needed: shard s0 (s0-r")
    assert "connection refused" in str(outcome.error)
    assert [r.fenced for r in pool.by_name["s0"].replicas] == [False, True, True]
    assert cluster.metric(FENCED) == 2


async def test_write_quorum_zero_needs_every_replica(cluster: FakeCluster) -> None:
    """Quorum 0 means all: one replica of two failing fails the write."""
    pool = cluster.pool({"s0": 2}, Replication(write_quorum=0))
    cluster.replicas["s0-r1:50061"].on["Upsert"] = failing(grpc.StatusCode.UNAVAILABLE)
    outcome = await pool.write(pool.by_name["s0"], "Upsert", upsert(), timeout=1.0, version=5)
    assert outcome.error is not None and outcome.error.code == grpc.StatusCode.UNAVAILABLE
    assert str(outcome.error).startswith("Upsert reached 1 of 2 replicas of s0, 2 needed")


async def test_every_replica_overrides_the_quorum(cluster: FakeCluster) -> None:
    """A write that must reach every replica (collection definitions, layouts) fails on one miss, quorum 1 or not."""
    pool = cluster.pool({"s0": 2}, Replication(write_quorum=1))
    cluster.replicas["s0-r1:50061"].on["SetTopology"] = failing(grpc.StatusCode.UNAVAILABLE)
    request = shard_pb2.ShardSetTopologyRequest(topology=admin_pb2.Topology(version=2), shard="s0")
    outcome = await pool.write(pool.by_name["s0"], "SetTopology", request, timeout=1.0, every_replica=True)
    assert not outcome.ok and str(outcome.error).startswith("SetTopology reached 1 of 2 replicas of s0, 2 needed")


async def test_a_quorum_above_the_replica_count_is_capped_at_all_of_them(cluster: FakeCluster) -> None:
    """Quorum 3 with 2 replicas: both acknowledging is enough."""
    pool = cluster.pool({"s0": 2}, Replication(write_quorum=3))
    assert (await pool.write(pool.by_name["s0"], "Upsert", upsert(), timeout=1.0, version=5)).ok


async def test_a_write_no_replica_applied_reports_the_most_telling_error_and_fences_nobody(
    cluster: FakeCluster,
) -> None:
    """Every replica failed: the error about the request (NOT_FOUND) wins over a transport one; no replica is
    fenced (none is behind another)."""
    pool = cluster.pool({"s0": 2})
    cluster.replicas["s0-r0:50061"].on["Upsert"] = failing(grpc.StatusCode.UNAVAILABLE)
    cluster.replicas["s0-r1:50061"].on["Upsert"] = failing(grpc.StatusCode.NOT_FOUND, "no collection 'c'")
    outcome = await pool.write(pool.by_name["s0"], "Upsert", upsert(), timeout=1.0, version=5)
    assert outcome.error is not None and outcome.error.code == grpc.StatusCode.NOT_FOUND
    assert str(outcome.error) == "shard s0 (s0-r1:50061): no collection 'c'"
    assert outcome.replica is None
    assert not any(r.fenced for r in pool.by_name["s0"].replicas) and cluster.called("Resync") == []


async def test_a_write_refused_for_a_stale_layout_is_aborted_and_fences_nobody(cluster: FakeCluster) -> None:
    """One replica refuses the write as routed by an older layout (ABORTED): the outcome is that refusal, for the
    caller to route again, even though the other replica applied it; nobody is fenced."""
    pool = cluster.pool({"s0": 2})
    cluster.replicas["s0-r1:50061"].topology = admin_pb2.Topology(version=3)
    request = shard_pb2.ShardUpsertRequest(collection="c", ids=["a"], version=5, topology_version=2)
    outcome = await pool.write(pool.by_name["s0"], "Upsert", request, timeout=1.0, version=5)
    assert outcome.error is not None and outcome.error.code == grpc.StatusCode.ABORTED
    assert "routed by ring layout 2" in str(outcome.error) and outcome.replica is None
    assert not any(r.fenced for r in pool.by_name["s0"].replicas) and cluster.called("Resync") == []


async def test_a_benign_error_counts_as_applied(cluster: FakeCluster) -> None:
    """CreateCollection with ALREADY_EXISTS benign: one replica creating, the other already having it, is a success
    (nobody fenced); every replica already having it is that error."""
    pool = cluster.pool({"s0": 2})
    request = shard_pb2.ShardCreateCollectionRequest(collection=search_pb2.Collection(name="c", dim=4))
    cluster.replicas["s0-r1:50061"].on["CreateCollection"] = failing(grpc.StatusCode.ALREADY_EXISTS)
    mixed = await pool.write(pool.by_name["s0"], "CreateCollection", request, timeout=1.0, every_replica=True,
                             benign=grpc.StatusCode.ALREADY_EXISTS)
    assert mixed.ok and isinstance(mixed.response, shard_pb2.ShardCreateCollectionResponse)
    assert not any(r.fenced for r in pool.by_name["s0"].replicas)
    cluster.replicas["s0-r0:50061"].on["CreateCollection"] = failing(grpc.StatusCode.ALREADY_EXISTS)
    both = await pool.write(pool.by_name["s0"], "CreateCollection", request, timeout=1.0, every_replica=True,
                            benign=grpc.StatusCode.ALREADY_EXISTS)
    assert both.error is not None and both.error.code == grpc.StatusCode.ALREADY_EXISTS


async def test_write_fan_out_keeps_the_order_of_the_shards(cluster: FakeCluster) -> None:
    """Writes to several shards at once: one outcome per (shard, request), in order."""
    pool = cluster.pool({"s0": 1, "s1": 1})
    cluster.replicas["s0-r0:50061"].on["Upsert"] = failing(grpc.StatusCode.INVALID_ARGUMENT)
    outcomes = await pool.write_fan_out("Upsert", [(pool.by_name["s1"], upsert("x", "y")), (pool.by_name["s0"],
                                                                                           upsert())], 1.0, version=5)
    assert [(o.shard.name, o.ok) for o in outcomes] == [("s1", True), ("s0", False)]
    assert outcomes[0].response.upserted == 2


# ---- writes: fencing ----------------------------------------------------------------------------------------


async def test_a_replica_that_missed_a_write_is_not_read_until_it_accepts_a_resync(cluster: FakeCluster) -> None:
    """Quorum 1, one replica times out on a write the other applied: it is fenced (no reads go to it), asked to
    resync with the write's version, and read again once it has accepted."""
    pool = cluster.pool({"s0": 2})
    lagging, healthy = cluster.replicas["s0-r1:50061"], cluster.replicas["s0-r0:50061"]
    lagging.on["Upsert"] = hanging()  # past the write's timeout: DEADLINE_EXCEEDED (no avoidance of its own)
    accept = asyncio.Event()
    lagging.on["Resync"] = hanging(accept)
    resynced = record_resyncs(pool)
    outcome = await pool.write(pool.by_name["s0"], "Upsert", upsert(), timeout=0.02, version=1234)
    assert outcome.ok
    replica = pool.by_name["s0"].replicas[1]
    assert replica.fenced and replica.missed_version == 1234 and cluster.metric(FENCED) == 1
    for _ in range(4):
        assert (await pool.call(pool.by_name["s0"], "Get", get(), timeout=1.0)).replica.address == healthy.address
    assert lagging.requests("Get") == []

    await until(lambda: len(lagging.requests("Resync")) == 1)
    (ask,) = lagging.requests("Resync")
    assert ask.missed_version == 1234 and "missed Upsert" in ask.reason and "DEADLINE_EXCEEDED" in ask.reason
    accept.set()
    await until(lambda: resynced == [{"c"}])
    assert not replica.fenced and cluster.metric(FENCED) == 0 and cluster.metric(RESYNCS) == 1
    read = {(await pool.call(pool.by_name["s0"], "Get", get(), timeout=1.0)).replica.address for _ in range(2)}
    assert lagging.address in read


async def test_a_fenced_replica_still_gets_writes_and_a_newer_miss_is_resynced_again(cluster: FakeCluster) -> None:
    """A replica misses a second write while its resync is being asked: it still gets the write, and once the
    first resync is accepted it is asked again for the newer version before it is read from (one resync task)."""
    pool = cluster.pool({"s0": 2})
    lagging = cluster.replicas["s0-r1:50061"]
    lagging.on["Upsert"] = failing(grpc.StatusCode.INTERNAL, "fsync failed")
    accept = asyncio.Event()
    lagging.on["Resync"] = hanging(accept)
    resynced = record_resyncs(pool)
    assert (await pool.write(pool.by_name["s0"], "Upsert", upsert(collection="a"), timeout=1.0, version=100)).ok
    await until(lambda: len(lagging.requests("Resync")) == 1)
    assert (await pool.write(pool.by_name["s0"], "Upsert", upsert(collection="b"), timeout=1.0, version=200)).ok
    assert len(lagging.requests("Upsert")) == 2
    replica = pool.by_name["s0"].replicas[1]
    assert replica.fenced and replica.missed_version == 200
    accept.set()
    await until(lambda: bool(resynced))
    assert [ask.missed_version for ask in lagging.requests("Resync")] == [100, 200]
    assert resynced == [{"a", "b"}] and not replica.fenced and cluster.metric(RESYNCS) == 1


async def test_a_replica_that_missed_a_create_is_fenced_for_that_collection(cluster: FakeCluster) -> None:
    """CreateCollection (its request names the collection by its spec) applied on one replica and missed by the
    other: the write succeeds and the replica that missed it is fenced with the collection's name to resync."""
    pool = cluster.pool({"s0": 2})
    lagging = cluster.replicas["s0-r1:50061"]
    lagging.on["CreateCollection"] = failing(grpc.StatusCode.UNAVAILABLE, "connection refused")
    lagging.on["Resync"] = hanging()
    request = shard_pb2.ShardCreateCollectionRequest(collection=search_pb2.Collection(name="c", dim=4))
    outcome = await pool.write(pool.by_name["s0"], "CreateCollection", request, timeout=1.0, version=9,
                               benign=grpc.StatusCode.ALREADY_EXISTS)
    assert outcome.ok
    replica = pool.by_name["s0"].replicas[1]
    assert replica.fenced and replica.missed_collections == {"c"} and replica.missed_version == 9


async def test_a_write_without_a_version_fences_with_the_clock(cluster: FakeCluster) -> None:
    """A write sent with version 0: the missed version is the coordinator clock's reading."""
    pool = cluster.pool({"s0": 2}, clock=lambda: 777)
    lagging = cluster.replicas["s0-r1:50061"]
    lagging.on["Delete"] = failing(grpc.StatusCode.UNAVAILABLE)
    request = shard_pb2.ShardDeleteRequest(collection="c", ids=["a"])
    assert (await pool.write(pool.by_name["s0"], "Delete", request, timeout=1.0)).ok
    await settled(pool)
    assert [ask.missed_version for ask in lagging.requests("Resync")] == [777]


async def test_a_refused_resync_is_asked_again_until_accepted(cluster: FakeCluster) -> None:
    """The fenced replica cannot be reached for the resync at first: it is asked again (after a back-off) until
    it accepts, and only then unfenced."""
    pool = cluster.pool({"s0": 2})
    lagging = cluster.replicas["s0-r1:50061"]
    lagging.on["Upsert"] = failing(grpc.StatusCode.UNAVAILABLE)
    lagging.on["Resync"] = first_call(failing(grpc.StatusCode.UNAVAILABLE))
    assert (await pool.write(pool.by_name["s0"], "Upsert", upsert(), timeout=1.0, version=9)).ok
    await settled(pool)  # one back-off of the pool's (0.1 s)
    assert [ask.missed_version for ask in lagging.requests("Resync")] == [9, 9]
    assert not pool.by_name["s0"].replicas[1].fenced and cluster.metric(RESYNCS) == 1


async def test_a_replica_that_cannot_catch_up_stays_fenced(cluster: FakeCluster) -> None:
    """Resync refused with FAILED_PRECONDITION (no peers to copy from): not asked again, and never read from."""
    pool = cluster.pool({"s0": 2})
    lagging = cluster.replicas["s0-r1:50061"]
    lagging.on["Upsert"] = failing(grpc.StatusCode.INTERNAL)
    lagging.on["Resync"] = failing(grpc.StatusCode.FAILED_PRECONDITION, "no peers configured")
    assert (await pool.write(pool.by_name["s0"], "Upsert", upsert(), timeout=1.0, version=9)).ok
    await settled(pool)
    assert len(lagging.requests("Resync")) == 1
    assert pool.by_name["s0"].replicas[1].fenced and cluster.metric(FENCED) == 1
    for _ in range(3):
        assert (await pool.call(pool.by_name["s0"], "Get", get(), timeout=1.0)).replica.address != lagging.address


async def test_a_shard_whose_every_replica_is_fenced_is_unavailable_for_reads(cluster: FakeCluster) -> None:
    """Each replica missed a write the other applied: reads fail with UNAVAILABLE at once, asking no replica."""
    pool = cluster.pool({"s0": 2})
    r0, r1 = cluster.replicas["s0-r0:50061"], cluster.replicas["s0-r1:50061"]
    for replica in (r0, r1):
        replica.on["Resync"] = hanging()
    r1.on["Upsert"] = failing(grpc.StatusCode.INTERNAL)
    assert (await pool.write(pool.by_name["s0"], "Upsert", upsert(), timeout=1.0, version=1)).ok
    del r1.on["Upsert"]
    r0.on["Upsert"] = failing(grpc.StatusCode.INTERNAL)
    assert (await pool.write(pool.by_name["s0"], "Upsert", upsert(), timeout=1.0, version=2)).ok
    assert all(r.fenced for r in pool.by_name["s0"].replicas) and cluster.metric(FENCED) == 2
    outcome = await pool.call(pool.by_name["s0"], "Get", get(), timeout=1.0)
    assert outcome.error is not None and outcome.error.code == grpc.StatusCode.UNAVAILABLE
    assert "catching up" in str(outcome.error) and outcome.replica is None
    assert cluster.called("Get") == []

