"""Layout changes through several coordinators: two proposals at one version settle on one layout everywhere, a
split left behind by a proposer that died is settled by the next coordinator that reads it, and the cluster keeps
serving (real shard and coordinator processes)."""

from __future__ import annotations

import threading

import grpc
import numpy as np

from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import admin_pb2, admin_pb2_grpc, search_pb2, shard_pb2, shard_pb2_grpc
from tests.integration.conftest import connect, create, upsert, wait_for_move, wait_until

DIM = 8


def stored_layouts(cluster: LocalCluster) -> list[bytes]:
    layouts = []
    for proc in cluster.shard_procs:
        with grpc.insecure_channel(proc.address) as channel:
            answer = shard_pb2_grpc.ShardServiceStub(channel).GetTopology(shard_pb2.ShardGetTopologyRequest(),
                                                                          timeout=5)
        layouts.append(answer.topology.SerializeToString(deterministic=True))
    return layouts


def check_serving(cluster: LocalCluster, name: str, ids: list[str], vectors: np.ndarray) -> None:
    for address in cluster.addresses:
        stub = connect_to(address)
        found = stub.Get(search_pb2.GetRequest(collection=name, ids=ids), timeout=10)
        assert sorted(item.id for item in found.items) == sorted(ids), address


def connect_to(address: str):
    from shardsearch.v1 import search_pb2_grpc

    return search_pb2_grpc.SearchServiceStub(grpc.insecure_channel(address))


def test_a_split_layout_left_by_racing_proposers_is_settled_on_one() -> None:
    """Version 2 exists twice on the shards (what two proposers that each won some shards and died leave): the
    coordinators settle it (compare-and-set) instead of routing by two rings at one version for ever."""
    with LocalCluster(shards=3, coordinators=2) as cluster:
        admin = admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(cluster.address))
        base = admin.GetTopology(admin_pb2.GetTopologyRequest(), timeout=10)
        rivals = []
        for vnodes in (64, 32):
            rival = admin_pb2.Topology()
            rival.CopyFrom(base)
            rival.ClearField("move")
            rival.version, rival.vnodes = base.version + 1, vnodes
            rivals.append(rival)
        for i, proc in enumerate(cluster.shard_procs):
            with grpc.insecure_channel(proc.address) as channel:
                shard_pb2_grpc.ShardServiceStub(channel).SetTopology(shard_pb2.ShardSetTopologyRequest(
                    topology=rivals[0 if i == 0 else 1], shard=f"shard-{i}"), timeout=5)
        assert len(set(stored_layouts(cluster))) == 2
        wait_until(lambda: len(set(stored_layouts(cluster))) == 1, "the shards to settle on one layout", 20)

        def coordinators_follow() -> bool:
            held = stored_layouts(cluster)[0]
            for address in cluster.addresses:
                used = admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(address)).GetTopology(
                    admin_pb2.GetTopologyRequest(), timeout=5)
                used.ClearField("move")
                if used.SerializeToString(deterministic=True) != held:
                    return False
            return True
        wait_until(coordinators_follow, "both coordinators to route by the settled layout", 20)
        stub = connect(cluster)
        create(stub, "after", DIM)
        ids = [f"id{i}" for i in range(300)]
        vectors = np.random.default_rng(1).standard_normal((300, DIM)).astype(np.float32)
        upsert(stub, "after", ids, vectors)
        check_serving(cluster, "after", ids, vectors)


def test_two_coordinators_adding_shards_at_once_leave_one_layout_everywhere() -> None:
    with LocalCluster(shards=2, coordinators=2) as cluster:
        stub = connect(cluster)
        create(stub, "race", DIM)
        ids = [f"id{i}" for i in range(400)]
        vectors = np.random.default_rng(2).standard_normal((400, DIM)).astype(np.float32)
        upsert(stub, "race", ids, vectors)
        extras = [cluster.start_extra_shard(f"shard-{n}") for n in (2, 3)]
        admins = [admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(a)) for a in cluster.addresses]
        start = threading.Barrier(2)
        results: list[str] = ["", ""]

        def add(i: int) -> None:
            start.wait()
            try:
                admins[i].AddShard(admin_pb2.AddShardRequest(shard=admin_pb2.ShardSpec(
                    name=f"shard-{2 + i}", addresses=[extras[i].address])), timeout=30)
                results[i] = "OK"
            except grpc.RpcError as exc:
                results[i] = exc.code().name
                assert exc.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION), exc

        threads = [threading.Thread(target=add, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(f"AddShard results: {results}")
        assert "OK" in results
        for i, result in enumerate(results):
            if result == "OK":
                wait_for_move(admins[i])
        members = ["shard-0", "shard-1"] + [f"shard-{2 + i}" for i, r in enumerate(results) if r == "OK"]

        def one_layout() -> bool:
            held = [t for proc, t in zip(cluster.shard_procs, stored_layouts(cluster)) if proc.name in members]
            return len(set(held)) == 1
        try:
            wait_until(one_layout, "every ring member to hold the same layout", 30)
        except AssertionError:
            print("\n".join(line for line in cluster.logs().splitlines() if "layout" in line or "move" in line))
            raise
        layout = admins[0].GetTopology(admin_pb2.GetTopologyRequest(), timeout=10)
        assert sorted(s.name for s in layout.shards) == sorted(members)
        check_serving(cluster, "race", ids, vectors)
