"""Replicas: reads fail over and hedge within one call; a replica that was down or missed a write catches up from
its peer before it serves reads again, and then serves exactly what its peer serves."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from typing import Iterator

import grpc
import numpy as np
import pytest

from shardsearch import codec
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import search_pb2, shard_pb2, shard_pb2_grpc
from tests.integration.conftest import connect, create, metric_sum, running_cluster, scrape, upsert, wait_until

NAME = "rep"
DIM = 24
N = 3000


@pytest.fixture
def replicated(request: pytest.FixtureRequest) -> Iterator[tuple[LocalCluster, object, np.ndarray]]:
    """2 shards x 2 replicas, durable, with a collection of N items."""
    with running_cluster(request, shards=2, replicas=2, metrics=True, coordinator_args=request.param) as cluster:
        stub = connect(cluster)
        create(stub, NAME, DIM)
        vectors = np.random.default_rng(5).standard_normal((N, DIM)).astype(np.float32)
        upsert(stub, NAME, [f"id{i}" for i in range(N)], vectors)
        yield cluster, stub, vectors


class SearchLoad:
    """Searches in background threads; records every outcome."""

    def __init__(self, stub: object, vectors: np.ndarray, threads: int = 2) -> None:
        self._stub = stub
        self._vectors = vectors
        self._stop = threading.Event()
        self.codes: Counter[str] = Counter()
        self.partial = 0
        self._threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(threads)]

    def _loop(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self._stop.is_set():
            query = self._vectors[rng.integers(len(self._vectors))]
            try:
                reply = self._stub.Search(search_pb2.SearchRequest(  # type: ignore[attr-defined]
                    collection=NAME, vector_f32=codec.pack(query), k=10, skip_cache=True), timeout=5)
                self.codes["OK"] += 1
                self.partial += reply.partial
            except grpc.RpcError as exc:
                self.codes[exc.code().name] += 1

    def wait_for_more(self, when: str, calls: int = 20) -> None:
        """Waits until the load has made `calls` more searches (answered or not)."""
        done = sum(self.codes.values())
        wait_until(lambda: sum(self.codes.values()) >= done + calls, f"{calls} more searches {when}")

    def __enter__(self) -> "SearchLoad":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def shard_stub(cluster: LocalCluster, shard: int, replica: int) -> shard_pb2_grpc.ShardServiceStub:
    channel = grpc.insecure_channel(cluster.replica(shard, replica).address)
    return shard_pb2_grpc.ShardServiceStub(channel)


def replica_state(stub: shard_pb2_grpc.ShardServiceStub, ids: list[str], queries: np.ndarray) -> tuple:
    """What one replica holds and answers: its items (ids, exact vectors, payloads) and its top-10 for queries."""
    got = stub.Get(shard_pb2.ShardGetRequest(collection=NAME, ids=ids))
    found = dict(zip(got.ids, codec.unpack(got.vectors_f32, DIM)))
    answer = stub.Search(shard_pb2.ShardSearchRequest(
        collection=NAME, queries_f32=codec.pack(queries), n=len(queries), k=10))
    return found, list(answer.ids), answer.scores_f32


def metric(cluster: LocalCluster, name: str) -> float:
    assert cluster.coordinator is not None
    return metric_sum(scrape(cluster.coordinator.metrics_port), name)


@pytest.mark.parametrize("replicated", [()], indirect=True)
def test_killed_replica_fails_over_then_catches_up(replicated) -> None:
    cluster, stub, vectors = replicated
    rng = np.random.default_rng(9)
    with SearchLoad(stub, vectors) as load:
        load.wait_for_more("before the kill")
        victim = cluster.replica(0, 0)
        victim.signal(signal.SIGKILL)
        victim.popen.wait()  # type: ignore[union-attr]
        # Writes while it is down: acknowledged by the surviving replicas (write quorum 1).
        fresh = rng.standard_normal((400, DIM)).astype(np.float32)
        upsert(stub, NAME, [f"new{i}" for i in range(400)], fresh, batch=100)
        overwritten = rng.standard_normal((200, DIM)).astype(np.float32)
        upsert(stub, NAME, [f"id{i}" for i in range(200)], overwritten, batch=100)
        deleted = [f"id{i}" for i in range(200, 500)]
        stub.Delete(search_pb2.DeleteRequest(collection=NAME, ids=deleted))
        load.wait_for_more("while the replica is down")
        cluster.restart_shard(cluster.shard_procs.index(victim))  # returns once it has caught up and serves
        load.wait_for_more("after the restart")
    assert load.codes["OK"] > 50
    assert load.codes == Counter(OK=load.codes["OK"]), f"failed searches: {load.codes}"
    assert load.partial == 0

    # The restarted replica holds exactly what its peer holds, and answers the same searches identically.
    every_id = [f"id{i}" for i in range(N)] + [f"new{i}" for i in range(400)]
    queries = np.concatenate([vectors[:20], fresh[:20], overwritten[:20]])
    back, peer = replica_state(shard_stub(cluster, 0, 0), every_id, queries), replica_state(
        shard_stub(cluster, 0, 1), every_id, queries)
    assert back[0].keys() == peer[0].keys() and len(back[0]) > 1000
    assert all(np.array_equal(back[0][i], peer[0][i]) for i in back[0])
    assert back[1:] == peer[1:]
    assert not set(deleted) & back[0].keys()
    for i in range(200):
        if f"id{i}" in back[0]:
            assert np.array_equal(back[0][f"id{i}"], overwritten[i])
    # And the cluster as a whole returns every acknowledged write.
    got = stub.Get(search_pb2.GetRequest(collection=NAME, ids=[f"new{i}" for i in range(400)] + deleted))
    assert len(got.items) == 400


@pytest.mark.parametrize("replicated", [()], indirect=True)
def test_replica_that_missed_a_write_is_fenced_and_resynced(replicated) -> None:
    cluster, stub, vectors = replicated
    frozen = cluster.replica(1, 1)
    frozen.signal(signal.SIGSTOP)
    try:
        # Acknowledged by one replica of each shard; the frozen one times out and is fenced (not read from).
        ids = [f"late{i}" for i in range(100)]
        late = np.random.default_rng(3).standard_normal((100, DIM)).astype(np.float32)
        stub.Upsert(search_pb2.UpsertRequest(collection=NAME, items=[
            search_pb2.Item(id=i, vector_f32=codec.pack(v)) for i, v in zip(ids, late)]), timeout=1.5)
        assert metric(cluster, "shardsearch_coordinator_shard_fenced_replicas") == 1
        for i in range(30):  # every read is complete and current, served by the replica that has the write
            hits = stub.Search(search_pb2.SearchRequest(
                collection=NAME, vector_f32=codec.pack(late[i]), k=1, skip_cache=True), timeout=5).hits
            assert hits[0].id == ids[i]
    finally:
        frozen.signal(signal.SIGCONT)
    deadline = time.monotonic() + 30
    while metric(cluster, "shardsearch_coordinator_shard_fenced_replicas") or not serving(cluster, 1, 1):
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.1)
    assert metric(cluster, "shardsearch_coordinator_shard_resyncs_total") >= 1
    owned = [i for i in ids if i in replica_state(shard_stub(cluster, 1, 0), ids, late[:1])[0]]
    assert owned  # some of the late ids belong to shard 1
    caught_up = replica_state(shard_stub(cluster, 1, 1), owned, late[:1])[0]
    assert sorted(caught_up) == sorted(owned)


def serving(cluster: LocalCluster, shard: int, replica: int) -> bool:
    try:
        shard_stub(cluster, shard, replica).Stats(shard_pb2.ShardStatsRequest(collection=NAME), timeout=1)
        return True
    except grpc.RpcError:
        return False


@pytest.mark.parametrize("replicated", [("--hedge-delay-ms", "30")], indirect=True)
def test_hedged_reads_ride_over_a_hung_replica(replicated) -> None:
    cluster, stub, vectors = replicated
    hung = cluster.replica(0, 1)
    hung.signal(signal.SIGSTOP)
    try:
        for i in range(40):  # without hedging, those routed to the hung replica would wait for the deadline
            reply = stub.Search(search_pb2.SearchRequest(
                collection=NAME, vector_f32=codec.pack(vectors[i]), k=1, skip_cache=True), timeout=2)
            assert reply.hits[0].id == f"id{i}" and not reply.partial
    finally:
        hung.signal(signal.SIGCONT)
    assert metric(cluster, "shardsearch_coordinator_shard_hedged_requests_total") >= 1
