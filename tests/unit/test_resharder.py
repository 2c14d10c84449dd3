"""The resharder's phases, driven through the real ShardPool, Router and Catalog against fake replicas that hold real
collections (shard_server.index.Collection): a move announces COPYING, copies and verifies every range, then
SWITCHED, then the new ring alone, in that order on every replica; buckets that differ after a copy are copied
again; a failed step is retried until the move ends.

The fakes (tests/unit/fake_shards.py) carry the real shard_pb2 messages serialized; these replicas apply Upsert and
Delete to their collections, stream ExportCollection and answer Checksum from them, and refuse requests routed by
an older layout than the one they store (ABORTED), as shards do."""

from __future__ import annotations

from typing import Any, AsyncIterator

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from shardsearch import codec, topology
from shardsearch.coordinator import resharding
from shardsearch.coordinator.catalog import Catalog
from shardsearch.coordinator.resharding import MoveMetrics, Resharder
from shardsearch.coordinator.router import Router
from shardsearch.coordinator.shards import ShardMetrics, ShardPool
from shardsearch.ring import key_hashes
from shardsearch.shard_server.index import Collection
from shardsearch.v1 import admin_pb2, search_pb2, shard_pb2
from tests.unit.fake_shards import FakeChannel, FakeReplica, rpc_error

DIM = 8
ITEMS = 400
SPEC = search_pb2.Collection(name="c", dim=DIM, metric=search_pb2.METRIC_L2)


class DataReplica(FakeReplica):
    """A replica with real collections, which can lose the first copies of some ids (`lost`: a copy that did not
    land, for verification to find)."""

    def __init__(self, address: str, log: list[tuple[str, str]]) -> None:
        super().__init__(address, log)
        self.collections: dict[str, Collection] = {}
        self.stored: list[admin_pb2.Topology] = []
        """Every layout it stored, in order."""
        self.lost: set[str] = set()
        """Ids whose copies it acknowledges and drops until it is first asked for a checksum."""

    def serve(self, method: str, request: Any) -> Message:
        self.check_layout(request)
        if method == "SetTopology":
            if request.topology.version < self.topology.version:
                raise rpc_error(grpc.StatusCode.ABORTED, f"already at layout {self.topology.version}")
            if request.topology.version > self.topology.version:
                self.topology = request.topology
                self.stored.append(request.topology)
            return shard_pb2.ShardSetTopologyResponse()
        if method == "ListCollections":
            return shard_pb2.ShardListCollectionsResponse(collections=[c.spec for c in self.collections.values()])
        if method == "CreateCollection":
            if request.collection.name in self.collections:
                raise rpc_error(grpc.StatusCode.ALREADY_EXISTS, "exists")
            self.collections[request.collection.name] = Collection(request.collection)
            return shard_pb2.ShardCreateCollectionResponse(collection=request.collection)
        if method == "Stats":
            return shard_pb2.ShardStatsResponse(info=self.collections[request.collection].info())
        if method == "Upsert":
            keep = [i for i, item_id in enumerate(request.ids) if item_id not in self.lost]
            coll = self.collections[request.collection]
            coll.upsert([request.ids[i] for i in keep], codec.unpack(request.vectors_f32, DIM)[keep],
                        versions=np.asarray(request.versions, dtype=np.uint64)[keep])
            return shard_pb2.ShardUpsertResponse(upserted=len(request.ids))
        if method == "Delete":
            deleted = self.collections[request.collection].delete(
                list(request.ids), np.asarray(request.versions, dtype=np.uint64))
            return shard_pb2.ShardDeleteResponse(deleted=deleted)
        if method == "Checksum":
            self.lost.clear()
            counts, sums = self.collections[request.collection].checksum(topology.Selector(request.select).mask)
            return shard_pb2.ShardChecksumResponse(counts=counts.tolist(), sums=sums.tolist())
        return super().serve(method, request)

    async def stream(self, method: str, request: Any) -> AsyncIterator[Message]:
        assert method == "ExportCollection"
        self.received.append((method, request))
        self._log.append((self.address, method))
        coll = self.collections.get(request.collection)
        if coll is None:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, f"collection {request.collection!r} does not exist")
        select = topology.Selector(request.select).mask
        after = -1
        while True:
            ids, vectors, _, versions, after, _ = coll.export_chunk(after, request.chunk_items or 100, select)
            if ids:
                yield shard_pb2.ShardExportChunk(items=shard_pb2.ShardUpsertRequest(
                    collection=request.collection, ids=ids, vectors_f32=codec.pack(vectors),
                    versions=versions.tolist()))
            if after < 0:
                break
        markers = coll.delete_markers(select)
        if markers:
            yield shard_pb2.ShardExportChunk(deletes=shard_pb2.ShardDeleteRequest(
                collection=request.collection, ids=[i for i, _ in markers], versions=[v for _, v in markers]))

    def items(self) -> dict[str, int]:
        """Live id -> version in collection c."""
        coll = self.collections["c"]
        ids, _, _, versions, _, _ = coll.export_chunk(-1, 10 * ITEMS)
        return dict(zip(ids, versions.tolist()))


class Cluster:
    """Data replicas by address, and the coordinator parts under test over them."""

    def __init__(self, shards: dict[str, int]) -> None:
        self.replicas: dict[str, DataReplica] = {}
        self.log: list[tuple[str, str]] = []
        self.registry = CollectorRegistry()
        members = [(name, [self.replica(f"{name}-r{i}:50061").address for i in range(n)]) for name, n in shards.items()]
        self.v1 = topology.bootstrap(members, vnodes=64)
        self.v1.version = 1
        for replica in self.replicas.values():
            replica.topology = self.v1
        self.pool = ShardPool(members, ShardMetrics(self.registry), channel_factory=self.channel,
                              search_streams=False)
        self.router = Router(self.pool, self.v1)
        self.metrics = MoveMetrics(self.registry)
        self.resharder = Resharder(self.pool, self.router, Catalog(self.pool), self.metrics)

    def replica(self, address: str) -> DataReplica:
        if address not in self.replicas:
            self.replicas[address] = DataReplica(address, self.log)
        return self.replicas[address]

    def channel(self, address: str) -> Any:
        return FakeChannel(self.replica(address))

    def shard(self, name: str) -> list[DataReplica]:
        return [r for r in self.replicas.values() if r.shard == name]

    def seed(self, ids: list[str], vectors: np.ndarray, versions: np.ndarray) -> None:
        """Creates collection c on every replica and stores each item on every replica of its owner under v1."""
        layout = topology.Layout.of(self.v1)
        hashes = key_hashes(ids)
        for replica in self.replicas.values():
            coll = replica.collections.setdefault("c", Collection(SPEC))
            if replica.shard in layout.ring.shards:
                mine = np.flatnonzero(layout.owned(replica.shard, hashes))
                coll.upsert([ids[i] for i in mine], vectors[mine], versions=versions[mine])

    def timeline(self) -> list[tuple[str, str, Any]]:
        """(address, method, request) of every request, in the order the replicas received them."""
        seen: dict[str, int] = {}
        out = []
        for address, method in self.log:
            index = seen.get(address, 0)
            seen[address] = index + 1
            name, request = self.replicas[address].received[index]
            assert name == method
            out.append((address, method, request))
        return out

    def called(self, method: str) -> list[tuple[str, Any]]:
        """(address, request) of every `method` request, in order."""
        return [(address, request) for address, name, request in self.timeline() if name == method]

    async def move(self, **kwargs: Any) -> admin_pb2.Topology:
        """Starts a move (add=spec or remove=name) and waits for it to end; returns the final layout."""
        if "add" in kwargs:
            await self.resharder.add_shard(kwargs["add"], timeout=5.0)
        else:
            await self.resharder.remove_shard(kwargs["remove"], timeout=5.0)
        assert self.resharder._task is not None
        await self.resharder._task
        return self.resharder.describe()

    async def close(self) -> None:
        await self.resharder.close()
        await self.pool.close()


def data(n: int = ITEMS, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return ([f"item-{i}" for i in range(n)], rng.standard_normal((n, DIM)).astype(np.float32),
            np.arange(100, 100 + n, dtype=np.uint64))


def owners(layout: admin_pb2.Topology, ids: list[str]) -> dict[str, set[str]]:
    ring = topology.Layout.of(layout)
    hashes = key_hashes(ids)
    return {name: {ids[i] for i in np.flatnonzero(ring.owned(name, hashes))} for name in ring.ring.shards}


@pytest.fixture
async def grown() -> AsyncIterator[Cluster]:
    """Shards s0 and s1 (two replicas each) with data, and s2 (two replicas) running empty, not on the ring."""
    cluster = Cluster({"s0": 2, "s1": 2})
    for i in range(2):
        cluster.replica(f"s2-r{i}:50061")
    cluster.seed(*data())
    yield cluster
    await cluster.close()


S2 = admin_pb2.ShardSpec(name="s2", addresses=["s2-r0:50061", "s2-r1:50061"])


async def test_adding_a_shard_announces_copying_copies_verifies_then_switches_then_drops_the_old_ring(
    grown: Cluster,
) -> None:
    ids, _, versions = data()
    final = await grown.move(add=S2)
    assert final.version == 4
    for replica in grown.replicas.values():  # every replica of every shard stored each layout, in order
        assert [t.version for t in replica.stored] == [2, 3, 4], replica.address
        assert [t.move.phase for t in replica.stored[:2]] == [admin_pb2.Move.PHASE_COPYING,
                                                             admin_pb2.Move.PHASE_SWITCHED]
        assert not replica.stored[2].HasField("move")
    timeline = grown.timeline()
    first_upsert = min(i for i, (_, method, _) in enumerate(timeline) if method == "Upsert")
    copying = {a for a, method, r in timeline[:first_upsert] if method == "SetTopology" and r.topology.version == 2}
    assert copying == set(grown.replicas), "copying starts once every replica stores COPYING"
    last_checksum = max(i for i, (_, method, _) in enumerate(timeline) if method == "Checksum")
    first_switch = min(i for i, (_, method, r) in enumerate(timeline)
                       if method == "SetTopology" and r.topology.version == 3)
    assert first_switch > last_checksum, "SWITCHED only after every range verified"
    for _, request in grown.called("Upsert"):
        assert request.topology_version == 2  # copies are writes routed by the COPYING layout
    moved = owners(final, ids)["s2"]
    expected = {item_id: int(v) for item_id, v in zip(ids, versions.tolist()) if item_id in moved}
    assert moved and len(moved) < len(ids)
    for replica in grown.shard("s2"):
        assert replica.items() == expected  # the new owner holds its share, with the writes' versions
    progress = final.move if final.HasField("move") else grown.resharder._progress
    assert progress is not None
    assert sorted((r.collection, r.source, r.target) for r in progress.ranges) == [("c", "s0", "s2"), ("c", "s1", "s2")]
    assert all(r.verified for r in progress.ranges)
    assert sum(r.items for r in progress.ranges) == len(moved)
    assert grown.registry.get_sample_value("shardsearch_coordinator_moves_total", {"kind": "KIND_ADD"}) == 1


async def test_a_copy_that_did_not_land_is_found_by_the_checksums_and_copied_again(grown: Cluster) -> None:
    ids, _, _ = data()
    bound = owners(topology.bootstrap([(s.name, list(s.addresses)) for s in (*grown.v1.shards, S2)], vnodes=64), ids)
    lost = sorted(bound["s2"])[:5]
    for replica in grown.shard("s2"):
        replica.lost = set(lost)  # their first copies are acknowledged and dropped
    final = await grown.move(add=S2)
    moved = owners(final, ids)["s2"]
    for replica in grown.shard("s2"):
        assert set(replica.items()) == moved
    progress = grown.resharder._progress
    assert progress is not None and all(r.verified for r in progress.ranges)
    assert sum(r.mismatched_rounds for r in progress.ranges) >= 1
    again = [request for _, request in grown.called("ExportCollection") if request.select.buckets]
    assert again, "the second copy asks only for the buckets that differed"
    assert all(len(r.select.buckets) < topology.BUCKETS for r in again)
    assert (grown.registry.get_sample_value("shardsearch_coordinator_move_mismatched_buckets_total") or 0) >= 1


async def test_a_failed_announcement_is_retried_until_the_move_ends(grown: Cluster,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resharding, "RETRY_MIN_S", 0.01)
    flaky = grown.replicas["s1-r1:50061"]
    failures = 0

    async def refuse_switch_once(request: Any) -> Message | None:
        nonlocal failures
        if request.topology.version == 3 and not failures:
            failures += 1
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
        return None

    flaky.on["SetTopology"] = refuse_switch_once
    final = await grown.move(add=S2)
    assert failures == 1
    assert [t.version for t in flaky.stored] == [2, 3, 4]
    assert final.version == 4
    progress = grown.resharder._progress
    assert progress is not None and progress.error == "" and progress.finished_unix_ms


async def test_removing_a_shard_copies_its_share_to_the_shards_that_stay() -> None:
    cluster = Cluster({"s0": 1, "s1": 1, "s2": 1})
    try:
        ids, _, versions = data()
        cluster.seed(ids, data()[1], versions)
        leaving = set(cluster.replicas["s2-r0:50061"].items())
        final = await cluster.move(remove="s2")
        assert final.version == 4
        progress = cluster.resharder._progress
        assert progress is not None
        assert sorted((r.source, r.target) for r in progress.ranges) == [("s2", "s0"), ("s2", "s1")]
        share = owners(final, ids)
        for name in ("s0", "s1"):
            held = set(cluster.replicas[f"{name}-r0:50061"].items())
            assert held >= share[name] and leaving & share[name] <= held
        assert share["s0"] | share["s1"] == set(ids)
        assert cluster.registry.get_sample_value("shardsearch_coordinator_moves_total", {"kind": "KIND_REMOVE"}) == 1
    finally:
        await cluster.close()
