"""Adding and removing shards online, with real processes: 4 shards under continuous upsert + delete + search traffic
through two coordinators; a 5th shard joins, then one leaves. Afterwards every acknowledged item is present exactly
once, on its ring owner, with its exact vector; no deleted id is present; recall@10 is unchanged; no search failed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Iterator

import grpc
import numpy as np
import pytest

from shardsearch import codec, topology
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import admin_pb2, admin_pb2_grpc, search_pb2, search_pb2_grpc
from tests.conftest import load_dataset, recall_at_10
from tests.integration.conftest import (
    batch_search,
    running_cluster,
    shard_ids,
    upsert,
    wait_for_move,
    wait_trained,
    wait_until,
)

COLLECTION = "moving"
NPROBE = 16
FAR = 1000.0  # the traffic's items sit this far off the real data, so they never enter its neighbours


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    with running_cluster(request, shards=4, coordinators=2, coordinator_args=["--cache", "off"]) as running:
        yield running


def stubs(address: str) -> tuple[search_pb2_grpc.SearchServiceStub, admin_pb2_grpc.AdminServiceStub]:
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    return search_pb2_grpc.SearchServiceStub(channel), admin_pb2_grpc.AdminServiceStub(channel)


class Traffic:
    """Writes (upserts, overwrites, deletes) through one coordinator and searches through the other, recording
    what was acknowledged and every failure."""

    def __init__(self, writer: search_pb2_grpc.SearchServiceStub, searcher: search_pb2_grpc.SearchServiceStub,
                 queries: np.ndarray) -> None:
        self.writer, self.searcher, self.queries = writer, searcher, queries
        self.live: dict[str, np.ndarray] = {}
        self.deleted: set[str] = set()
        self.write_errors: list[str] = []
        self.search_errors: list[str] = []
        self.bad_answers: list[str] = []
        self.searches = self.writes = 0
        self._stop = threading.Event()
        self._rng = np.random.default_rng(7)
        self._threads = [threading.Thread(target=self._write, daemon=True),
                         threading.Thread(target=self._search, daemon=True)]

    def __enter__(self) -> "Traffic":
        for thread in self._threads:
            thread.start()
        return self

    def wait_for_more(self, when: str, calls: int = 5) -> None:
        """Waits until both kinds of traffic have made `calls` more calls."""
        writes, searches = self.writes, self.searches
        wait_until(lambda: self.writes >= writes + calls and self.searches >= searches + calls,
                   f"{calls} more writes and searches {when}", seconds=60)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _write(self) -> None:
        rng, n = self._rng, 0
        while not self._stop.is_set():
            ids = [f"t{n + i}" for i in range(20)]
            n += 20
            overwrite = [i for i in list(self.live)[-40:] if rng.random() < 0.2]
            batch = ids + overwrite
            vectors = (FAR + rng.random((len(batch), 128))).astype(np.float32)
            try:
                self.writer.Upsert(search_pb2.UpsertRequest(collection=COLLECTION, items=[
                    search_pb2.Item(id=i, vector_f32=codec.pack(v)) for i, v in zip(batch, vectors)
                ]), timeout=10)
            except grpc.RpcError as exc:
                self.write_errors.append(f"upsert: {exc.code().name} {exc.details()}")
                continue  # not acknowledged: whether it landed is unknown, so it is not checked either way
            for i, v in zip(batch, vectors):
                self.live[i] = v
            self.writes += 1
            doomed = [i for i in list(self.live)[:-40] if rng.random() < 0.05][:10]
            if doomed:
                try:
                    self.writer.Delete(search_pb2.DeleteRequest(collection=COLLECTION, ids=doomed), timeout=10)
                except grpc.RpcError as exc:
                    self.write_errors.append(f"delete: {exc.code().name} {exc.details()}")
                    for i in doomed:  # unknown outcome: check neither presence nor absence
                        self.live.pop(i, None)
                    continue
                for i in doomed:
                    self.live.pop(i)
                    self.deleted.add(i)
            time.sleep(0.01)

    def _search(self) -> None:
        while not self._stop.is_set():
            try:
                answer = batch_search(self.searcher, COLLECTION, self.queries[:20], nprobe=NPROBE)
            except grpc.RpcError as exc:
                self.search_errors.append(f"{exc.code().name} {exc.details()}")
                continue
            self.searches += 1
            for result in answer.results:
                ids = [hit.id for hit in result.hits]
                if answer.partial or len(ids) != 10 or len(set(ids)) != 10:
                    self.bad_answers.append(f"partial={answer.partial} ids={ids}")


def test_add_then_remove_a_shard_under_traffic(cluster: LocalCluster) -> None:
    base, queries, gt = load_dataset("l2-10k-128")
    main, admin = stubs(cluster.addresses[0])
    other, other_admin = stubs(cluster.addresses[1])
    main.CreateCollection(search_pb2.CreateCollectionRequest(
        name=COLLECTION, dim=128, metric=search_pb2.METRIC_L2, index=search_pb2.IndexOptions(train_threshold=1000),
    ))
    base_ids = [str(i) for i in range(len(base))]
    upsert(main, COLLECTION, base_ids, base)

    def recall() -> float:
        answer = batch_search(main, COLLECTION, queries, nprobe=NPROBE)
        return recall_at_10([[int(h.id) for h in r.hits] for r in answer.results], gt)

    wait_trained(main, COLLECTION)
    before = recall()
    extra = cluster.start_extra_shard("shard-4")
    with Traffic(other, main, queries) as traffic:
        traffic.wait_for_more("before the move")
        started = time.monotonic()
        layout = admin.AddShard(admin_pb2.AddShardRequest(shard=admin_pb2.ShardSpec(
            name="shard-4", addresses=[extra.address])))
        assert layout.move.phase == admin_pb2.Move.PHASE_COPYING
        with pytest.raises(grpc.RpcError) as busy:  # one move at a time
            other_admin.RemoveShard(admin_pb2.RemoveShardRequest(name="shard-0"))
        assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        added = wait_for_move(admin, 240)
        add_s = time.monotonic() - started
        traffic.wait_for_more("after adding shard-4")
        started = time.monotonic()
        admin.RemoveShard(admin_pb2.RemoveShardRequest(name="shard-1"))
        removed = wait_for_move(admin, 240)
        remove_s = time.monotonic() - started
        traffic.wait_for_more("after removing shard-1")

    assert traffic.search_errors == []
    assert traffic.bad_answers[:3] == []
    assert traffic.write_errors == []
    assert traffic.writes > 10 and traffic.searches > 10, (traffic.writes, traffic.searches)
    moved_on_add = sum(r.items for r in added.move.ranges)
    print(f"\nadd: {moved_on_add} items moved of {len(base) + len(traffic.live)} in {add_s:.1f}s; "
          f"remove: {sum(r.items for r in removed.move.ranges)} items in {remove_s:.1f}s; "
          f"{traffic.writes} write calls and {traffic.searches} searches meanwhile")
    assert all(r.verified for r in [*added.move.ranges, *removed.move.ranges])
    expected = {**dict(zip(base_ids, base)), **traffic.live}
    assert 0.1 < moved_on_add / len(expected) < 0.35  # about 1/5 of the ids move to the 5th shard

    # Both coordinators use the final layout: shard-1 gone, shard-4 in.
    final = admin.GetTopology(admin_pb2.GetTopologyRequest())
    assert not final.HasField("move") or final.move.finished_unix_ms
    assert [s.name for s in final.shards] == ["shard-0", "shard-2", "shard-3", "shard-4"]
    deadline = time.monotonic() + 10
    while other_admin.GetTopology(admin_pb2.GetTopologyRequest()).version != final.version:
        assert time.monotonic() < deadline, "the second coordinator did not pick up the final layout"
        time.sleep(0.2)

    # Every acknowledged id exactly once, on its ring owner; nothing deleted; shard-1 holds nothing.
    ring = topology.Layout.of(final).ring
    addresses = {s.name: s.addresses[0] for s in final.shards}
    seen: dict[str, str] = {}
    for name, address in addresses.items():
        for item_id in shard_ids(address, COLLECTION):
            assert item_id not in seen, f"{item_id} is on {seen[item_id]} and {name}"
            seen[item_id] = name
    assert set(seen) == set(expected), (
        f"missing {sorted(set(expected) - set(seen))[:5]}, unexpected {sorted(set(seen) - set(expected))[:5]}"
    )
    owners = ring.owner_indices(list(seen))
    assert all(ring.shards[o] == seen[i] for i, o in zip(seen, owners))
    assert not traffic.deleted & set(seen)
    assert shard_ids(cluster.shard_procs[1].address, COLLECTION) == []

    # Exact vectors, read back through the coordinator that did not drive the moves.
    written = sorted(traffic.live)
    for lo in range(0, len(written), 1000):
        got = other.Get(search_pb2.GetRequest(collection=COLLECTION, ids=written[lo : lo + 1000]))
        assert [item.id for item in got.items] == written[lo : lo + 1000]
        for item in got.items:
            assert np.array_equal(codec.unpack(item.vector_f32, 128)[0], expected[item.id])
    gone = sorted(traffic.deleted)[:1000]
    assert not other.Get(search_pb2.GetRequest(collection=COLLECTION, ids=gone)).items if gone else True

    after = recall()
    print(f"recall@10 (nprobe {NPROBE}): {before:.3f} before, {after:.3f} after")
    assert after >= before - 0.02

    # The CLI shows the layout.
    shown = subprocess.run(
        [sys.executable, "-m", "shardsearch.tools.cli", "admin", "--coordinator", cluster.addresses[1], "topology"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert [s["name"] for s in json.loads(shown.stdout)["shards"]] == ["shard-0", "shard-2", "shard-3", "shard-4"]


def test_refusals(cluster: LocalCluster) -> None:
    _, admin = stubs(cluster.addresses[0])
    for call, request, code in [
        (admin.AddShard, admin_pb2.AddShardRequest(shard=admin_pb2.ShardSpec(name="shard-0", addresses=["x:1"])),
         grpc.StatusCode.ALREADY_EXISTS),
        (admin.AddShard, admin_pb2.AddShardRequest(shard=admin_pb2.ShardSpec(name="shard-9")),
         grpc.StatusCode.INVALID_ARGUMENT),
        (admin.RemoveShard, admin_pb2.RemoveShardRequest(name="shard-9"), grpc.StatusCode.NOT_FOUND),
        (admin.ResumeMove, admin_pb2.ResumeMoveRequest(), grpc.StatusCode.FAILED_PRECONDITION),
        (admin.AddShard, admin_pb2.AddShardRequest(shard=admin_pb2.ShardSpec(
            name="shard-9", addresses=[f"127.0.0.1:{cluster.shard_procs[0].port}"])),
         grpc.StatusCode.FAILED_PRECONDITION),  # a shard holding items cannot join
    ]:
        with pytest.raises(grpc.RpcError) as refused:
            call(request, timeout=30)
        assert refused.value.code() == code, refused.value.details()
        assert refused.value.details()
    assert not admin.GetTopology(admin_pb2.GetTopologyRequest()).HasField("move") or \
        admin.GetTopology(admin_pb2.GetTopologyRequest()).move.finished_unix_ms


def test_the_stored_layout_wins_over_changed_flags() -> None:
    """The first coordinator stores its flags' layout on the shards (version 1); a coordinator restarted with other
    flags (here: one more shard, as after raising SHARD_COUNT in Kubernetes before `admin add-shard`) keeps routing
    by the stored layout, so no id is looked for on a shard that does not hold it."""
    with LocalCluster(shards=2, coordinator_args=["--cache", "off"]) as cluster:
        search, admin = stubs(cluster.address)
        assert admin.GetTopology(admin_pb2.GetTopologyRequest()).version == 1
        search.CreateCollection(search_pb2.CreateCollectionRequest(name="kept", dim=4, metric=search_pb2.METRIC_L2))
        ids = [f"k{i}" for i in range(200)]
        vectors = np.random.default_rng(0).random((200, 4), dtype=np.float32)
        upsert(search, "kept", ids, vectors)
        cluster.start_extra_shard("shard-2")
        cluster.restart_coordinators(["--cache", "off"])  # its --shards now lists shard-2 too
        assert "shard-2=" in cluster.coordinator.args[cluster.coordinator.args.index("--shards") + 1]
        search, admin = stubs(cluster.address)
        assert [s.name for s in admin.GetTopology(admin_pb2.GetTopologyRequest()).shards] == ["shard-0", "shard-1"]
        got = search.Get(search_pb2.GetRequest(collection="kept", ids=ids))
        assert [item.id for item in got.items] == ids
