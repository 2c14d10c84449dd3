"""Filtered search in one shard's collection, against exact search over the matching items (real FAISS indexes)."""

from __future__ import annotations

import numpy as np
import pytest

from shardsearch.client_messages import match
from shardsearch.shard_server import index as index_module
from shardsearch.shard_server.index import Collection
from shardsearch.v1 import search_pb2 as pb

DIM = 32
N = 24_000
CATEGORIES = [f"c{i}" for i in range(20)]


def fields(category: str, price: float, tags: list[str]) -> pb.Fields:
    return pb.Fields(values={
        "category": pb.Value(keyword=category), "price": pb.Value(number=price),
        "tags": pb.Value(keywords=pb.Keywords(values=tags)),
    })


def price_range(**bounds: float) -> pb.Filter:
    return pb.Filter(range=pb.Range(field="price", **bounds))


@pytest.fixture(scope="module")
def data() -> tuple[Collection, np.ndarray, list[dict]]:
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((64, DIM)).astype(np.float32) * 3
    vectors = (centres[rng.integers(0, 64, N)] + rng.standard_normal((N, DIM))).astype(np.float32)
    items = [{"category": CATEGORIES[i % 20], "price": float(i % 1000), "tags": [f"t{i % 7}", f"t{i % 11 + 7}"]}
             for i in range(N)]
    spec = pb.Collection(name="f", dim=DIM, metric=pb.METRIC_L2, index=pb.IndexOptions(train_threshold=10_000))
    coll = Collection(spec)
    for lo in range(0, N, 4000):
        coll.upsert([str(i) for i in range(lo, lo + 4000)], vectors[lo : lo + 4000], None, None,
                    [fields(**items[i]) for i in range(lo, lo + 4000)])
    coll.train()
    return coll, vectors, items


def passes(item: dict, flt: pb.Filter) -> bool:
    kind = flt.WhichOneof("kind")
    if kind == "match":
        value = item.get(flt.match.field)
        held = set(value) if isinstance(value, list) else {value}
        return bool(held & set(flt.match.values))
    if kind == "range":
        value = item.get(flt.range.field)
        r = flt.range
        return isinstance(value, float) and all([
            not r.HasField("gt") or value > r.gt, not r.HasField("gte") or value >= r.gte,
            not r.HasField("lt") or value < r.lt, not r.HasField("lte") or value <= r.lte,
        ])
    children = [passes(item, f) for f in getattr(flt, kind).filters]
    return all(children) if kind == "all_of" else any(children) if kind == "any_of" else not any(children)


def exact(vectors: np.ndarray, items: list[dict], alive: set[int], flt: pb.Filter, queries: np.ndarray, k: int) -> list[list[int]]:
    chosen = np.array([i for i in range(len(items)) if i in alive and passes(items[i], flt)], dtype=np.int64)
    if len(chosen) == 0:
        return [[] for _ in queries]
    d = ((queries[:, None, :] - vectors[chosen][None, :, :]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return [chosen[row].tolist() for row in order]


FILTERS = {
    "half (range)": price_range(lt=500.0),
    "10% (two categories)": match("category", "c3", "c4"),
    "1% (category and price)": pb.Filter(all_of=pb.Filters(filters=[match("category", "c5"), price_range(gte=100.0, lt=300.0)])),
    "list membership": match("tags", "t3"),
    "not": pb.Filter(none_of=pb.Filters(filters=[match("category", *CATEGORIES[:18])])),
    "or": pb.Filter(any_of=pb.Filters(filters=[match("category", "c1"), price_range(gt=990.0)])),
    "nothing (unknown value)": match("category", "nope"),
    "nothing (keyword range)": pb.Filter(range=pb.Range(field="category", gte=0.0)),
}


@pytest.mark.parametrize("path", ["auto", "ivf"])
@pytest.mark.parametrize("name", FILTERS)
def test_filtered_search_is_exact_about_the_filter_and_finds_the_nearest(
    data, name: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """"auto": this size answers every filter exactly over the matching items; "ivf" forces the id-selector path."""
    coll, vectors, items = data
    if path == "ivf":
        monkeypatch.setattr(index_module, "EXACT_FILTER_MAX", 0)
    flt = FILTERS[name]
    rng = np.random.default_rng(1)
    queries = vectors[rng.integers(0, N, 40)] + rng.standard_normal((40, DIM)).astype(np.float32) * 0.1
    k = 10
    result = coll.search(queries, k, flt=flt)
    truth = exact(vectors, items, set(range(N)), flt, queries, k)
    matching = coll.count_matching(flt)
    assert matching == sum(passes(item, flt) for item in items)
    recall = []
    for row, want in zip(result.labels, truth):
        got = [int(x) for x in row if x >= 0]
        assert all(passes(items[label], flt) for label in got)  # never a hit that fails the filter
        assert len(got) == min(k, matching)  # k hits whenever k items match
        recall.append(len(set(got) & set(want)) / len(want) if want else float(not got))
    assert np.mean(recall) >= 0.95, (name, np.mean(recall))
    if path == "auto":
        assert np.mean(recall) == 1.0  # searched exactly


def test_selective_filter_on_the_ivf_path_still_returns_k(data, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forced through the IVF path (no exact fallback), a 0.4% filter still gets k matching hits: wider probes."""
    coll, vectors, items = data
    monkeypatch.setattr(index_module, "EXACT_FILTER_MAX", 0)
    flt = pb.Filter(all_of=pb.Filters(filters=[match("category", "c9"), price_range(lt=100.0)]))
    queries = vectors[:20] + 0.05
    result = coll.search(queries, 10, nprobe=1, flt=flt)
    truth = exact(vectors, items, set(range(N)), flt, queries, 10)
    for row in result.labels:
        got = [int(x) for x in row if x >= 0]
        assert len(got) == 10 and all(passes(items[label], flt) for label in got)
    recall = np.mean([len(set(r[r >= 0].tolist()) & set(w)) / 10 for r, w in zip(result.labels, truth)])
    assert recall >= 0.9


def test_overwrites_deletes_fresh_items_and_snapshots() -> None:
    spec = pb.Collection(name="g", dim=4, metric=pb.METRIC_INNER_PRODUCT)
    coll = Collection(spec)
    vectors = np.eye(4, dtype=np.float32)
    coll.upsert(["a", "b", "c", "d"], vectors, None, None, [
        fields("red", 10.0, ["x"]), fields("red", 20.0, ["y"]), fields("blue", 30.0, ["x", "y"]), pb.Fields(),
    ])
    query = np.ones((1, 4), np.float32)

    def ids(flt: pb.Filter, c: Collection = coll) -> set[str]:
        return {i for i in c.ids_for(c.search(query, 4, flt=flt).labels) if i}

    assert ids(match("category", "red")) == {"a", "b"}
    assert ids(match("tags", "y")) == {"b", "c"}
    assert ids(price_range(gte=20.0)) == {"b", "c"}
    assert ids(pb.Filter(none_of=pb.Filters(filters=[match("category", "red")]))) == {"c", "d"}
    coll.upsert(["a"], vectors[:1], None, None, [fields("green", 5.0, [])])  # overwrite: old fields gone
    coll.delete(["b"])
    assert ids(match("category", "red")) == set()
    assert ids(match("category", "green")) == {"a"}
    assert ids(price_range(lt=100.0)) == {"a", "c"}
    (got,) = [pb.Fields.FromString(blob) for blob in coll.fields_of_ids(["a"])]
    assert got.values["category"].keyword == "green"
    restored = Collection(spec)
    restored.import_state(coll.export_state())
    assert ids(match("category", "green"), restored) == {"a"}
    assert ids(match("tags", "x"), restored) == {"c"}
    assert ids(price_range(gt=6.0), restored) == {"c"}
    *_, chunk_fields = restored.export_chunk(-1, 10)
    assert sorted(pb.Fields.FromString(b).values["category"].keyword for b in chunk_fields if b) == ["blue", "green"]
