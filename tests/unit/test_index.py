"""The shard's collection index on real FAISS: exactness of writes, training, and searching while training."""

import threading

import numpy as np
import pytest

from shardsearch.shard_server.index import Collection, id_hashes
from shardsearch.v1 import search_pb2
from tests.conftest import load_dataset, recall_at_10


def make(dim: int = 16, metric: int = search_pb2.METRIC_L2, threshold: int = 100_000, **opts: int) -> Collection:
    spec = search_pb2.Collection(
        name="t", dim=dim, metric=metric, index=search_pb2.IndexOptions(train_threshold=threshold, **opts)
    )
    return Collection(spec)


def top_ids(coll: Collection, queries: np.ndarray, k: int = 10) -> list[list[str]]:
    result = coll.search(queries, k)
    return [coll.ids_for(row) for row in result.labels]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(3)


def test_untrained_search_is_exact(rng: np.random.Generator) -> None:
    coll = make()
    x = rng.standard_normal((500, 16)).astype(np.float32)
    coll.upsert([str(i) for i in range(500)], x)
    q = rng.standard_normal((5, 16)).astype(np.float32)
    exact = np.argsort(((q[:, None, :] - x[None]) ** 2).sum(-1), axis=1)[:, :10]
    assert top_ids(coll, q) == [[str(i) for i in row] for row in exact]


def test_fewer_vectors_than_k_pads_with_no_hit(rng: np.random.Generator) -> None:
    coll = make()
    coll.upsert(["a", "b"], rng.standard_normal((2, 16)).astype(np.float32))
    assert sorted(top_ids(coll, np.zeros((1, 16), np.float32), 5)[0]) == ["", "", "", "a", "b"]


def test_overwrite_replaces_and_delete_removes_in_buffer_and_in_trained_index(rng: np.random.Generator) -> None:
    coll = make(threshold=1_000)
    x = rng.standard_normal((3_000, 16)).astype(np.float32)
    coll.upsert([str(i) for i in range(3_000)], x)
    coll.maintain()
    assert coll.info().trained
    fresh = rng.standard_normal((10, 16)).astype(np.float32)
    coll.upsert([f"new{i}" for i in range(10)], fresh)  # stays in the buffer
    for ids, vectors in ((["5", "new3"], np.stack([x[5], fresh[3]])),):
        assert [row[0] for row in top_ids(coll, vectors)] == ids
        moved = vectors + 50.0
        coll.upsert(ids, moved)
        assert [row[0] for row in top_ids(coll, moved)] == ids
        assert all(i not in row for i, row in zip(ids, top_ids(coll, vectors)))
        assert coll.delete(ids) == 2
        assert all(i not in row for i, row in zip(ids, top_ids(coll, moved, 50)))
    assert coll.delete(["5"]) == 0
    assert coll.live == 3_000 + 10 - 2


def test_inner_product_ranks_by_largest_score(rng: np.random.Generator) -> None:
    coll = make(metric=search_pb2.METRIC_INNER_PRODUCT)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    coll.upsert([str(i) for i in range(200)], x)
    result = coll.search(x[:3], 5)
    assert np.all(np.diff(result.scores, axis=1) <= 0)
    assert np.allclose(result.scores[:, 0], (x[:3] @ x.T).max(axis=1), rtol=1e-5)


def test_get_returns_exact_vectors_and_payloads(rng: np.random.Generator) -> None:
    coll = make()
    x = rng.standard_normal((3, 16)).astype(np.float32)
    coll.upsert(["a", "b", "c"], x, [b"pa", b"", b"pc"])
    ids, vectors, payloads = coll.get(["c", "zz", "a"])
    assert ids == ["c", "a"] and np.array_equal(vectors, x[[2, 0]]) and payloads == [b"pc", b"pa"]


def test_trained_ivfpq_reaches_recall_on_real_data() -> None:
    base, queries, gt = load_dataset("l2-10k-128")
    coll = make(dim=128, threshold=2_000)
    coll.upsert([str(i) for i in range(len(base))], base)
    coll.maintain()
    info = coll.info()
    assert info.trained and info.index_description.startswith("IVF")
    found = [[int(i) for i in row] for row in top_ids(coll, queries)]
    assert recall_at_10(found, gt) >= 0.95


def test_searches_keep_answering_while_training(rng: np.random.Generator) -> None:
    coll = make(threshold=20_000)
    x = rng.standard_normal((40_000, 16)).astype(np.float32)
    coll.upsert([str(i) for i in range(40_000)], x)
    trainer = threading.Thread(target=coll.maintain)
    trainer.start()
    answered = 0
    while trainer.is_alive() or answered == 0:
        assert top_ids(coll, x[answered % 100 : answered % 100 + 1], 1)[0][0] == str(answered % 100)
        answered += 1
    trainer.join()
    assert coll.info().trained
    assert top_ids(coll, x[:1], 1)[0][0] == "0"


def test_a_small_buffer_is_absorbed_once_writes_pause(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    from shardsearch.shard_server import index

    coll = make(threshold=1_000)
    coll.upsert([str(i) for i in range(2_000)], rng.standard_normal((2_000, 16)).astype(np.float32))
    coll.maintain()
    fresh = rng.standard_normal((10, 16)).astype(np.float32)
    coll.upsert([f"new{i}" for i in range(10)], fresh)
    assert coll.pending_work() is None and coll.info().buffered_vectors == 10  # writes may still be coming
    monkeypatch.setattr(index, "IDLE_ABSORB_S", 0.0)
    assert coll.pending_work() == "absorb"
    coll.maintain()
    info = coll.info()
    assert info.buffered_vectors == 0 and info.indexed_vectors == 2_010
    assert [row[0] for row in top_ids(coll, fresh)] == [f"new{i}" for i in range(10)]


def test_ids_are_listed_in_hash_order_in_pages_that_survive_a_snapshot(rng: np.random.Generator) -> None:
    coll = make()
    ids = [f"doc-{i}" for i in range(100)]
    coll.upsert(ids, rng.standard_normal((100, 16)).astype(np.float32))
    coll.upsert(["doc-5"], rng.standard_normal((1, 16)).astype(np.float32))  # an overwrite is listed once
    coll.delete(["doc-7", "doc-8"])

    def pages(collection: Collection, size: int) -> list[list[str]]:
        out, after = [], None
        while True:
            page, last, more = collection.list_ids(after, size)
            out.append(page)
            if not more:
                return out
            after = last

    listed = pages(coll, 7)
    flat = [i for page in listed for i in page]
    live = sorted(set(ids) - {"doc-7", "doc-8"})
    assert sorted(flat) == live and len(flat) == len(live)
    assert flat == sorted(live, key=lambda i: int(id_hashes([i])[0]))
    assert [len(page) for page in listed] == [7] * 14
    restored = make()
    restored.import_state(coll.export_state())
    assert pages(restored, 7) == listed  # a replica or a restart lists in the same order
    assert make().list_ids(None, 5) == ([], 0, False)


def test_overwrites_below_the_training_threshold_are_reclaimed_by_relabelling() -> None:
    from shardsearch.shard_server.index import RELABEL_MIN_DEAD

    spec = search_pb2.Collection(name="re", dim=8, index=search_pb2.IndexOptions(train_threshold=100_000))
    coll = Collection(spec)
    rng = np.random.default_rng(0)
    ids = [f"id{i}" for i in range(50)]
    for _ in range(RELABEL_MIN_DEAD // 50 + 2):
        vectors = rng.standard_normal((50, 8)).astype(np.float32)
        coll.upsert(ids, vectors, [i.encode() for i in ids])
    before = coll.search(vectors[:3], 1)  # taken before the relabel, resolved after it
    assert coll.pending_work() == "relabel"
    coll.maintain()
    assert coll._next == 50 and coll.live == 50 and len(coll._vecs) == 1024 and coll.generation == 1
    assert coll.ids_for(before.labels, before.view) == ["id0", "id1", "id2"]
    assert coll.payloads_for(before.labels, before.view) == [b"id0", b"id1", b"id2"]
    after = coll.search(vectors, 1)
    assert coll.ids_for(after.labels, after.view) == ids
    found, got, payloads = coll.get(["id7"])
    assert found == ["id7"] and np.array_equal(got[0], vectors[7]) and payloads == [b"id7"]
    coll.upsert(["new"], vectors[:1])
    assert sorted(coll.ids_for(coll.search(vectors[:1], 2).labels)) == ["id0", "new"]  # same vector
    with pytest.raises(Exception, match="relabelled"):
        coll.export_chunk(-1, 10, generation=0)


def test_a_batch_on_blas_finds_what_each_query_finds_alone(rng: np.random.Generator) -> None:
    """FAISS scores the coarse quantizer with BLAS from ann.BLAS_FROM_QUERIES queries a call and with its own loop
    below: a batch and its queries one by one take different paths and must still find the same items."""
    import faiss

    from shardsearch.shard_server import ann

    coll = make(dim=64, metric=search_pb2.METRIC_INNER_PRODUCT, threshold=2_000)
    x = rng.standard_normal((4_000, 64)).astype(np.float32)
    coll.upsert([str(i) for i in range(4_000)], x)
    coll.maintain()
    assert coll.info().trained
    q = rng.standard_normal((3 * ann.BLAS_FROM_QUERIES, 64)).astype(np.float32)
    batched = top_ids(coll, q)
    assert faiss.cvar.distance_compute_blas_threshold == ann.BLAS_FROM_QUERIES * 64  # this batch went to BLAS
    assert batched == [top_ids(coll, q[i : i + 1])[0] for i in range(len(q))]
