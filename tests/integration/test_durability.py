"""kill -9 a shard at random moments under continuous writes: nothing acknowledged is lost or resurrected."""

from __future__ import annotations

import random
import signal
import threading
import time

import grpc
import numpy as np

from shardsearch import codec
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import search_pb2
from tests.integration.conftest import connect, create

NAME = "durable"
DIM = 32
ROUNDS = 5


class Ledger:
    """What the cluster must hold: acknowledged upserts (exact vectors) and acknowledged deletes.

    An id whose write failed is in an unknown state (it may have landed) until a later write is acknowledged.
    """

    def __init__(self) -> None:
        self.present: dict[str, np.ndarray] = {}
        self.deleted: set[str] = set()
        self.unknown: set[str] = set()
        self.acked_writes = 0
        self.failed_writes = 0


def writer(stub, ledger: Ledger, stop: threading.Event, seed: int) -> None:
    rng = np.random.default_rng(seed)
    batch = 0
    while not stop.is_set():
        ids = [f"w{seed}-{batch}-{i}" for i in range(40)]
        vectors = rng.standard_normal((40, DIM)).astype(np.float32)
        try:
            stub.Upsert(search_pb2.UpsertRequest(collection=NAME, items=[
                search_pb2.Item(id=i, vector_f32=codec.pack(v)) for i, v in zip(ids, vectors)]), timeout=5)
        except grpc.RpcError:
            ledger.failed_writes += 1
            ledger.unknown.update(ids)
        else:
            ledger.acked_writes += 1
            ledger.present.update(zip(ids, vectors))
            ledger.unknown.difference_update(ids)
        if batch % 5 == 4 and ledger.present:
            victims = random.Random(batch).sample(sorted(ledger.present), 10)
            try:
                stub.Delete(search_pb2.DeleteRequest(collection=NAME, ids=victims), timeout=5)
            except grpc.RpcError:
                ledger.failed_writes += 1
                for v in victims:
                    ledger.present.pop(v, None)
                ledger.unknown.update(victims)
            else:
                ledger.acked_writes += 1
                for v in victims:
                    ledger.present.pop(v, None)
                ledger.deleted.update(victims)
        batch += 1


def test_acknowledged_writes_survive_kill_9_of_shards_at_random_moments() -> None:
    # Small log threshold and train threshold: snapshots and (re)training happen all through the run.
    shard_args = ["--snapshot-wal-bytes", "300000"]
    with LocalCluster(shards=3, shard_args=shard_args) as cluster:
        stub = connect(cluster)
        create(stub, NAME, DIM, train_threshold=1_500)
        ledger = Ledger()
        stop = threading.Event()
        thread = threading.Thread(target=writer, args=(stub, ledger, stop, 1))
        thread.start()
        chooser = random.Random(7)
        try:
            for _ in range(ROUNDS):
                time.sleep(chooser.uniform(0.5, 1.5))
                victim = chooser.randrange(3)
                cluster.shard_procs[victim].signal(signal.SIGKILL)
                cluster.shard_procs[victim].popen.wait()  # type: ignore[union-attr]
                time.sleep(chooser.uniform(0.0, 0.3))
                cluster.restart_shard(victim)
            time.sleep(0.5)
        finally:
            stop.set()
            thread.join()
        print(f"{ROUNDS} kill rounds: {ledger.acked_writes} writes acknowledged, {ledger.failed_writes} failed; "
              f"{len(ledger.present)} ids present, {len(ledger.deleted)} deleted, {len(ledger.unknown)} unknown")
        assert ledger.acked_writes > 50 and ledger.failed_writes > 0  # the kills really hit writes

        ids = sorted(ledger.present.keys() - ledger.unknown)
        found: dict[str, np.ndarray] = {}
        for lo in range(0, len(ids), 1000):
            reply = stub.Get(search_pb2.GetRequest(collection=NAME, ids=ids[lo : lo + 1000]), timeout=30)
            found.update((item.id, codec.unpack(item.vector_f32, DIM)[0]) for item in reply.items)
        missing = [i for i in ids if i not in found]
        assert not missing, f"{len(missing)} acknowledged ids lost, e.g. {missing[:5]}"
        assert all(np.array_equal(found[i], ledger.present[i]) for i in ids)
        gone = sorted(ledger.deleted - ledger.unknown - ledger.present.keys())
        reply = stub.Get(search_pb2.GetRequest(collection=NAME, ids=gone[:1000]), timeout=30)
        assert not reply.items, f"deleted ids came back: {[i.id for i in reply.items][:5]}"

        for item_id in random.Random(3).sample(ids, 100):  # each vector still finds itself through the index
            hits = stub.Search(search_pb2.SearchRequest(
                collection=NAME, vector_f32=codec.pack(ledger.present[item_id]), k=1, skip_cache=True), timeout=10)
            assert hits.hits[0].id == item_id
        logs = "".join(p.log_path.read_text() for p in cluster.shard_procs)
    snapshots, recoveries, trainings = (logs.count(s) for s in ("snapshot at", "recovered collection", "trained IVF"))
    print(f"{snapshots} snapshots, {recoveries} recoveries, {trainings} trainings")
    assert recoveries >= ROUNDS and snapshots > 0 and trainings > 0
