"""Replicas converge on their own: a write one replica missed reaches it even when the coordinator that knew about
it died before it could ask the replica to catch up (real processes, SIGSTOP and kill -9)."""

from __future__ import annotations

import signal
import time

import grpc
import numpy as np

from shardsearch import codec
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import search_pb2, shard_pb2, shard_pb2_grpc
from tests.integration.conftest import connect, create, upsert, wait_until

DIM = 16
INTERVAL_S = 1.0


def held(address: str, collection: str, ids: list[str]) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = shard_pb2_grpc.ShardServiceStub(channel).Get(
                shard_pb2.ShardGetRequest(collection=collection, ids=ids), timeout=5)
        except grpc.RpcError:
            return set()
        return set(reply.ids)


def test_a_write_missed_while_stopped_reaches_the_replica_after_its_coordinator_died() -> None:
    args = ["--anti-entropy-s", str(INTERVAL_S)]
    with LocalCluster(shards=1, replicas=2, shard_args=args) as cluster:
        stub = connect(cluster)
        create(stub, "ae", DIM)
        rng = np.random.default_rng(3)
        vectors = rng.standard_normal((60, DIM)).astype(np.float32)
        ids = [f"id{i}" for i in range(50)]
        upsert(stub, "ae", ids, vectors[:50])
        stub.Delete(search_pb2.DeleteRequest(collection="ae", ids=["id7"]))
        a, b = cluster.replica(0, 0), cluster.replica(0, 1)

        b.signal(signal.SIGSTOP)
        late = [f"late{i}" for i in range(10)]
        stub.Upsert(search_pb2.UpsertRequest(collection="ae", items=[
            search_pb2.Item(id=i, vector_f32=codec.pack(v)) for i, v in zip(late, vectors[50:])]), timeout=3)
        stub.Delete(search_pb2.DeleteRequest(collection="ae", ids=["id8"]), timeout=3)
        assert held(a.address, "ae", late) == set(late)  # acknowledged by A alone (quorum 1)
        cluster.coordinator.signal(signal.SIGKILL)  # the coordinator that fenced B dies with its fence
        cluster.coordinator.popen.wait()  # type: ignore[union-attr]
        time.sleep(3.5)  # past the writes' deadlines: B, resumed, drops them unread
        b.signal(signal.SIGCONT)
        started = time.monotonic()
        cluster.restart_coordinators(list(cluster.coordinator_args))

        wait_until(lambda: held(b.address, "ae", late) == set(late), "replica B to pull the missed writes",
                   seconds=10 * INTERVAL_S + 10)
        wait_until(lambda: "id8" not in held(b.address, "ae", ["id8"]), "replica B to apply the missed delete",
                   seconds=10 * INTERVAL_S + 10)
        print(f"B converged {time.monotonic() - started:.1f}s after it resumed")
        assert held(b.address, "ae", ids) == set(ids) - {"id7", "id8"}
        stub = connect(cluster)
        for _ in range(20):  # whichever replica the new coordinator reads from
            assert len(stub.Get(search_pb2.GetRequest(collection="ae", ids=late), timeout=5).items) == 10
        assert "anti-entropy: collection ae differed" in b.log_path.read_text()
