"""A coordinator that has not yet seen a new ring layout: its writes, reads and searches are refused by the shards
(ABORTED, stale layout), it re-reads the layout and sends them again (Router.routed), and the caller never sees it."""

from __future__ import annotations

import re
import time

import grpc
import numpy as np

from shardsearch import codec
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import admin_pb2, admin_pb2_grpc, search_pb2, search_pb2_grpc
from tests.integration.conftest import create, upsert, wait_for_move

DIM = 8


def test_a_coordinator_with_a_stale_layout_retries_every_routed_call_after_the_shards_refuse_it() -> None:
    # The second coordinator never polls the layout: it can only learn of the move from a refusal.
    with LocalCluster(shards=2, coordinators=2, coordinator_args=["--cache", "off", "--topology-poll-s", "3600"]) as cluster:
        main_channel = grpc.insecure_channel(cluster.addresses[0])
        other_channel = grpc.insecure_channel(cluster.addresses[1])
        main, admin = search_pb2_grpc.SearchServiceStub(main_channel), admin_pb2_grpc.AdminServiceStub(main_channel)
        other = search_pb2_grpc.SearchServiceStub(other_channel)
        vectors = np.random.default_rng(6).standard_normal((300, DIM)).astype(np.float32)
        create(main, "r", DIM)
        upsert(main, "r", [str(i) for i in range(200)], vectors[:200])
        assert other.Search(search_pb2.SearchRequest(collection="r", vector_f32=codec.pack(vectors[3]), k=1),
                            timeout=10).hits[0].id == "3"  # the second coordinator has read the first layout

        extra = cluster.start_extra_shard("shard-2")
        admin.AddShard(admin_pb2.AddShardRequest(shard=admin_pb2.ShardSpec(name="shard-2", addresses=[extra.address])))
        version = wait_for_move(admin, 120).version
        other_log = cluster.coordinator_procs[1]
        assert not re.search(rf"ring layout {version}\b", other_log.log_tail(400))

        upserted = other.Upsert(search_pb2.UpsertRequest(collection="r", items=[
            search_pb2.Item(id=str(i), vector_f32=codec.pack(vectors[i])) for i in range(200, 300)]), timeout=20)
        assert upserted.upserted == 100
        assert re.search(rf"ring layout {version}\b", other_log.log_tail(400))  # learnt from the refusal

        got = main.Get(search_pb2.GetRequest(collection="r", ids=[str(i) for i in range(200, 300)]), timeout=10)
        assert sorted(int(item.id) for item in got.items) == list(range(200, 300))  # each on its new owner
        deadline = time.monotonic() + 10
        while True:  # the new items are searchable through either coordinator
            hits = other.Search(search_pb2.SearchRequest(collection="r", vector_f32=codec.pack(vectors[250]), k=1),
                                timeout=10).hits
            if hits and hits[0].id == "250":
                break
            assert time.monotonic() < deadline, hits
            time.sleep(0.1)
        assert other.Delete(search_pb2.DeleteRequest(collection="r", ids=["250", "251"]), timeout=10).deleted == 2
        left = other.Get(search_pb2.GetRequest(collection="r", ids=["250", "251", "252"]), timeout=10)
        assert [item.id for item in left.items] == ["252"]
        main_channel.close()
        other_channel.close()
