"""Write versions on a real collection: replicas that get the same writes in any order, twice, or from a peer's
export end in the same state; and the coordinator's replica list parsing."""

import time

import numpy as np
import pytest

from shardsearch.coordinator.config import CoordinatorConfig
from shardsearch.shard_server.index import Collection
from shardsearch.v1 import search_pb2

DIM = 8


def make() -> Collection:
    return Collection(search_pb2.Collection(name="t", dim=DIM, metric=search_pb2.METRIC_L2))


NOW = time.time_ns()  # versions are the coordinators' clocks; delete markers older than a week are purged


def v(*versions: int) -> np.ndarray:
    return np.array([NOW + x for x in versions], dtype=np.uint64)


def content(coll: Collection, ids: list[str]) -> dict[str, tuple[bytes, bytes]]:
    found, vectors, payloads = coll.get(ids)
    return {i: (vec.tobytes(), p) for i, vec, p in zip(found, vectors, payloads)}


def test_an_older_write_never_replaces_a_newer_one() -> None:
    coll, new, old = make(), np.ones((1, DIM), np.float32), np.zeros((1, DIM), np.float32)
    coll.upsert(["a"], new, [b"new"], v(20))
    coll.upsert(["a"], old, [b"old"], v(10))  # arrives late
    assert content(coll, ["a"]) == {"a": (new.tobytes(), b"new")}
    assert coll.delete(["a"], v(15)) == 0  # a delete older than the item does nothing
    assert coll.live == 1


def test_a_delete_marker_keeps_older_upserts_out_and_newer_ones_in() -> None:
    coll, vec = make(), np.ones((1, DIM), np.float32)
    coll.upsert(["a"], vec, None, v(10))
    assert coll.delete(["a"], v(20)) == 1
    coll.upsert(["a"], vec, None, v(15))  # the upsert the delete overtook
    assert coll.get(["a"])[0] == [] and coll.live == 0
    coll.upsert(["a"], vec * 2, None, v(30))
    assert content(coll, ["a"]) == {"a": ((vec * 2).tobytes(), b"")}
    assert coll.delete_markers() == []  # re-created: the marker is gone


def test_replicas_converge_whatever_the_order_and_repeats() -> None:
    rng = np.random.default_rng(1)
    ops = []
    for version in range(1, 400):
        item = f"id{rng.integers(40)}"
        if rng.random() < 0.3:
            ops.append(("delete", item, None, version))
        else:
            ops.append(("upsert", item, rng.standard_normal((1, DIM)).astype(np.float32), version))
    replicas = [make() for _ in range(3)]
    orders = [ops, ops[::-1], [ops[i] for i in rng.permutation(len(ops))] * 2]  # the last one sees each op twice
    for coll, order in zip(replicas, orders):
        for kind, item, vec, version in order:
            if kind == "upsert":
                coll.upsert([item], vec, [str(version).encode()], v(version))
            else:
                coll.delete([item], v(version))
    ids = [f"id{i}" for i in range(40)]
    states = [content(coll, ids) for coll in replicas]
    assert states[0] == states[1] == states[2] and states[0]


def test_a_peer_export_brings_a_stale_replica_up_to_date() -> None:
    rng = np.random.default_rng(2)
    peer, stale = make(), make()
    base = rng.standard_normal((100, DIM)).astype(np.float32)
    ids = [f"id{i}" for i in range(100)]
    for coll in (peer, stale):
        coll.upsert(ids, base, None, v(*[5] * 100))
    # Writes only the peer saw: overwrites, deletes and new items.
    peer.upsert(ids[:10], base[:10] + 1, None, v(*[7] * 10))
    peer.delete(ids[10:20], v(*[8] * 10))
    peer.upsert(["n1", "n2"], base[:2] * 3, [b"x", b""], v(9, 9))
    # And one the stale replica saw after (newer than anything the peer has for that id).
    stale.upsert(["id50"], base[:1] * 0, None, v(12))
    after = -1
    while True:  # small chunks: the export is resumable by label
        chunk_ids, vectors, payloads, versions, after, _ = peer.export_chunk(after, 7)
        stale.upsert(chunk_ids, vectors, payloads, versions)
        if after < 0:
            break
    markers = peer.delete_markers()
    stale.delete([i for i, _ in markers], np.array([m for _, m in markers], dtype=np.uint64))
    every = ids + ["n1", "n2"]
    expected = content(peer, every)
    expected["id50"] = ((base[0] * 0).tobytes(), b"")
    assert content(stale, every) == expected


def test_versions_and_markers_survive_a_snapshot() -> None:
    coll, vec = make(), np.ones((2, DIM), np.float32)
    coll.upsert(["a", "b"], vec, None, v(10, 11))
    coll.delete(["b"], v(12))
    restored = make()
    restored.import_state(coll.export_state())
    restored.upsert(["a", "b"], vec * 0, None, v(9, 11))  # both older than what the snapshot holds
    assert content(restored, ["a", "b"]) == {"a": (vec[0].tobytes(), b"")}


def test_replica_lists_and_patterns() -> None:
    config = CoordinatorConfig(shards=("shard-0=h1:1|h2:1", "h3:1"))
    assert config.shard_addresses() == [("shard-0", ["h1:1", "h2:1"]), ("shard-1", ["h3:1"])]
    pattern = CoordinatorConfig(shard_pattern="shard-{n}.shard:50061", shard_count=2, replicas=2)
    assert pattern.shard_addresses() == [
        ("shard-0", ["shard-0.shard:50061", "shard-1.shard:50061"]),
        ("shard-1", ["shard-2.shard:50061", "shard-3.shard:50061"]),
    ]
    with pytest.raises(ValueError, match="needs {r} or {n}"):
        CoordinatorConfig(shard_pattern="shard-{i}:1", shard_count=2, replicas=2).shard_addresses()
    with pytest.raises(ValueError, match="duplicate"):
        CoordinatorConfig(shards=("a=h:1", "a=h:2")).shard_addresses()
