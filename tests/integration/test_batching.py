"""Dynamic batching at both tiers, through real processes, proven with the servers' own metrics and counts.

A stopped shard (SIGSTOP) holds a batch in flight, so the tests decide exactly what is queued behind it.
"""

from __future__ import annotations

import signal
from typing import Iterator

import grpc
import numpy as np
import pytest

from shardsearch import codec
from shardsearch.tools.local import LocalCluster, Process
from shardsearch.v1 import search_pb2, shard_pb2, shard_pb2_grpc
from tests.integration.conftest import connect, create, running_cluster, scrape, upsert, wait_until

NAME = "batched"
DIM = 8
QUEUE = 8


@pytest.fixture(scope="module")
def held(request: pytest.FixtureRequest) -> Iterator[tuple[LocalCluster, object, np.ndarray]]:
    """2 shards; the coordinator sends one batch at a time and queues at most QUEUE searches; no cache."""
    args = ["--batch-max-in-flight", "1", "--batch-max-queue-size", str(QUEUE), "--cache", "off"]
    with running_cluster(request, shards=2, metrics=True, coordinator_args=args) as cluster:
        stub = connect(cluster)
        create(stub, NAME, DIM)
        vectors = np.random.default_rng(5).standard_normal((200, DIM)).astype(np.float32)
        upsert(stub, NAME, [str(i) for i in range(200)], vectors)
        yield cluster, stub, vectors


def value(proc: Process, name: str, **labels: str) -> float:
    return scrape(proc.metrics_port).get((name, tuple(sorted(labels.items()))), 0.0)


def search(stub, vector: np.ndarray, timeout: float = 30.0, k: int = 5):
    request = search_pb2.SearchRequest(collection=NAME, vector_f32=codec.pack(vector), k=k)
    return stub.Search.future(request, timeout=timeout)


def exact_ids(vectors: np.ndarray, query: np.ndarray, k: int = 5) -> list[str]:
    return [str(i) for i in np.argsort(((vectors - query) ** 2).sum(1), kind="stable")[:k]]


def hold_one_batch(cluster: LocalCluster, stub, query: np.ndarray):
    """Stops shard-1 and sends one search, which then occupies the coordinator's only in-flight slot."""
    coordinator = cluster.coordinator
    assert coordinator is not None
    cluster.shard_procs[1].signal(signal.SIGSTOP)
    first = search(stub, query)
    wait_until(lambda: value(coordinator, "shardsearch_coordinator_inflight_requests") == 1, "the first search")
    return first


def test_searches_queued_behind_a_batch_go_to_each_shard_as_one_rpc(held) -> None:
    cluster, stub, vectors = held
    coordinator, shard0 = cluster.coordinator, cluster.shard_procs[0]
    before_batches = value(coordinator, "shardsearch_coordinator_batch_size_count")
    before_rows = value(coordinator, "shardsearch_coordinator_batch_size_sum")
    before_rpcs = value(shard0, "shardsearch_shard_requests_total", method="Search", code="OK")
    try:
        first = hold_one_batch(cluster, stub, vectors[0])
        rest = [search(stub, vectors[i]) for i in range(1, 7)]
        wait_until(lambda: value(coordinator, "shardsearch_coordinator_batch_queue_depth") == 6, "6 queued searches")
    finally:
        cluster.shard_procs[1].signal(signal.SIGCONT)
    for i, future in enumerate([first, *rest]):
        assert [h.id for h in future.result().hits] == exact_ids(vectors, vectors[i])
    assert value(coordinator, "shardsearch_coordinator_batch_size_count") - before_batches == 2
    assert value(coordinator, "shardsearch_coordinator_batch_size_sum") - before_rows == 7
    assert value(shard0, "shardsearch_shard_requests_total", method="Search", code="OK") - before_rpcs == 2
    assert value(coordinator, "shardsearch_coordinator_batch_queue_duration_seconds_count") >= 7
    assert value(coordinator, "shardsearch_coordinator_batch_compute_duration_seconds_count") >= 2


def test_a_full_queue_sheds_with_resource_exhausted_and_serves_the_rest(held) -> None:
    cluster, stub, vectors = held
    coordinator = cluster.coordinator
    shed_before = value(coordinator, "shardsearch_coordinator_batch_rejected_total", reason="queue_full")
    try:
        first = hold_one_batch(cluster, stub, vectors[0])
        queued = [search(stub, vectors[i]) for i in range(1, QUEUE + 1)]
        wait_until(lambda: value(coordinator, "shardsearch_coordinator_batch_queue_depth") == QUEUE, "a full queue")
        with pytest.raises(grpc.RpcError) as err:
            search(stub, vectors[9], timeout=10).result()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "overloaded" in err.value.details() and "retry with backoff" in err.value.details()
    finally:
        cluster.shard_procs[1].signal(signal.SIGCONT)
    assert all(len(f.result().hits) == 5 for f in [first, *queued])
    assert value(coordinator, "shardsearch_coordinator_batch_rejected_total", reason="queue_full") - shed_before == 1


def test_a_search_whose_deadline_passes_in_the_queue_never_reaches_faiss(held) -> None:
    cluster, stub, vectors = held
    coordinator, shard0 = cluster.coordinator, cluster.shard_procs[0]
    rows_before = value(shard0, "shardsearch_shard_batch_size_sum")
    try:
        first = hold_one_batch(cluster, stub, vectors[0])
        doomed = search(stub, vectors[1], timeout=0.5)
        with pytest.raises(grpc.RpcError) as err:
            doomed.result()
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        cluster.shard_procs[1].signal(signal.SIGCONT)
    assert len(first.result().hits) == 5
    wait_until(lambda: value(coordinator, "shardsearch_coordinator_batch_queue_depth") == 0, "an empty queue")
    assert value(shard0, "shardsearch_shard_batch_size_sum") - rows_before == 1  # only the first search's query


def test_the_shard_answers_concurrent_rpcs_with_one_faiss_call(held) -> None:
    cluster, _, vectors = held
    shard = cluster.shard_procs[0]
    channel = grpc.insecure_channel(shard.address)
    stub = shard_pb2_grpc.ShardServiceStub(channel)
    before_calls = value(shard, "shardsearch_shard_batch_size_count")
    before_rows = value(shard, "shardsearch_shard_batch_size_sum")

    def request(rows: np.ndarray, k: int) -> shard_pb2.ShardSearchRequest:
        return shard_pb2.ShardSearchRequest(collection=NAME, queries_f32=codec.pack(rows), n=len(rows), k=k)

    big = np.random.default_rng(6).standard_normal((8_000, DIM)).astype(np.float32)
    shard.signal(signal.SIGSTOP)
    try:  # the large request goes first and keeps FAISS busy while the small ones arrive and queue
        futures = [stub.Search.future(request(big, 50), timeout=60)]
        futures += [stub.Search.future(request(vectors[i : i + 1], 1 + i % 3), timeout=60) for i in range(16)]
    finally:
        shard.signal(signal.SIGCONT)
    replies = [f.result() for f in futures]
    assert replies[0].n == 8_000 and replies[0].k == 50
    for i, reply in enumerate(replies[1:]):
        assert reply.n == 1 and reply.k == 1 + i % 3 and len(reply.ids) == reply.k  # each keeps its own k
    calls = value(shard, "shardsearch_shard_batch_size_count") - before_calls
    assert value(shard, "shardsearch_shard_batch_size_sum") - before_rows == 8_016
    assert calls <= 12, f"17 RPCs took {calls} FAISS calls"  # typically 2 to 7: RPCs arrive spread over loop turns
    channel.close()


def test_a_lone_search_is_never_held_for_the_queue_delay() -> None:
    """With a one-minute queue delay at both tiers, sequential searches still answer within a 20 s deadline."""
    delay = ["--batch-max-queue-delay-us", "60000000", "--batch-max-in-flight", "4"]
    with LocalCluster(shards=1, coordinator_args=[*delay, "--cache", "off"], shard_args=delay) as cluster:
        stub = connect(cluster)
        create(stub, NAME, DIM)
        vectors = np.random.default_rng(7).standard_normal((50, DIM)).astype(np.float32)
        upsert(stub, NAME, [str(i) for i in range(50)], vectors)
        for i in range(10):
            assert [h.id for h in search(stub, vectors[i], timeout=20).result().hits] == exact_ids(vectors, vectors[i])
