"""The resharding logic without processes: the ring layout and its phases (shardsearch.topology), the ranges a move
copies, the checksums that verify a copy, the de-duplicating merge, and a shard's Collection keeping only its ids."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from shardsearch import topology
from shardsearch.coordinator.merge import ShardHits, merge
from shardsearch.errors import InvalidArgument
from shardsearch.shard_server.index import Collection, id_hashes
from shardsearch.topology import Layout, Selector, move_range
from shardsearch.v1 import admin_pb2, search_pb2, shard_pb2

FOUR = [f"shard-{i}" for i in range(4)]
FIVE = [*FOUR, "shard-4"]
COPYING, SWITCHED = admin_pb2.Move.PHASE_COPYING, admin_pb2.Move.PHASE_SWITCHED


def specs(names: list[str]) -> list[admin_pb2.ShardSpec]:
    return [admin_pb2.ShardSpec(name=n, addresses=[f"{n}.example:50061", f"{n}-b.example:50061"]) for n in names]


def moving(to: list[str], frm: list[str], phase: int, shard: str, version: int = 7) -> Layout:
    kind = admin_pb2.Move.KIND_ADD if len(to) > len(frm) else admin_pb2.Move.KIND_REMOVE
    return Layout.of(admin_pb2.Topology(
        version=version, shards=specs(to), vnodes=1024,
        move=admin_pb2.Move(kind=kind, shard=shard, phase=phase, from_shards=specs(frm)),
    ))


def adding(phase: int = COPYING) -> Layout:
    return moving(FIVE, FOUR, phase, "shard-4")


def removing(phase: int = COPYING) -> Layout:
    return moving([n for n in FOUR if n != "shard-1"], FOUR, phase, "shard-1")


@pytest.fixture(scope="module")
def ids() -> list[str]:
    rng = np.random.default_rng(11)
    return [f"doc-{x:x}" for x in rng.integers(0, 2**62, 20_000)]


@pytest.fixture(scope="module")
def hashes(ids: list[str]) -> np.ndarray:
    return id_hashes(ids)


def owner_names(ring: object, hashes: np.ndarray) -> np.ndarray:
    return np.array(ring.shards)[ring.owners_of_hashes(hashes)]  # type: ignore[attr-defined]


# ---- Layout ------------------------------------------------------------------------------------------------------


def test_bootstrap_is_version_0_and_not_moving() -> None:
    layout = Layout.of(topology.bootstrap([("a", ["h:1"]), ("b", ["h:2", "h:3"])], vnodes=64))
    assert layout.version == 0
    assert not layout.moving and not layout.copying and layout.previous is None
    assert layout.ring.shards == ("a", "b") and layout.ring.vnodes == 64
    assert layout.members() == [("a", ["h:1"]), ("b", ["h:2", "h:3"])]
    assert layout.read_ring() is layout.ring
    assert layout.write_rings() == [layout.ring]


def test_unset_vnodes_means_the_default() -> None:
    layout = Layout.of(admin_pb2.Topology(version=3, shards=specs(FOUR)))
    assert layout.ring.vnodes == topology.DEFAULT_VNODES


def test_a_move_with_no_old_ring_is_not_a_move() -> None:
    layout = Layout.of(admin_pb2.Topology(version=3, shards=specs(FOUR), move=admin_pb2.Move(phase=COPYING)))
    assert not layout.moving and not layout.copying


def test_members_during_an_add_are_the_new_ring_in_order() -> None:
    layout = adding()
    assert layout.moving and layout.copying
    assert [name for name, _ in layout.members()] == FIVE
    assert layout.members()[4] == ("shard-4", ["shard-4.example:50061", "shard-4-b.example:50061"])
    assert layout.search_names() == FIVE


def test_members_during_a_remove_put_the_leaving_shard_last() -> None:
    layout = removing()
    assert [name for name, _ in layout.members()] == ["shard-0", "shard-2", "shard-3", "shard-1"]
    assert dict(layout.members())["shard-1"] == ["shard-1.example:50061", "shard-1-b.example:50061"]


def test_the_new_rings_addresses_win_for_a_shard_on_both() -> None:
    layout = Layout.of(admin_pb2.Topology(
        version=2, shards=[admin_pb2.ShardSpec(name="a", addresses=["new:1"]), *specs(["b"])],
        move=admin_pb2.Move(kind=admin_pb2.Move.KIND_ADD, shard="b", phase=COPYING,
                            from_shards=[admin_pb2.ShardSpec(name="a", addresses=["old:1"])]),
    ))
    assert layout.members() == [("a", ["new:1"]), ("b", ["b.example:50061", "b-b.example:50061"])]


@pytest.mark.parametrize("layout_of", [adding, removing])
def test_reads_go_to_the_old_ring_while_copying_and_to_the_new_one_after(
    layout_of: Callable[[int], Layout],
) -> None:
    copying, switched = layout_of(COPYING), layout_of(SWITCHED)
    assert copying.read_ring() is copying.previous and copying.read_ring().shards == tuple(FOUR)
    assert switched.read_ring() is switched.ring
    assert switched.moving and not switched.copying
    for layout in (copying, switched):
        assert layout.write_rings() == [layout.ring, layout.previous]


def test_owned_while_copying_is_old_or_new_ownership(hashes: np.ndarray) -> None:
    layout = adding(COPYING)
    old, new = owner_names(layout.previous, hashes), owner_names(layout.ring, hashes)
    for shard in FOUR:
        assert np.array_equal(layout.owned(shard, hashes), (old == shard) | (new == shard))
    assert np.array_equal(layout.owned("shard-4", hashes), new == "shard-4")
    # Every id is kept somewhere, and the ids that move are kept twice.
    total = sum(layout.owned(s, hashes).astype(int) for s in FIVE)
    assert np.array_equal(total, 1 + (old != new))


def test_owned_after_the_switch_is_new_ownership_only(hashes: np.ndarray) -> None:
    for layout in (adding(SWITCHED), removing(SWITCHED)):
        new = owner_names(layout.ring, hashes)
        for shard, _ in layout.members():
            assert np.array_equal(layout.owned(shard, hashes), new == shard)
    assert not removing(SWITCHED).owned("shard-1", hashes).any()
    assert removing(COPYING).owned("shard-1", hashes).any()


def test_owned_without_a_move_is_the_ring(hashes: np.ndarray) -> None:
    layout = Layout.of(admin_pb2.Topology(version=4, shards=specs(FIVE)))
    owners = owner_names(layout.ring, hashes)
    masks = [layout.owned(s, hashes) for s in FIVE]
    for shard, mask in zip(FIVE, masks):
        assert np.array_equal(mask, owners == shard)
    assert np.array_equal(np.sum(masks, axis=0), np.ones(len(hashes)))


@pytest.mark.parametrize("layout_of", [adding, removing])
@pytest.mark.parametrize("phase", [COPYING, SWITCHED])
def test_a_shard_on_neither_ring_owns_nothing(
    layout_of: Callable[[int], Layout], phase: int, hashes: np.ndarray
) -> None:
    assert not layout_of(phase).owned("shard-9", hashes).any()
    assert not Layout.of(admin_pb2.Topology(version=1, shards=specs(FOUR))).owned("shard-9", hashes).any()


# ---- move ranges -------------------------------------------------------------------------------------------------


def test_move_range_names_both_rings() -> None:
    layout = adding()
    select = move_range(layout, "shard-2", "shard-4", buckets=[1, 5])
    assert list(select.ring) == FIVE and list(select.from_ring) == FOUR
    assert list(select.owners) == ["shard-4"] and list(select.from_owners) == ["shard-2"]
    assert list(select.buckets) == [1, 5] and select.vnodes == 1024


def test_adding_a_shard_moves_exactly_the_ids_whose_owner_changed(hashes: np.ndarray) -> None:
    layout = adding()
    old, new = owner_names(layout.previous, hashes), owner_names(layout.ring, hashes)
    masks = {s: Selector(move_range(layout, s, "shard-4")).mask(hashes) for s in FOUR}
    assert np.array_equal(np.sum(list(masks.values()), axis=0), old != new)  # disjoint, and their union is exact
    for source, mask in masks.items():
        assert np.all(old[mask] == source) and np.all(new[mask] == "shard-4")
        assert mask.any()
    assert 0.17 <= np.mean(old != new) <= 0.23, np.mean(old != new)  # about 1/5 of the ids


def test_removing_a_shard_splits_its_ids_among_the_others(hashes: np.ndarray) -> None:
    layout = removing()
    old, new = owner_names(layout.previous, hashes), owner_names(layout.ring, hashes)
    targets = list(layout.ring.shards)
    masks = {t: Selector(move_range(layout, "shard-1", t)).mask(hashes) for t in targets}
    assert np.array_equal(np.sum(list(masks.values()), axis=0), old == "shard-1")
    assert np.array_equal(old != new, old == "shard-1")
    for target, mask in masks.items():
        assert np.all(new[mask] == target) and mask.any()


def test_buckets_restrict_a_range(hashes: np.ndarray) -> None:
    layout = adding()
    whole = Selector(move_range(layout, "shard-0", "shard-4")).mask(hashes)
    buckets = topology.bucket_of(hashes)
    assert buckets.min() >= 0 and buckets.max() < topology.BUCKETS
    part = Selector(move_range(layout, "shard-0", "shard-4", buckets=[3, 17, 63])).mask(hashes)
    assert np.array_equal(part, whole & np.isin(buckets, [3, 17, 63]))
    assert part.any() and part.sum() < whole.sum()
    # Out-of-range buckets pick nothing.
    assert not Selector(move_range(layout, "shard-0", "shard-4", buckets=[64, 1000])).mask(hashes).any()


def test_a_selection_without_an_old_ring_is_the_owners_on_the_ring(hashes: np.ndarray) -> None:
    select = shard_pb2.RingSelection(ring=FIVE, owners=["shard-1", "shard-3"])
    owners = owner_names(Layout.of(admin_pb2.Topology(version=1, shards=specs(FIVE))).ring, hashes)
    assert np.array_equal(Selector(select).mask(hashes), np.isin(owners, ["shard-1", "shard-3"]))


def test_a_selection_needs_a_ring() -> None:
    with pytest.raises(InvalidArgument, match="select.ring"):
        Selector(shard_pb2.RingSelection(owners=["a"]))


# ---- item hashes and checksums -----------------------------------------------------------------------------------


@pytest.fixture
def items() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    n = 2_000
    ids = id_hashes([f"i{k}" for k in range(n)])
    versions = rng.integers(1, 2**62, n).astype(np.uint64)
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    return ids, versions, vectors


def test_item_hashes_are_equal_for_equal_items(items: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    ids, versions, vectors = items
    first = topology.item_hashes(ids, versions, vectors)
    again = topology.item_hashes(ids.copy(), versions.copy(), vectors.copy())
    assert first.dtype == np.uint64 and np.array_equal(first, again)
    assert len(np.unique(first)) == len(first)


def test_item_hashes_change_with_id_version_or_any_vector_bit(items: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    ids, versions, vectors = items
    base = topology.item_hashes(ids, versions, vectors)
    other_ids = ids.copy()
    other_ids[7] ^= np.uint64(1)
    later = versions.copy()
    later[7] += np.uint64(1)
    nudged = vectors.copy()
    nudged[7, 11] = np.nextafter(nudged[7, 11], np.float32(np.inf))  # one ulp
    swapped = vectors.copy()
    swapped[7, [2, 3]] = swapped[7, [3, 2]]  # same values, other positions
    for changed in (
        topology.item_hashes(other_ids, versions, vectors),
        topology.item_hashes(ids, later, vectors),
        topology.item_hashes(ids, versions, nudged),
        topology.item_hashes(ids, versions, swapped),
    ):
        assert changed[7] != base[7]
        assert np.array_equal(np.delete(changed, 7), np.delete(base, 7))


def test_checksums_count_and_sum_per_bucket_in_any_order(items: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    ids, versions, vectors = items
    item = topology.item_hashes(ids, versions, vectors)
    counts, sums = topology.checksums(ids, item)
    assert counts.shape == sums.shape == (topology.BUCKETS,)
    buckets = topology.bucket_of(ids)
    assert counts.tolist() == np.bincount(buckets, minlength=topology.BUCKETS).tolist()
    assert int(counts.sum()) == len(ids)
    expected = [sum(int(h) for h in item[buckets == b]) % 2**64 for b in range(topology.BUCKETS)]
    assert sums.tolist() == expected
    order = np.random.default_rng(1).permutation(len(ids))
    shuffled = topology.checksums(ids[order], item[order])
    assert np.array_equal(shuffled[0], counts) and np.array_equal(shuffled[1], sums)


def test_checksums_of_nothing_are_zero() -> None:
    counts, sums = topology.checksums(np.zeros(0, np.uint64), np.zeros(0, np.uint64))
    assert not counts.any() and not sums.any()


# ---- merge with de-duplication -----------------------------------------------------------------------------------


def part(ids: list[list[str]], scores: list[list[float]], payloads: list[list[bytes]] | None = None,
         fields: list[list[str | None]] | None = None) -> ShardHits:
    return ShardHits(
        np.array(ids, dtype=object), np.array(scores, dtype=np.float32),
        np.array(payloads, dtype=object) if payloads is not None else None,
        np.array([[tag_fields(f) for f in row] for row in fields], dtype=object) if fields is not None else None,
    )


def tag_fields(tag: str | None) -> search_pb2.Fields | None:
    return None if tag is None else search_pb2.Fields(values={"tag": search_pb2.Value(keyword=tag)})


def test_dedupe_keeps_each_id_once_at_its_best_distance() -> None:
    old = part([["x", "y", "w"], ["p", "q", ""]], [[0.5, 0.3, 0.9], [1.0, 2.0, 0.0]],
               [[b"x-old", b"y", b"w"], [b"p-old", b"q", b""]], [["xo", "y", "w"], ["po", "q", None]])
    new = part([["x", "z", "y"], ["p", "", ""]], [[0.1, 0.4, 0.35], [1.5, 0.0, 0.0]],
               [[b"x-new", b"z", b"y-new"], [b"p-new", b"", b""]], [["xn", "z", "yn"], ["pn", None, None]])
    merged = merge([old, new], 4, higher_is_better=False, dedupe=True)
    assert merged.ids.tolist() == [["x", "y", "z", "w"], ["p", "q", "", ""]]
    assert np.allclose(merged.scores[0], [0.1, 0.3, 0.4, 0.9])
    assert np.allclose(merged.scores[1, :2], [1.0, 2.0])
    assert merged.payloads is not None and merged.fields is not None
    assert merged.payloads.tolist() == [[b"x-new", b"y", b"z", b"w"], [b"p-old", b"q", b"", b""]]
    assert [[f.values["tag"].keyword if f else None for f in row] for row in merged.fields] == [
        ["xn", "y", "z", "w"], ["po", "q", None, None]]


def test_dedupe_with_inner_product_keeps_the_highest_score() -> None:
    a = part([["x", "y"]], [[0.2, 0.1]])
    b = part([["x", "z"]], [[0.9, 0.05]])
    merged = merge([a, b], 3, higher_is_better=True, dedupe=True)
    assert merged.ids.tolist() == [["x", "y", "z"]]
    assert np.allclose(merged.scores, [[0.9, 0.1, 0.05]])
    assert merged.payloads is None and merged.fields is None


def test_dedupe_pads_rows_with_fewer_distinct_ids_at_the_end() -> None:
    same = part([["a", "b"], ["", ""]], [[0.1, 0.2], [0.0, 0.0]], [[b"pa", b"pb"], [b"", b""]])
    merged = merge([same, same, same], 3, higher_is_better=False, dedupe=True)
    assert merged.ids.tolist() == [["a", "b", ""], ["", "", ""]]
    assert merged.payloads is not None and merged.payloads.tolist() == [[b"pa", b"pb", b""], [b"", b"", b""]]


def test_dedupe_fields_from_a_shard_that_sent_none_are_none() -> None:
    a = part([["x"]], [[0.1]], fields=[["fx"]])
    b = part([["y"]], [[0.05]])
    merged = merge([a, b], 3, higher_is_better=False, dedupe=True)
    assert merged.ids.tolist() == [["y", "x", ""]]
    assert merged.fields is not None and merged.fields[0, 0] is None and merged.fields[0, 2] is None
    assert merged.fields[0, 1].values["tag"].keyword == "fx"


def test_without_dedupe_duplicates_stay() -> None:
    a = part([["x", "y"]], [[0.1, 0.3]], [[b"xa", b"ya"]])
    b = part([["x", "z"]], [[0.2, 0.25]], [[b"xb", b"zb"]])
    merged = merge([a, b], 3, higher_is_better=False)
    assert merged.ids.tolist() == [["x", "x", "z"]]
    assert merged.payloads is not None and merged.payloads.tolist() == [[b"xa", b"xb", b"zb"]]
    assert merged.ids.shape == (1, 3)
    distinct = merge([a, b], 3, higher_is_better=False, dedupe=True)
    assert distinct.ids.tolist() == [["x", "z", "y"]]


# ---- a shard's Collection keeping only its ids -------------------------------------------------------------------


def collection() -> Collection:
    return Collection(search_pb2.Collection(
        name="c", dim=8, metric=search_pb2.METRIC_L2, index=search_pb2.IndexOptions(train_threshold=1_000_000)
    ))


def even(hashes: np.ndarray) -> np.ndarray:
    return (hashes & np.uint64(1)) == 0


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


def split(ids: list[str]) -> tuple[list[str], list[str]]:
    mask = even(id_hashes(ids))
    return [i for i, m in zip(ids, mask) if m], [i for i, m in zip(ids, mask) if not m]


def test_writes_of_ids_a_shard_does_not_own_are_dropped() -> None:
    coll = collection()
    assert coll.set_keep(even) == 0
    ids = [f"k{i}" for i in range(200)]
    mine, foreign = split(ids)
    assert mine and foreign
    assert coll.upsert(ids, vectors(200), versions=np.arange(1, 201, dtype=np.uint64)) == 200  # counts every id
    assert coll.live == len(mine)
    assert coll.get(ids)[0] == mine
    coll.delete(ids[:50], versions=np.full(50, 1_000, dtype=np.uint64))
    assert {i for i, _ in coll.delete_markers()} == set(ids[:50]) & set(mine)
    assert coll.delete(foreign, versions=np.full(len(foreign), 2_000, dtype=np.uint64)) == 0
    assert set(foreign).isdisjoint(i for i, _ in coll.delete_markers())


def test_set_keep_purges_foreign_items_and_markers() -> None:
    coll = collection()
    ids = [f"k{i}" for i in range(300)]
    mine, foreign = split(ids)
    coll.upsert(ids, vectors(300), versions=np.full(300, 5, dtype=np.uint64))
    gone = ids[:40]
    coll.delete(gone, versions=np.full(40, 9, dtype=np.uint64))
    live_foreign = [i for i in foreign if i not in gone]
    assert coll.set_keep(even) == len(live_foreign)
    assert coll.live == len([i for i in mine if i not in gone])
    assert coll.get(ids)[0] == [i for i in mine if i not in gone]
    assert {i for i, _ in coll.delete_markers()} == set(gone) & set(mine)
    assert coll.set_keep(even) == 0  # nothing left to purge
    assert coll.set_keep(None) == 0 and coll.keep is None
    # With no marker left, an older write of a purged id is taken again once the shard owns it.
    coll.upsert(foreign[:1], vectors(1), versions=np.array([1], dtype=np.uint64))
    assert coll.get(foreign[:1])[0] == foreign[:1]


def test_export_and_markers_with_a_selection() -> None:
    coll = collection()
    ids = [f"e{i}" for i in range(500)]
    x = vectors(500, seed=2)
    coll.upsert(ids, x, payloads=[f"p{i}".encode() for i in range(500)],
                versions=np.arange(10, 510, dtype=np.uint64))
    coll.delete(ids[-60:], versions=np.full(60, 10_000, dtype=np.uint64))
    mine, _ = split(ids[:-60])
    exported: list[str] = []
    after, chunks = -1, 0
    while True:
        got, vecs, payloads, versions, after, _ = coll.export_chunk(after, 37, even)
        chunks += 1
        assert len(got) <= 37
        for item_id, vec, payload, version in zip(got, vecs, payloads, versions.tolist()):
            k = int(item_id[1:])
            assert np.array_equal(vec, x[k]) and payload == f"p{k}".encode() and version == 10 + k
        exported.extend(got)
        if after < 0:
            break
    assert exported == mine and chunks >= len(mine) // 37
    markers = coll.delete_markers(even)
    assert sorted(markers) == sorted((i, 10_000) for i in split(ids[-60:])[0])
    assert len(coll.delete_markers()) == 60


def test_checksums_agree_for_the_same_writes_in_any_order() -> None:
    ids = [f"c{i}" for i in range(400)]
    x, y = vectors(400, seed=3), vectors(400, seed=4)
    writes: list[tuple[str, list[str], np.ndarray | None, np.ndarray]] = [
        ("upsert", ids, x, np.full(400, 10, dtype=np.uint64)),
        ("upsert", ids[:100], y[:100], np.full(100, 20, dtype=np.uint64)),  # overwrites
        ("delete", ids[50:150], None, np.full(100, 30, dtype=np.uint64)),  # half of them overwritten first
        ("upsert", ids[140:160], y[140:160], np.full(20, 25, dtype=np.uint64)),  # older than the deletes of 140..149
    ]

    def apply(coll: Collection, order: list[int], skip: int | None = None) -> Collection:
        for w in order:
            kind, w_ids, w_vecs, w_versions = writes[w]
            if kind == "upsert":
                assert w_vecs is not None
                keep = [i for i in range(len(w_ids)) if i != skip]
                coll.upsert([w_ids[i] for i in keep], w_vecs[keep], versions=w_versions[keep])
            else:
                coll.delete(w_ids, versions=w_versions)
        return coll

    everything = Selector(shard_pb2.RingSelection(ring=["only"], owners=["only"])).mask
    forward = apply(collection(), [0, 1, 2, 3]).checksum(everything)
    backward = apply(collection(), [3, 2, 1, 0]).checksum(everything)
    shuffled = apply(collection(), [2, 0, 3, 1, 1, 0]).checksum(everything)  # re-delivered writes too
    for other in (backward, shuffled):
        assert np.array_equal(forward[0], other[0]) and np.array_equal(forward[1], other[1])
    assert int(forward[0].sum()) == 300  # the deletes win over the older upserts of 140..149

    first_bucket = int(topology.bucket_of(id_hashes(ids[:1]))[0])
    missed_delete = apply(collection(), [0, 1, 3]).checksum(everything)  # more items
    assert int(missed_delete[0].sum()) == 400 and not np.array_equal(missed_delete[0], forward[0])
    missed_upsert = apply(collection(), [0, 1, 2]).checksum(everything)  # 150..159 keep older vectors
    assert np.array_equal(missed_upsert[0], forward[0])
    assert {b for b in range(topology.BUCKETS) if missed_upsert[1][b] != forward[1][b]} == set(
        topology.bucket_of(id_hashes(ids[150:160])).tolist())
    missed_overwrite = apply(apply(collection(), [0]), [1], skip=0)  # misses the overwrite of c0: same count
    counts, sums = apply(missed_overwrite, [2, 3]).checksum(everything)
    assert np.array_equal(counts, forward[0])
    assert [b for b in range(topology.BUCKETS) if sums[b] != forward[1][b]] == [first_bucket]


def test_list_ids_with_a_selection_lists_only_the_selected_ids_in_hash_order() -> None:
    coll = collection()
    ids = [f"id{i}" for i in range(300)]
    coll.upsert(ids, np.ones((300, 8), np.float32), versions=np.arange(1, 301, dtype=np.uint64))
    ring = topology.Layout.of(admin_pb2.Topology(shards=[admin_pb2.ShardSpec(name=n) for n in "abc"])).ring
    select = Selector(topology.selection(ring, ["b"])).mask
    listed, after, more = [], None, True
    while more:
        page, last, more = coll.list_ids(after, 40, select)
        listed.extend(page)
        after = last
    owners = ring.owner_indices(ids)
    assert sorted(listed) == sorted(i for i, o in zip(ids, owners) if ring.shards[o] == "b")
    hashes = id_hashes(listed).tolist()
    assert hashes == sorted(hashes) and len(set(listed)) == len(listed)


def test_a_search_during_a_move_is_told_the_smaller_rings_shard_count() -> None:
    """The shards' fitted re-ranking depth follows the count the coordinator sends (Router.spread): during a move
    it is the smaller ring's, where a shard may still hold 1 / that of the items (not the 5 or 4+3 searched)."""
    from types import SimpleNamespace

    from shardsearch.coordinator.router import Router

    still = Layout.of(admin_pb2.Topology(version=3, shards=specs(FOUR)))
    cases = [(still, 4), (adding(COPYING), 4), (adding(SWITCHED), 4), (removing(COPYING), 3)]
    for layout, spread in cases:
        assert Router.spread(SimpleNamespace(layout=layout)) == spread  # type: ignore[arg-type]
        assert len(layout.search_names()) >= spread
