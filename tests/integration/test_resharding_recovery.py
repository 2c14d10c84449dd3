"""Resharding meets restarts, with real processes: after a 5th shard joined, every process restarts (coordinators
with their original flags, which do not name the new shard) and the stored layout still decides where each id lives;
a coordinator that was down during the move routes by it; requests routed by an older layout are refused; a move
whose coordinator is killed mid-copy is finished by another one; and the refusals of a move that cannot start."""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from typing import Iterator

import grpc
import numpy as np
import pytest

from shardsearch import codec
from shardsearch.tools.local import LocalCluster, Process
from shardsearch.topology import Layout
from shardsearch.v1 import admin_pb2, admin_pb2_grpc, search_pb2, search_pb2_grpc, shard_pb2, shard_pb2_grpc
from tests.integration.conftest import running_cluster, shard_ids, upsert, wait_for_move

DIM = 16
KEPT = "kept"
FLAT = search_pb2.IndexOptions(train_threshold=1_000_000)  # never trained: exact, and no maintenance work


def stubs(address: str) -> tuple[search_pb2_grpc.SearchServiceStub, admin_pb2_grpc.AdminServiceStub]:
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    return search_pb2_grpc.SearchServiceStub(channel), admin_pb2_grpc.AdminServiceStub(channel)


def shard_stub(address: str) -> shard_pb2_grpc.ShardServiceStub:
    return shard_pb2_grpc.ShardServiceStub(grpc.insecure_channel(address))


def create(stub: search_pb2_grpc.SearchServiceStub, name: str) -> None:
    stub.CreateCollection(search_pb2.CreateCollectionRequest(name=name, dim=DIM, metric=search_pb2.METRIC_L2,
                                                             index=FLAT))


def placement(layout: admin_pb2.Topology, collection: str) -> dict[str, str]:
    """id -> the shard holding it, read from every shard of the layout; fails on an id held twice."""
    seen: dict[str, str] = {}
    for spec in layout.shards:
        for item_id in shard_ids(spec.addresses[0], collection):
            assert item_id not in seen, f"{collection}: {item_id} is on {seen[item_id]} and on {spec.name}"
            seen[item_id] = spec.name
    return seen


def assert_on_owners(layout: admin_pb2.Topology, collection: str, expected: set[str]) -> None:
    seen = placement(layout, collection)
    assert set(seen) == expected, (
        f"{collection}: missing {sorted(expected - set(seen))[:5]}, unexpected {sorted(set(seen) - expected)[:5]}"
    )
    ring = Layout.of(layout).ring
    ids = list(seen)
    wrong = [(i, seen[i], ring.shards[o]) for i, o in zip(ids, ring.owner_indices(ids)) if ring.shards[o] != seen[i]]
    assert not wrong, f"{collection}: {len(wrong)} ids off their ring owner, e.g. (id, on, owner) {wrong[:3]}"


def restart_with_original_flags(cluster: LocalCluster, proc: Process, timeout: float = 60.0) -> None:
    """Stops (if running) and starts a process with the arguments it was first started with. Unlike
    LocalCluster.restart_coordinators, a coordinator keeps the --shards of its first start (without shards that
    joined since); it gets a new port."""
    proc.stop()
    proc.start({**os.environ, "OMP_NUM_THREADS": str(cluster.omp_threads), **cluster.env})
    proc.wait_ready(time.monotonic() + timeout)


# ---- one AddShard, then restarts ----------------------------------------------------------------------------------


@dataclass
class Moved:
    cluster: LocalCluster
    layout: admin_pb2.Topology
    """The layout after the move (5 shards, no move)."""
    live: dict[str, np.ndarray]
    deleted: set[str]
    moved: int
    """Live items the move copied to the new shard."""
    original_shards: str
    """The coordinators' --shards at their first start (shard-0..3)."""


@pytest.fixture(scope="module")
def moved(request: pytest.FixtureRequest) -> Iterator[Moved]:
    """4 shards and 2 coordinators; 3000 items (300 then deleted); the second coordinator is stopped; shard-4 joins
    through the first."""
    with running_cluster(request, shards=4, coordinators=2, coordinator_args=["--cache", "off"]) as cluster:
        main, admin = stubs(cluster.addresses[0])
        create(main, KEPT)
        rng = np.random.default_rng(21)
        ids = [f"k{i}" for i in range(3000)]
        x = rng.standard_normal((3000, DIM)).astype(np.float32)
        upsert(main, KEPT, ids, x)
        deleted = set(ids[::10])
        main.Delete(search_pb2.DeleteRequest(collection=KEPT, ids=sorted(deleted)))
        live = {i: v for i, v in zip(ids, x) if i not in deleted}
        original_shards = cluster.shard_list()
        cluster.coordinator_procs[1].stop()
        extra = cluster.start_extra_shard("shard-4")
        admin.AddShard(admin_pb2.AddShardRequest(shard=admin_pb2.ShardSpec(name="shard-4",
                                                                            addresses=[extra.address])))
        done = wait_for_move(admin)
        assert all(r.verified for r in done.move.ranges)
        layout = admin.GetTopology(admin_pb2.GetTopologyRequest())
        layout.ClearField("move")
        assert [s.name for s in layout.shards] == [f"shard-{i}" for i in range(5)]
        moved_items = sum(r.items for r in done.move.ranges if r.collection == KEPT)
        yield Moved(cluster, layout, live, deleted, moved_items, original_shards)


def test_the_move_leaves_each_item_once_on_its_owner(moved: Moved) -> None:
    assert_on_owners(moved.layout, KEPT, set(moved.live))
    assert 0.1 < moved.moved / len(moved.live) < 0.3, moved.moved
    assert len(shard_ids(moved.cluster.shard_procs[4].address, KEPT)) == moved.moved


@pytest.mark.parametrize("method", ["Upsert", "Delete", "Get", "ListIds", "Search"])
def test_a_request_routed_by_an_older_layout_is_refused(moved: Moved, method: str) -> None:
    stored = moved.layout.version
    assert stored >= 3  # COPYING, SWITCHED, then the new ring alone
    stub = shard_stub(moved.cluster.shard_procs[0].address)
    ring = Layout.of(moved.layout).ring
    kept = next(i for i in sorted(moved.live) if ring.owner(i) == "shard-0")
    new = next(i for i in (f"stale{j}" for j in range(100)) if ring.owner(i) == "shard-0")
    request = {
        "Upsert": shard_pb2.ShardUpsertRequest(collection=KEPT, ids=[new], vectors_f32=codec.pack(
            np.ones((1, DIM), np.float32))),
        "Delete": shard_pb2.ShardDeleteRequest(collection=KEPT, ids=[kept]),
        "Get": shard_pb2.ShardGetRequest(collection=KEPT, ids=[kept]),
        "ListIds": shard_pb2.ShardListIdsRequest(collection=KEPT, limit=10),
        "Search": shard_pb2.ShardSearchRequest(collection=KEPT, queries_f32=codec.pack(np.ones((1, DIM), np.float32)),
                                               n=1, k=5),
    }[method]
    for stale in (1, stored - 1):
        request.topology_version = stale
        with pytest.raises(grpc.RpcError) as refused:
            getattr(stub, method)(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.ABORTED, refused.value.details()
        details = refused.value.details()
        assert re.search(rf"\blayout {stale}\b", details) and re.search(rf"\blayout {stored}\b", details), details
    # Nothing refused was applied, and the current layout is served.
    got = stub.Get(shard_pb2.ShardGetRequest(collection=KEPT, ids=[kept, new], topology_version=stored))
    assert list(got.ids) == [kept]


def test_an_unchecked_write_is_accepted_and_kept_only_by_its_owner(moved: Moved) -> None:
    """topology_version 0 (a replica catching up) is not checked; the shard still keeps only the ids it owns."""
    main, _ = stubs(moved.cluster.addresses[0])
    create(main, "unchecked")
    ring = Layout.of(moved.layout).ring
    stub = shard_stub(moved.cluster.shard_procs[0].address)
    owned: set[str] = set()
    for version in (0, moved.layout.version):
        ids = [f"u{version}-{i}" for i in range(40)]
        upserted = stub.Upsert(shard_pb2.ShardUpsertRequest(
            collection="unchecked", ids=ids, vectors_f32=codec.pack(np.ones((len(ids), DIM), np.float32)),
            topology_version=version,
        ), timeout=10)
        assert upserted.upserted == len(ids)
        mine = {i for i in ids if ring.owner(i) == "shard-0"}
        assert 0 < len(mine) < len(ids)
        owned |= mine
    assert set(shard_ids(moved.cluster.shard_procs[0].address, "unchecked")) == owned


def test_a_coordinator_down_during_the_move_routes_by_the_stored_layout(moved: Moved) -> None:
    late = moved.cluster.coordinator_procs[1]
    assert f"--shards {moved.original_shards}" in " ".join(late.args) and "shard-4" not in moved.original_shards
    restart_with_original_flags(moved.cluster, late)
    writer, late_admin = stubs(late.address)
    shown = late_admin.GetTopology(admin_pb2.GetTopologyRequest())
    assert shown.version == moved.layout.version
    assert [s.name for s in shown.shards] == [f"shard-{i}" for i in range(5)]

    rng = np.random.default_rng(22)
    ids = [f"late{i}" for i in range(600)]
    x = rng.standard_normal((600, DIM)).astype(np.float32)
    upsert(writer, KEPT, ids, x, batch=200)
    overwritten = sorted(moved.live)[:100]  # older ids, some of them moved to shard-4
    y = rng.standard_normal((100, DIM)).astype(np.float32)
    upsert(writer, KEPT, overwritten, y)
    gone = ids[:50] + sorted(moved.live)[100:150]
    writer.Delete(search_pb2.DeleteRequest(collection=KEPT, ids=gone))
    moved.live.update(zip(ids, x))
    moved.live.update(zip(overwritten, y))
    for i in gone:
        moved.live.pop(i)
    moved.deleted.update(gone)

    reader, _ = stubs(moved.cluster.addresses[0])
    wanted = ids + overwritten + gone
    got = {item.id: item for item in reader.Get(search_pb2.GetRequest(collection=KEPT, ids=wanted)).items}
    assert set(got) == set(wanted) - set(gone)
    for item_id, item in got.items():
        assert np.array_equal(codec.unpack(item.vector_f32, DIM)[0], moved.live[item_id]), item_id
    assert_on_owners(moved.layout, KEPT, set(moved.live))


def test_after_restarting_every_process_the_stored_layout_still_decides(moved: Moved) -> None:
    cluster = moved.cluster
    for index in range(len(cluster.shard_procs)):
        cluster.restart_shard(index)
    for proc in cluster.coordinator_procs:
        restart_with_original_flags(cluster, proc)
        assert "shard-4" not in proc.args[proc.args.index("--shards") + 1]

    for address in cluster.addresses:
        search, admin = stubs(address)
        shown = admin.GetTopology(admin_pb2.GetTopologyRequest())
        assert shown.version == moved.layout.version and not shown.HasField("move")
        assert [s.name for s in shown.shards] == [f"shard-{i}" for i in range(5)]
    # The old owners' logs still hold the items that moved; recovery replays them and drops them again.
    dropped = 0
    for proc in cluster.shard_procs[:4]:
        found = re.findall(rf"collection {KEPT}: dropped (\d+) items owned by other shards", proc.log_tail(400))
        dropped += int(found[-1]) if found else 0
    assert dropped >= moved.moved, f"recovery dropped {dropped} items, the move copied {moved.moved}"
    assert_on_owners(moved.layout, KEPT, set(moved.live))

    # Reads and writes through the restarted coordinators reach the owners of the 5-shard ring.
    search, _ = stubs(cluster.addresses[1])
    sample = sorted(moved.live)[::7]
    got = search.Get(search_pb2.GetRequest(collection=KEPT, ids=sample + sorted(moved.deleted)[:50]))
    assert [item.id for item in got.items] == sample
    for item in got.items:
        assert np.array_equal(codec.unpack(item.vector_f32, DIM)[0], moved.live[item.id])
    ids = [f"after{i}" for i in range(300)]
    upsert(search, KEPT, ids, np.zeros((300, DIM), np.float32))
    moved.live.update((i, np.zeros(DIM, np.float32)) for i in ids)
    assert_on_owners(moved.layout, KEPT, set(moved.live))
    hits = search.Search(search_pb2.SearchRequest(collection=KEPT, vector_f32=codec.pack(np.zeros(DIM, np.float32)),
                                                  k=10))
    assert len(hits.hits) == 10 and all(h.id.startswith("after") for h in hits.hits)


# ---- a move whose coordinator dies ------------------------------------------------------------------------------


def test_resume_move_finishes_a_move_whose_coordinator_was_killed(request: pytest.FixtureRequest) -> None:
    with running_cluster(request, shards=4, coordinators=2, coordinator_args=["--cache", "off"]) as cluster:
        resume_after_kill(cluster)


def resume_after_kill(cluster: LocalCluster) -> None:
    driver, driver_admin = stubs(cluster.addresses[0])
    other, other_admin = stubs(cluster.addresses[1])
    rng = np.random.default_rng(23)
    n, names = 40_000, ["m0", "m1", "m2"]
    live: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        create(driver, name)
        ids = [f"{name}-{i}" for i in range(n)]
        x = rng.standard_normal((n, DIM)).astype(np.float32)
        upsert(driver, name, ids, x, batch=5000)
        live[name] = dict(zip(ids, x))
    extra = cluster.start_extra_shard("shard-4")
    joining = shard_stub(extra.address)

    started = driver_admin.AddShard(admin_pb2.AddShardRequest(
        shard=admin_pb2.ShardSpec(name="shard-4", addresses=[extra.address])))
    assert started.move.phase == admin_pb2.Move.PHASE_COPYING
    # Kill the driver once the copy has started, but before it is verified.
    deadline = time.monotonic() + 30
    while joining.Stats(shard_pb2.ShardStatsRequest(collection=names[0])).info.vectors == 0:
        assert time.monotonic() < deadline, "the copy did not start"
        time.sleep(0.005)
    assert driver_admin.GetTopology(admin_pb2.GetTopologyRequest()).move.phase == admin_pb2.Move.PHASE_COPYING
    cluster.coordinator_procs[0].signal(signal.SIGKILL)
    assert cluster.coordinator_procs[0].popen is not None
    cluster.coordinator_procs[0].popen.wait(10)
    stored = shard_stub(cluster.shard_procs[0].address).GetTopology(shard_pb2.ShardGetTopologyRequest()).topology
    assert stored.move.phase == admin_pb2.Move.PHASE_COPYING, "the move got past copying before its driver died"
    copied = sum(joining.Stats(shard_pb2.ShardStatsRequest(collection=c)).info.vectors for c in names)
    print(f"\ndriver killed with {copied} items on shard-4")

    # While no one drives the move, writes through the other coordinator go on (to both owners).
    ids = [f"m0-new{i}" for i in range(500)]
    x = rng.standard_normal((500, DIM)).astype(np.float32)
    upsert(other, "m0", ids, x)
    live["m0"].update(zip(ids, x))
    gone = [f"m1-{i}" for i in range(0, n, 50)]
    other.Delete(search_pb2.DeleteRequest(collection="m1", ids=gone))
    for i in gone:
        live["m1"].pop(i)

    resumed = other_admin.ResumeMove(admin_pb2.ResumeMoveRequest())
    assert resumed.move.kind == admin_pb2.Move.KIND_ADD and resumed.move.shard == "shard-4"
    done = wait_for_move(other_admin)
    assert all(r.verified for r in done.move.ranges) and len(done.move.ranges) == 4 * len(names)
    final = other_admin.GetTopology(admin_pb2.GetTopologyRequest())
    final.ClearField("move")
    assert [s.name for s in final.shards] == [f"shard-{i}" for i in range(5)]
    for spec in final.shards:
        on_shard = shard_stub(spec.addresses[0]).GetTopology(shard_pb2.ShardGetTopologyRequest())
        assert on_shard.topology.version == final.version and not on_shard.topology.HasField("move")
    for name in names:
        assert_on_owners(final, name, set(live[name]))
    sample = sorted(set(sorted(live["m0"])[::97]) | set(ids[::5]))
    got = other.Get(search_pb2.GetRequest(collection="m0", ids=sample))
    assert [item.id for item in got.items] == sample
    for item in got.items:
        assert np.array_equal(codec.unpack(item.vector_f32, DIM)[0], live["m0"][item.id])
    assert not other.Get(search_pb2.GetRequest(collection="m1", ids=gone)).items


# ---- moves that cannot start ----------------------------------------------------------------------------------


def test_a_non_empty_joining_shard_and_removing_the_last_shard_are_refused(request: pytest.FixtureRequest) -> None:
    with running_cluster(request, shards=1, durable=False, coordinator_args=["--cache", "off"]) as cluster:
        search, admin = stubs(cluster.address)
        create(search, KEPT)
        upsert(search, KEPT, ["a", "b"], np.ones((2, DIM), np.float32))
        before = admin.GetTopology(admin_pb2.GetTopologyRequest())

        # A fresh shard process that holds items of a collection the cluster does not have.
        extra = cluster.start_extra_shard("shard-1")
        own = shard_stub(extra.address)
        own.CreateCollection(shard_pb2.ShardCreateCollectionRequest(collection=search_pb2.Collection(
            name="elsewhere", dim=4, metric=search_pb2.METRIC_L2, index=FLAT)))
        own.Upsert(shard_pb2.ShardUpsertRequest(collection="elsewhere", ids=["z"],
                                                vectors_f32=codec.pack(np.ones((1, 4), np.float32))))
        with pytest.raises(grpc.RpcError) as refused:
            admin.AddShard(admin_pb2.AddShardRequest(shard=admin_pb2.ShardSpec(
                name="shard-1", addresses=[extra.address])), timeout=30)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value.details()
        assert "elsewhere" in refused.value.details() and "empty" in refused.value.details()

        with pytest.raises(grpc.RpcError) as last:
            admin.RemoveShard(admin_pb2.RemoveShardRequest(name="shard-0"), timeout=30)
        assert last.value.code() == grpc.StatusCode.FAILED_PRECONDITION, last.value.details()
        assert "last" in last.value.details()

        # Neither left a trace: same layout (the initial one the coordinator stored, version 1), nothing stored
        # on the refused shard, the cluster serves as before.
        after = admin.GetTopology(admin_pb2.GetTopologyRequest())
        assert after == before and not after.HasField("move") and after.version == 1
        for proc in cluster.shard_procs:
            stored = shard_stub(proc.address).GetTopology(shard_pb2.ShardGetTopologyRequest()).topology.version
            assert stored == (0 if proc.address == extra.address else 1), proc.name
        assert KEPT not in {c.name for c in own.ListCollections(shard_pb2.ShardListCollectionsRequest())
                            .collections}
        upsert(search, KEPT, ["c"], np.ones((1, DIM), np.float32))
        got = search.Get(search_pb2.GetRequest(collection=KEPT, ids=["a", "b", "c"]))
        assert [item.id for item in got.items] == ["a", "b", "c"]
        assert sorted(shard_ids(cluster.shard_procs[0].address, KEPT)) == ["a", "b", "c"]


def test_a_request_from_a_future_layout_does_not_wedge_the_shard() -> None:
    """Only a stored layout moves a shard's refusal floor: a request naming a newer version is served and changes
    nothing, so coordinators (which read the layout from the shards) are never refused by a floor they cannot see."""
    with LocalCluster(shards=2, durable=False, coordinator_args=["--cache", "off"]) as cluster:
        search, _ = stubs(cluster.address)
        create(search, KEPT)
        ids = [f"f{i}" for i in range(20)]
        upsert(search, KEPT, ids, np.ones((20, DIM), np.float32))
        shard = shard_stub(cluster.shard_procs[0].address)
        shard.Get(shard_pb2.ShardGetRequest(collection=KEPT, ids=["f0"], topology_version=99))
        assert shard.GetTopology(shard_pb2.ShardGetTopologyRequest()).topology.version == 1  # the initial one
        got = search.Get(search_pb2.GetRequest(collection=KEPT, ids=ids), timeout=10)
        assert [item.id for item in got.items] == ids
