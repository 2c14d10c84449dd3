"""SearchRequest.explain through a real cluster: the cache outcome, the merge, and per shard the time queued and
searching, the path (IVF, exact over a filter's matches, flat) and what it scanned."""

from __future__ import annotations

import grpc
import numpy as np

from shardsearch import codec
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import search_pb2, search_pb2_grpc
from tests.integration.conftest import wait_trained

DIM = 16
N = 3000


def test_explain_tells_the_path_the_times_and_the_cache_outcome() -> None:
    with LocalCluster(shards=2) as cluster:
        stub = search_pb2_grpc.SearchServiceStub(grpc.insecure_channel(cluster.address))
        stub.CreateCollection(search_pb2.CreateCollectionRequest(
            name="x", dim=DIM, metric=search_pb2.METRIC_L2, index=search_pb2.IndexOptions(train_threshold=500)))
        vectors = np.random.default_rng(1).standard_normal((N, DIM)).astype(np.float32)
        for lo in range(0, N, 1000):
            stub.Upsert(search_pb2.UpsertRequest(collection="x", items=[
                search_pb2.Item(id=f"id{i}", vector_f32=codec.pack(vectors[i]),
                                fields={"kind": search_pb2.Value(keyword="rare" if i % 100 == 0 else "common")})
                for i in range(lo, lo + 1000)]))
        wait_trained(stub, "x")
        query = search_pb2.SearchRequest(collection="x", vector_f32=codec.pack(vectors[5]), k=10, explain=True,
                                         skip_cache=True)
        reply = stub.Search(query, timeout=10)
        explain = reply.explain
        assert reply.hits[0].id == "id5" and explain.cache == "skipped" and explain.merge_seconds >= 0
        assert sorted(s.shard for s in explain.shards) == ["shard-0", "shard-1"]
        for shard in explain.shards:
            assert shard.path == "ivf" and shard.nprobe > 0 and shard.refine_factor > 0 and shard.candidates >= 10
            # each shard re-ranks k x the factor it fitted for a search reaching both shards (refine_fit)
            assert shard.shards_searched == 2 and shard.refine_depth == 10 * shard.refine_factor
            assert shard.call_seconds >= shard.search_seconds > 0 and shard.queued_seconds >= 0 and shard.address

        query.filter.CopyFrom(search_pb2.Filter(match=search_pb2.Match(field="kind", values=["rare"])))  # 1%
        explain = stub.Search(query, timeout=10).explain
        assert all(s.path == "exact over matches" for s in explain.shards)
        assert sum(s.matching for s in explain.shards) == N // 100

        plain = search_pb2.SearchRequest(collection="x", vector_f32=codec.pack(vectors[8]), k=5)
        assert not stub.Search(plain, timeout=10).HasField("explain")  # only when asked
        plain = search_pb2.SearchRequest(collection="x", vector_f32=codec.pack(vectors[9]), k=5, explain=True)
        assert stub.Search(plain, timeout=10).explain.cache == "miss"  # the in-process cache: filled now
        again = stub.Search(plain, timeout=10)
        assert again.cached and again.explain.cache == "hit" and not again.explain.shards


def test_an_explicit_refine_factor_is_used_by_every_shard_whatever_the_shard_count() -> None:
    """An explicit index refine_factor is not fitted; the deprecated --refine-share still starts and changes nothing."""
    with LocalCluster(shards=2, coordinator_args=["--refine-share"]) as cluster:
        stub = search_pb2_grpc.SearchServiceStub(grpc.insecure_channel(cluster.address))
        stub.CreateCollection(search_pb2.CreateCollectionRequest(
            name="x", dim=DIM, metric=search_pb2.METRIC_L2,
            index=search_pb2.IndexOptions(train_threshold=500, refine_factor=20)))
        vectors = np.random.default_rng(2).standard_normal((N, DIM)).astype(np.float32)
        stub.Upsert(search_pb2.UpsertRequest(collection="x", items=[
            search_pb2.Item(id=f"id{i}", vector_f32=codec.pack(vectors[i])) for i in range(N)]))
        info = wait_trained(stub, "x")
        assert all("fitted" not in s.index_description and s.index.refine_factor == 20 for s in info.shards)
        reply = stub.Search(search_pb2.SearchRequest(collection="x", vector_f32=codec.pack(vectors[7]), k=10,
                                                     explain=True, skip_cache=True), timeout=10)
        assert reply.hits[0].id == "id7"
        for shard in reply.explain.shards:
            assert shard.path == "ivf" and shard.shards_searched == 2
            assert shard.refine_factor == 20 and shard.refine_depth == 200
        assert "refine_share is deprecated" in cluster.logs()
