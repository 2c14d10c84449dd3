"""A dead or hung shard: the request's partial policy decides, and no call outlives its deadline."""

from __future__ import annotations

import signal
import time

import grpc
import numpy as np
import pytest

from shardsearch import codec
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import search_pb2
from tests.integration.conftest import connect, create, retry_until_ok, upsert

NAME = "ft"
DIM = 16


@pytest.fixture
def three(request):
    """A 3-shard cluster of its own: these tests kill and freeze shards."""
    with LocalCluster(shards=3) as running:
        stub = connect(running)
        create(stub, NAME, DIM)
        vectors = np.random.default_rng(2).standard_normal((600, DIM)).astype(np.float32)
        upsert(stub, NAME, [f"id{i}" for i in range(600)], vectors)
        yield running, stub, vectors


def query(vector: np.ndarray, policy: int, k: int = 10, skip_cache: bool = True) -> search_pb2.SearchRequest:
    return search_pb2.SearchRequest(
        collection=NAME, vector_f32=codec.pack(vector), k=k, partial_policy=policy, skip_cache=skip_cache
    )


def test_dead_shard_fails_or_flags_partial_results(three) -> None:
    cluster, stub, vectors = three
    complete = stub.Search(query(vectors[0], search_pb2.PARTIAL_POLICY_ALLOW, k=30, skip_cache=False))
    assert not complete.partial and len(complete.hits) == 30
    cluster.shard_procs[1].signal(signal.SIGKILL)
    cluster.shard_procs[1].popen.wait()

    # No write since: the cached complete answer is still the current one, and it is served through the outage.
    cached = stub.Search(query(vectors[0], search_pb2.PARTIAL_POLICY_FAIL, k=30, skip_cache=False), timeout=5)
    assert cached.cached and not cached.partial and cached.hits == complete.hits

    for policy in (search_pb2.PARTIAL_POLICY_FAIL, search_pb2.PARTIAL_POLICY_UNSPECIFIED):
        with pytest.raises(grpc.RpcError) as err:
            stub.Search(query(vectors[0], policy), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shard-1" in err.value.details() and "PARTIAL_POLICY_ALLOW" in err.value.details()

    started = time.monotonic()
    partial = stub.Search(query(vectors[0], search_pb2.PARTIAL_POLICY_ALLOW, k=30), timeout=5)
    assert time.monotonic() - started < 5
    assert partial.partial and list(partial.missing_shards) == ["shard-1"]
    survivors = [h.id for h in complete.hits if cluster_owner(stub, h.id) != "shard-1"]
    assert [h.id for h in partial.hits][: len(survivors)] == survivors

    batch = stub.BatchSearch(search_pb2.BatchSearchRequest(
        collection=NAME, vectors_f32=codec.pack(vectors[:3]), k=5, partial_policy=search_pb2.PARTIAL_POLICY_ALLOW,
        skip_cache=True))
    assert batch.partial and list(batch.missing_shards) == ["shard-1"] and all(r.partial for r in batch.results)

    # Coverage per request: min_shards=2 of 3 accepts the outage whatever the policy; 3 does not.
    request = query(vectors[0], search_pb2.PARTIAL_POLICY_FAIL)
    request.min_shards = 2
    assert list(stub.Search(request, timeout=5).missing_shards) == ["shard-1"]
    request.min_shards = 3
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(request, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "3 needed" in err.value.details()

    with pytest.raises(grpc.RpcError) as err:  # writes owned by the dead shard fail clearly, never silently
        stub.Upsert(search_pb2.UpsertRequest(collection=NAME, items=[
            search_pb2.Item(id=f"w{i}", vector_f32=codec.pack(vectors[i])) for i in range(30)]), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "retrying the whole call is safe" in err.value.details()

    cluster.restart_shard(1)  # same port: the coordinator reconnects on its own
    # The restarted shard recovers its collection from its write-ahead log: answers are complete again.
    healed = retry_until_ok(lambda: stub.Search(query(vectors[0], search_pb2.PARTIAL_POLICY_FAIL, k=30), timeout=5))
    assert not healed.partial
    # The failed upsert above is not atomic across shards (documented): its items owned by live shards landed.
    assert [h.id for h in healed.hits if not h.id.startswith("w")] == [h.id for h in complete.hits][: len(healed.hits) - sum(h.id.startswith("w") for h in healed.hits)]


def cluster_owner(stub, item_id: str) -> str:
    from shardsearch.ring import Ring

    return Ring([f"shard-{i}" for i in range(3)]).owner(item_id)


def test_hung_shard_never_hangs_the_call(three) -> None:
    cluster, stub, vectors = three
    cluster.shard_procs[2].signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        partial = stub.Search(query(vectors[0], search_pb2.PARTIAL_POLICY_ALLOW), timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert partial.partial and list(partial.missing_shards) == ["shard-2"] and len(partial.hits) == 10

        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.Search(query(vectors[0], search_pb2.PARTIAL_POLICY_FAIL), timeout=1.0)
        assert time.monotonic() - started < 1.5
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        cluster.shard_procs[2].signal(signal.SIGCONT)
    assert not stub.Search(query(vectors[0], search_pb2.PARTIAL_POLICY_FAIL), timeout=5).partial
