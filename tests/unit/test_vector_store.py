"""The compact per-item bookkeeping (shard_server.ids) and the vector stores (shard_server.vectors): lookups through
overwrites, deletes and hash collisions; each store's recall, the precision Get gives back, snapshots, checksums."""

from __future__ import annotations

import numpy as np
import pytest

from shardsearch import index_params
from shardsearch.ring import key_hashes
from shardsearch.shard_server import ids as id_table
from shardsearch.shard_server.index import Collection
from shardsearch.tools.datasets import embedding_like
from shardsearch.v1 import search_pb2

STORES = {"float32": search_pb2.VECTOR_STORE_FLOAT32, "float16": search_pb2.VECTOR_STORE_FLOAT16,
          "sq8": search_pb2.VECTOR_STORE_SQ8}
N, DIM = 6_000, 64


def collection(store: str, threshold: int = 2_000) -> Collection:
    return Collection(search_pb2.Collection(
        name="c", dim=DIM, metric=search_pb2.METRIC_INNER_PRODUCT,
        index=search_pb2.IndexOptions(train_threshold=threshold, nlist=32, vector_store=STORES[store])))


def loaded(store: str, data: np.ndarray) -> Collection:
    coll = collection(store)
    ids = [f"item-{i}" for i in range(len(data))]
    for lo in range(0, len(data), 1000):
        coll.upsert(ids[lo : lo + 1000], data[lo : lo + 1000],
                    versions=np.arange(lo + 1, lo + 1 + len(data[lo : lo + 1000]), dtype=np.uint64))
    coll.train()
    coll.absorb()
    return coll


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return embedding_like(N + 100, DIM, seed=3, clusters=50)


def test_the_id_table_finds_live_labels_through_overwrites_deletes_and_rebuilds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(id_table, "RECENT_MAX", 10)
    table = id_table.IdTable(4)
    alive = np.zeros(200, dtype=bool)
    hashes = np.zeros(200, dtype=np.uint64)
    names = [f"id-{i}" for i in range(50)]
    hashes[:50] = key_hashes(names)
    table.append(names)
    alive[:50] = True
    table.settle(hashes, alive)  # past RECENT_MAX: into the sorted array
    assert table.find(names, hashes[:50], alive).tolist() == list(range(50))
    # id-3 overwritten (new label 50), id-4 deleted
    alive[[3, 4]] = False
    table.append(["id-3"])
    hashes[50] = hashes[3]
    alive[50] = True
    got = table.find(["id-3", "id-4", "id-5", "nope"], key_hashes(["id-3", "id-4", "id-5", "nope"]), alive)
    assert got.tolist() == [50, -1, 5, -1]
    table.rebuild(hashes, alive)
    assert table.find(["id-3", "id-4"], key_hashes(["id-3", "id-4"]), alive).tolist() == [50, -1]
    assert table.ids_of([0, 50, 49]) == ["id-0", "id-3", "id-49"] and table.id_of(4) == "id-4"


def test_ids_sharing_a_64_bit_hash_are_told_apart_by_their_strings() -> None:
    table = id_table.IdTable()
    names = ["a", "b", "c"]
    hashes = np.array([7, 7, 7], dtype=np.uint64)  # as if all three collided
    alive = np.ones(3, dtype=bool)
    table.append(names)
    table.rebuild(hashes, alive)
    assert table.find(["c", "a", "b", "d"], np.array([7, 7, 7, 7], dtype=np.uint64), alive).tolist() == [2, 0, 1, -1]


def test_bookkeeping_costs_under_100_bytes_an_item_beyond_the_vector_and_its_code() -> None:
    n = 100_000
    coll = collection("float32", threshold=10**9)
    vectors = np.zeros((10_000, DIM), np.float32)
    for lo in range(0, n, 10_000):
        coll.upsert([f"img-{i:09d}" for i in range(lo, lo + 10_000)], vectors)
    parts = coll.memory()
    assert parts["vectors"] == n * DIM * 4
    per_item = (parts["ids"] + parts["columns"]) / n
    assert per_item < 100 - 8, parts  # 8: the IVF's id per code, once trained


@pytest.mark.parametrize("store", list(STORES))
def test_each_store_keeps_recall_and_gives_back_vectors_within_its_stated_precision(store: str, data: np.ndarray) -> None:
    base, queries = data[:N], data[N:]
    coll = loaded(store, base)
    rows = coll._vecs
    assert rows.row_bytes == {"float32": DIM * 4, "float16": DIM * 2, "sq8": DIM}[store]
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    found = coll.search(queries, 10, nprobe=8)
    hits = [set(int(i[5:]) for i in coll.ids_for(row, found.view)) for row in found.labels]
    recall = np.mean([len(h & set(t.tolist())) / 10 for h, t in zip(hits, truth)])
    assert recall >= 0.95, recall

    ids, got, _ = coll.get(["item-0", "item-17", "missing", "item-5999"])
    assert ids == ["item-0", "item-17", "item-5999"]
    wrote = base[[0, 17, 5999]]
    if store == "float32":
        assert np.array_equal(got, wrote)
    elif store == "float16":
        assert np.all(np.abs(got - wrote) <= np.abs(wrote) * 2.0**-11 + 1e-7)
    else:
        span = base.max(axis=0) - base.min(axis=0)
        assert np.all(np.abs(got - wrote) <= span * 1.02 / 510 + 1e-6)


@pytest.mark.parametrize("store", list(STORES))
def test_a_snapshot_restores_the_encoded_store_and_the_same_answers(store: str, data: np.ndarray) -> None:
    base, queries = data[:N], data[N:]
    coll = loaded(store, base)
    coll.upsert(["item-1"], base[2:3], versions=np.array([10**6], np.uint64))  # an overwrite in the buffer
    coll.delete(["item-9"], np.array([10**6], np.uint64))
    state = coll.export_state()
    if store != "float32":
        assert "vectors" not in state and state["vector_rows"].dtype == coll._vecs.data.dtype
    restored = collection(store)
    restored.import_state(state)
    assert restored._vecs.data.dtype == coll._vecs.data.dtype
    assert restored._vecs.row_bytes == coll._vecs.row_bytes
    before, after = coll.search(queries, 10, nprobe=8), restored.search(queries, 10, nprobe=8)
    assert [coll.ids_for(r, before.view) for r in before.labels] == [
        restored.ids_for(r, after.view) for r in after.labels]
    np.testing.assert_array_equal(coll.get(["item-1"])[1], restored.get(["item-1"])[1])
    assert restored.get(["item-9"])[0] == [] and restored.live == N - 1


def legacy(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`state` as snapshots were written before vector stores and the id table: float32 vectors and ids of the
    live labels only."""
    labels = state["labels"]
    ends = state["id_ends"]
    starts = np.concatenate([[0], ends[:-1]])
    blob = state["id_blob"].tobytes()
    ids = [blob[starts[label] : ends[label]] for label in labels.tolist()]
    old = {k: v for k, v in state.items() if k not in ("vector_rows", "vector_range", "id_blob", "id_ends", "hashes")}
    old["vectors"] = state["vector_rows"][labels].astype(np.float32)
    old["ids_blob"] = np.frombuffer(b"".join(ids), dtype=np.uint8)
    old["ids_ends"] = np.cumsum([len(i) for i in ids], dtype=np.int64)
    return old


def test_an_old_float32_snapshot_loads_into_any_store(data: np.ndarray) -> None:
    base, queries = data[:N], data[N:]
    old = loaded("float32", base)
    old.delete(["item-9"], np.array([10**6], np.uint64))
    state = legacy(old.export_state())
    for store in STORES:
        restored = collection(store)
        restored.import_state(state)
        assert restored.live == N - 1 and restored.get(["item-9"])[0] == []
        got = restored.get(["item-3"])[1]
        assert np.allclose(got, base[3:4], atol=1e-2)
        if store == "float32":
            np.testing.assert_array_equal(got, base[3:4])
            found = restored.search(queries, 10, nprobe=8)
            before = old.search(queries, 10, nprobe=8)
            assert [restored.ids_for(r, found.view) for r in found.labels] == [
                old.ids_for(r, before.view) for r in before.labels]


def test_sq8_replicas_that_fitted_different_ranges_agree_on_checksums(data: np.ndarray) -> None:
    base = data[:N]
    a = loaded("sq8", base)
    b = collection("sq8")
    order = np.random.default_rng(1).permutation(N)
    ids = [f"item-{i}" for i in order]
    b.upsert(ids[:2500], base[order[:2500]], versions=(order[:2500] + 1).astype(np.uint64))
    b.train()  # fitted on another subset
    b.upsert(ids[2500:], base[order[2500:]], versions=(order[2500:] + 1).astype(np.uint64))
    assert not np.array_equal(a._vecs.quantizer_state(), b._vecs.quantizer_state())

    def everything(hashes: np.ndarray) -> np.ndarray:
        return np.ones(len(hashes), dtype=bool)

    for x, y in zip(a.checksum(everything), b.checksum(everything)):
        np.testing.assert_array_equal(x, y)


def test_an_unknown_vector_store_is_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="index.vector_store"):
        index_params.check_options(DIM, search_pb2.IndexOptions(vector_store=9))  # type: ignore[arg-type]


def test_the_memory_gauge_follows_payloads_and_fields_through_overwrites_deletes_and_relabels() -> None:
    coll = collection("float32", threshold=10**9)
    vectors = np.zeros((3, DIM), np.float32)
    fields = [search_pb2.Fields(values={"kind": search_pb2.Value(keyword="k")})] * 3
    coll.upsert(["a", "b", "c"], vectors, payloads=[b"x" * 10, b"y" * 20, b""], fields=fields)
    blob = len(fields[0].SerializeToString())
    assert coll.memory()["payloads"] == 30 + 200 and coll.memory()["fields"] == 3 * (blob + 100)
    coll.upsert(["a"], vectors[:1], payloads=[b"z"])  # overwrite: the old payload goes
    coll.delete(["b"])
    assert coll.memory()["payloads"] == 1 + 100 and coll.memory()["fields"] == blob + 100
    coll.relabel()
    assert coll.memory()["payloads"] == 1 + 100 and coll.memory()["fields"] == blob + 100
    restored = collection("float32", threshold=10**9)
    restored.import_state(coll.export_state())
    assert restored.memory()["payloads"] == 1 + 100 and restored.memory()["fields"] == blob + 100


def test_an_sq8_range_keeps_room_in_a_dimension_that_was_constant_when_fitted() -> None:
    coll = collection("sq8", threshold=300)
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((400, DIM)).astype(np.float32)
    vectors[:, 0] = 0.0  # constant (padding) while the range is fitted
    coll.upsert([f"i{i}" for i in range(400)], vectors)
    coll.train()
    later = rng.standard_normal((1, DIM)).astype(np.float32)
    later[0, 0] = 0.001
    coll.upsert(["later"], later)
    got = coll.get(["later"])[1][0]
    assert np.isfinite(got).all() and got[0] > 0
