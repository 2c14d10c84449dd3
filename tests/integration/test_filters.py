"""Structured fields, exact filters and per-field diversity through a real replicated cluster, checked against an
exact numpy brute force over the items that pass each filter."""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from typing import Any, Iterator

import grpc
import numpy as np
import pytest

from shardsearch import codec
from shardsearch.client_messages import all_of, any_of, match, none_of, number_range
from shardsearch.coordinator.combine import fuse_rrf
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import search_pb2, search_pb2_grpc
from tests.conftest import exact
from tests.integration.conftest import connect, create, running_cluster, wait_trained, wait_until

DIM = 16
N = 3000
CATEGORIES = [f"c{i:02d}" for i in range(20)]
TAGS = [f"t{i:02d}" for i in range(30)]
SPECIAL = ["item-11", "item-1234", "item-2999"]  # the only items with special=yes
V = search_pb2.Value
F = search_pb2.Filter


# ---- filters: built with the client's builders (shardsearch.client), evaluated in Python as the shards must ---------


def passes(fields: dict[str, V], flt: F) -> bool:
    kind = flt.WhichOneof("kind")
    if kind == "match":
        value = fields.get(flt.match.field)
        if value is None:
            return False
        if value.WhichOneof("kind") == "keyword":
            return value.keyword in flt.match.values
        if value.WhichOneof("kind") == "keywords":
            return bool(set(value.keywords.values) & set(flt.match.values))
        return False
    if kind == "range":
        value, r = fields.get(flt.range.field), flt.range
        if value is None or value.WhichOneof("kind") != "number":
            return False
        x = value.number
        return ((not r.HasField("gt") or x > r.gt) and (not r.HasField("gte") or x >= r.gte)
                and (not r.HasField("lt") or x < r.lt) and (not r.HasField("lte") or x <= r.lte))
    children = [passes(fields, child) for child in getattr(flt, kind).filters]
    return all(children) if kind == "all_of" else any(children) if kind == "any_of" else not any(children)


FILTERS: dict[str, F] = {
    "equality": match("category", "c03"),
    "membership": match("category", "c01", "c07", "c11"),
    "range": number_range("price", gte=100.0, lt=250.0),
    "open range": number_range("price", gt=900.0),
    "equal bounds": number_range("price", gte=500.0, lte=500.0),
    "list membership": match("tags", "t05", "t17"),
    "all_of": all_of(match("category", *CATEGORIES[:5]), number_range("price", lte=500.0)),
    "any_of": any_of(match("category", "c02"), match("tags", "t03")),
    "none_of": none_of(match("category", *CATEGORIES[:10])),
    "nested": all_of(any_of(match("tags", "t01"), number_range("price", lt=100.0)), none_of(match("category", "c04"))),
    "selective": all_of(match("category", "c05"), number_range("price", lt=200.0)),  # about 1%
    "nothing": match("category", "no-such-category"),
    "wrong type": number_range("category", gte=0.0),  # a keyword field never passes a range
    "keyword vs number": match("price", "500"),  # nor a number field a match
    "three": match("special", "yes"),
}


# ---- the data -----------------------------------------------------------------------------------------------


@dataclass
class Data:
    stub: search_pb2_grpc.SearchServiceStub
    ids: list[str]
    vectors: np.ndarray
    fields: list[dict[str, V]]

    def mask(self, flt: F | None) -> np.ndarray:
        if flt is None:
            return np.ones(len(self.ids), dtype=bool)
        return np.array([passes(f, flt) for f in self.fields])

    def ranking(
        self, query: np.ndarray, flt: F | None, metric: str = "l2", leave_out: str = ""
    ) -> list[tuple[str, float]]:
        """The exact ranking of the items passing `flt`, best first, as (id, score)."""
        rows = np.flatnonzero(self.mask(flt))
        rows = rows[[self.ids[r] != leave_out for r in rows]] if leave_out else rows
        order, scores = exact(self.vectors[rows], query, metric)
        return [(self.ids[rows[i]], float(score)) for i, score in zip(order, scores)]

    def fields_of(self, item_id: str) -> dict[str, V]:
        return self.fields[int(item_id.split("-")[1])]


def make_fields(rng_: np.random.Generator, i: int) -> dict[str, V]:
    if i % 50 == 7:
        return {}  # some items have no fields at all
    values: dict[str, V] = {"category": V(keyword=CATEGORIES[rng_.integers(len(CATEGORIES))])}
    if i % 97 == 5:
        values["price"] = V(keyword="unknown")  # the wrong type: never passes a range
    elif i % 20 != 3:  # some have no price
        values["price"] = V(number=500.0 if i % 100 == 1 else round(float(rng_.uniform(0, 1000)), 2))
    tags = rng_.choice(TAGS, size=int(rng_.integers(0, 5)), replace=False)
    values["tags"] = V(keywords=search_pb2.Keywords(values=[str(t) for t in tags]))
    if f"item-{i}" in SPECIAL:
        values["special"] = V(keyword="yes")
    return values


def upsert_with_fields(stub: search_pb2_grpc.SearchServiceStub, collection: str, data: Data, batch: int = 500) -> None:
    for lo in range(0, len(data.ids), batch):
        stub.Upsert(search_pb2.UpsertRequest(collection=collection, items=[
            search_pb2.Item(id=data.ids[i], vector_f32=codec.pack(data.vectors[i]), fields=data.fields[i],
                            payload=f"p{i}".encode())
            for i in range(lo, min(len(data.ids), lo + batch))
        ]))


def make_data(stub: search_pb2_grpc.SearchServiceStub, seed: int = 11) -> Data:
    generator = np.random.default_rng(seed)
    vectors = generator.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return Data(stub, [f"item-{i}" for i in range(N)], vectors, [make_fields(generator, i) for i in range(N)])


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """2 shards x 2 replicas with durable storage (the last test restarts a replica, which catches up from its peer)."""
    with running_cluster(request, shards=2, replicas=2) as running:
        yield running


@pytest.fixture(scope="module")
def data(cluster: LocalCluster) -> Data:
    """`l2` and `ip`: N items below the train threshold (searched exactly); `trained`: the same items in IVF-PQ."""
    stub = connect(cluster)
    data = make_data(stub)
    create(stub, "l2", DIM)
    create(stub, "ip", DIM, metric=search_pb2.METRIC_INNER_PRODUCT)
    create(stub, "trained", DIM, train_threshold=1000, nlist=16)
    for name in ("l2", "ip", "trained"):
        upsert_with_fields(stub, name, data)
    wait_trained(stub, "trained")
    return data


def queries(count: int, seed: int = 3) -> np.ndarray:
    q = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def assert_exact(hits: Any, expected: list[tuple[str, float]], k: int, metric: str = "l2") -> None:
    """The hits are the exact top k of `expected` (the filtered ranking), up to ties at equal scores."""
    got = [h.id for h in hits]
    assert len(got) == min(k, len(expected)), f"{len(got)} hits, {len(expected)} items match, k {k}"
    assert len(set(got)) == len(got)
    scores = dict(expected)
    assert set(got) <= scores.keys(), f"hits that fail the filter: {sorted(set(got) - scores.keys())[:5]}"
    if not got:
        return
    tol = 1e-4
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected[: len(got)]], rtol=tol, atol=tol)
    kth = expected[len(got) - 1][1]
    worse = [i for i in got if (scores[i] < kth - tol if metric == "ip" else scores[i] > kth + tol)]
    assert not worse, f"hits beyond the exact top {k}: {worse}"
    if [i for i, _ in expected[: len(got)]] != got:  # only ties may reorder
        for a, b in zip(got, [i for i, _ in expected[: len(got)]]):
            assert a == b or abs(scores[a] - scores[b]) <= tol


def greedy(ranking: list[tuple[str, float]], data: Data, field: str, limit: int, k: int, depth: int) -> list[str]:
    """What diversity must return: a walk over the top `depth` of the exact filtered ranking."""
    seen: dict[Any, int] = {}
    kept = []
    for item_id, _ in ranking[:depth]:
        if len(kept) == k:
            break
        value = data.fields_of(item_id).get(field)
        keys: list[Any] = []
        if value is not None:
            kind = value.WhichOneof("kind")
            keys = list(dict.fromkeys(value.keywords.values)) if kind == "keywords" else [
                ("k", value.keyword) if kind == "keyword" else ("n", value.number)]
        if any(seen.get(key, 0) >= limit for key in keys):
            continue
        for key in keys:
            seen[key] = seen.get(key, 0) + 1
        kept.append(item_id)
    return kept


def mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The coordinator's COMBINE_MEAN of two equally weighted parts (L2), to the bit."""
    return ((a.astype(np.float64) + b) / 2).astype(np.float32)


def rrf(data: Data, parts: np.ndarray, flt: F, listed: int, part_depth: int) -> list[tuple[str, float]]:
    """COMBINE_RRF over the exact filtered ranking of each part, `part_depth` deep, fused to `listed` hits."""
    results = [search_pb2.SearchResponse(hits=[search_pb2.Hit(id=i, score=s) for i, s in
                                               data.ranking(v, flt)[:part_depth]]) for v in parts]
    return [(h.id, h.score) for h in fuse_rrf(results, np.ones(len(parts)), listed, set()).hits]


def search(
    data: Data, query: np.ndarray, k: int = 10, collection: str = "l2", **kwargs: Any
) -> search_pb2.SearchResponse:
    return data.stub.Search(search_pb2.SearchRequest(
        collection=collection, vector_f32=codec.pack(query), k=k, **kwargs), timeout=30)


# ---- exact filters ------------------------------------------------------------------------------------------


def test_the_filters_cover_what_they_should(data: Data) -> None:
    counts = {name: int(data.mask(flt).sum()) for name, flt in FILTERS.items()}
    assert 10 <= counts["selective"] <= 60, counts  # about 1% of N
    assert counts["nothing"] == counts["wrong type"] == counts["keyword vs number"] == 0
    assert counts["three"] == 3 and counts["equal bounds"] >= 20
    assert all(counts[name] > 50 for name in ("equality", "membership", "range", "list membership", "any_of",
                                                "none_of", "nested", "all_of")), counts


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("name", list(FILTERS))
def test_filtered_search_is_the_exact_top_k_of_the_matching_items(data: Data, name: str, metric: str) -> None:
    flt = FILTERS[name]
    for row, query in enumerate(queries(4)):
        k = 10 if row % 2 == 0 else 50
        response = search(data, query, k, collection=metric, filter=flt)
        assert_exact(response.hits, data.ranking(query, flt, metric), k, metric)
        assert all(not h.fields and not h.payload for h in response.hits)  # nothing asked for


def test_three_matches_with_k_10_give_exactly_those_three(data: Data) -> None:
    response = search(data, queries(1)[0], 10, filter=FILTERS["three"])
    assert sorted(h.id for h in response.hits) == sorted(SPECIAL)


@pytest.mark.parametrize("name", ["selective", "three", "equality", "nested", "nothing"])
def test_filters_on_a_trained_ivf_pq_index_are_exact_too(data: Data, name: str) -> None:
    """The shards answer filters that match few items (all of these) by an exact search over them."""
    flt = FILTERS[name]
    for query in queries(3, seed=8):
        response = search(data, query, 10, collection="trained", filter=flt, nprobe=1)
        assert_exact(response.hits, data.ranking(query, flt), 10)


def test_batch_search_filters_every_query(data: Data) -> None:
    flt = FILTERS["all_of"]
    q = queries(5, seed=4)
    reply = data.stub.BatchSearch(search_pb2.BatchSearchRequest(
        collection="l2", vectors_f32=codec.pack(q), k=10, filter=flt), timeout=30)
    for query, result in zip(q, reply.results):
        assert_exact(result.hits, data.ranking(query, flt), 10)


def test_stream_search_filters(data: Data) -> None:
    flt = FILTERS["list membership"]
    q = queries(4, seed=5)
    requests = [search_pb2.SearchRequest(collection="l2", vector_f32=codec.pack(v), k=10, filter=flt,
                                         request_id=str(i)) for i, v in enumerate(q)]
    answers = {a.request_id: a for a in data.stub.StreamSearch(iter(requests), timeout=30)}
    for i, query in enumerate(q):
        assert answers[str(i)].error_code == 0, answers[str(i)].error_message
        assert_exact(answers[str(i)].response.hits, data.ranking(query, flt), 10)


def test_search_by_id_filters_and_still_leaves_the_item_out(data: Data) -> None:
    flt = FILTERS["membership"]
    inside = next(i for i in data.ids if passes(data.fields_of(i), flt))
    outside = next(i for i in data.ids if not passes(data.fields_of(i), flt))
    for item_id in (inside, outside):
        query = data.vectors[int(item_id.split("-")[1])]
        response = data.stub.SearchById(search_pb2.SearchByIdRequest(
            collection="l2", id=item_id, k=10, filter=flt), timeout=30)
        assert_exact(response.hits, data.ranking(query, flt, leave_out=item_id), 10)


def test_search_combined_filters_with_mean_and_with_each_rrf_part(data: Data) -> None:
    flt = FILTERS["none_of"]
    a, b = queries(2, seed=6)
    parts = [search_pb2.WeightedQuery(vector_f32=codec.pack(a)), search_pb2.WeightedQuery(vector_f32=codec.pack(b))]
    averaged = data.stub.SearchCombined(search_pb2.CombinedSearchRequest(
        collection="l2", queries=parts, k=10, filter=flt), timeout=30)
    assert_exact(averaged.hits, data.ranking(mean(a, b), flt), 10)
    fused = data.stub.SearchCombined(search_pb2.CombinedSearchRequest(
        collection="l2", queries=parts, k=10, filter=flt, combine=search_pb2.COMBINE_RRF), timeout=30)
    assert len(fused.hits) == 10 and all(passes(data.fields_of(h.id), flt) for h in fused.hits)
    assert [h.id for h in fused.hits] == [i for i, _ in rrf(data, np.stack([a, b]), flt, 10, 20)]


def test_different_filters_are_never_served_from_each_others_cache_entries(data: Data) -> None:
    query = queries(1, seed=9)[0]
    first = search(data, query, 10, filter=FILTERS["equality"])
    again = search(data, query, 10, filter=FILTERS["equality"])
    assert again.cached and [h.id for h in again.hits] == [h.id for h in first.hits]
    other = search(data, query, 10, filter=FILTERS["range"])
    assert not other.cached
    assert_exact(other.hits, data.ranking(query, FILTERS["range"]), 10)
    plain = search(data, query, 10)
    assert not plain.cached
    assert_exact(plain.hits, data.ranking(query, None), 10)
    with_fields = search(data, query, 10, filter=FILTERS["equality"], include_payload=True)
    assert not with_fields.cached and all(h.fields for h in with_fields.hits)


# ---- fields: stored, returned --------------------------------------------------------------------------------


def test_get_returns_each_items_fields(data: Data) -> None:
    sample = data.ids[:120] + SPECIAL[1:]
    reply = data.stub.Get(search_pb2.GetRequest(collection="l2", ids=sample), timeout=30)
    assert [item.id for item in reply.items] == sample
    for item in reply.items:
        assert dict(item.fields) == data.fields_of(item.id), item.id
    assert any(not item.fields for item in reply.items)  # items without fields come back without


def test_include_payload_returns_fields_with_every_hit(data: Data) -> None:
    query = queries(1, seed=10)[0]
    response = search(data, query, 30, include_payload=True, filter=FILTERS["nested"])
    assert len(response.hits) == 30
    for hit in response.hits:
        assert dict(hit.fields) == data.fields_of(hit.id) and hit.payload == f"p{hit.id.split('-')[1]}".encode()
    bare = data.ids.index("item-7")  # an item without fields
    unfiltered = search(data, data.vectors[bare], 20, include_payload=True)
    assert unfiltered.hits[0].id == "item-7" and not unfiltered.hits[0].fields
    for hit in unfiltered.hits:
        assert dict(hit.fields) == data.fields_of(hit.id)


# ---- diversity ------------------------------------------------------------------------------------------------


def depth(k: int) -> int:
    return min(1000, max(4 * k, k + 20))


@pytest.mark.parametrize("limit", [1, 2])
def test_diversity_is_a_greedy_walk_over_the_exact_filtered_ranking(data: Data, limit: int) -> None:
    flt = FILTERS["range"]
    for query in queries(4, seed=12):
        response = search(data, query, 10, filter=flt, diversity=search_pb2.Diversity(field="category",
                                                                                      max_per_value=limit))
        ranking = data.ranking(query, flt)
        assert [h.id for h in response.hits] == greedy(ranking, data, "category", limit, 10, depth(10))
        categories = [data.fields_of(h.id)["category"].keyword for h in response.hits]
        assert max(categories.count(c) for c in categories) <= limit
        assert all(not h.fields for h in response.hits)  # fetched for diversity only


def test_diversity_over_a_keyword_list_without_a_filter(data: Data) -> None:
    query = queries(1, seed=13)[0]
    per_tag = search_pb2.Diversity(field="tags", max_per_value=1)
    response = search(data, query, 8, include_payload=True, diversity=per_tag)
    assert [h.id for h in response.hits] == greedy(data.ranking(query, None), data, "tags", 1, 8, depth(8))
    tags = [t for h in response.hits if "tags" in h.fields for t in set(h.fields["tags"].keywords.values)]
    assert len(tags) == len(set(tags))
    assert all(dict(h.fields) == data.fields_of(h.id) for h in response.hits)  # include_payload keeps them


def test_diversity_may_give_fewer_than_k(data: Data) -> None:
    flt = FILTERS["membership"]  # three categories
    response = search(data, queries(1)[0], 10, filter=flt,
                      diversity=search_pb2.Diversity(field="category", max_per_value=2))
    assert len(response.hits) == 6


def test_diversity_with_a_score_threshold_applies_the_threshold_first(data: Data) -> None:
    query = queries(1, seed=14)[0]
    ranking = data.ranking(query, None)
    threshold = (ranking[15][1] + ranking[16][1]) / 2  # 16 hits qualify, whatever the rounding
    response = search(data, query, 10, score_threshold=threshold,
                      diversity=search_pb2.Diversity(field="category", max_per_value=1))
    expected = greedy([r for r in ranking if r[1] <= threshold], data, "category", 1, 10, depth(10))
    assert [h.id for h in response.hits] == expected


def test_diversity_in_batch_search_by_id_and_combined(data: Data) -> None:
    flt, div = FILTERS["none_of"], search_pb2.Diversity(field="category", max_per_value=1)
    q = queries(3, seed=15)
    reply = data.stub.BatchSearch(search_pb2.BatchSearchRequest(
        collection="l2", vectors_f32=codec.pack(q), k=5, filter=flt, diversity=div), timeout=30)
    for query, result in zip(q, reply.results):
        assert [h.id for h in result.hits] == greedy(data.ranking(query, flt), data, "category", 1, 5, depth(5))
    item_id = data.ids[42]
    by_id = data.stub.SearchById(search_pb2.SearchByIdRequest(
        collection="l2", id=item_id, k=5, filter=flt, diversity=div), timeout=30)
    ranking = data.ranking(data.vectors[42], flt, leave_out=item_id)
    assert [h.id for h in by_id.hits] == greedy(ranking, data, "category", 1, 5, depth(5))
    parts = [search_pb2.WeightedQuery(vector_f32=codec.pack(v)) for v in q[:2]]
    averaged = data.stub.SearchCombined(search_pb2.CombinedSearchRequest(
        collection="l2", queries=parts, k=5, filter=flt, diversity=div), timeout=30)
    ranking = data.ranking(mean(q[0], q[1]), flt)
    assert [h.id for h in averaged.hits] == greedy(ranking, data, "category", 1, 5, depth(5))
    fused = data.stub.SearchCombined(search_pb2.CombinedSearchRequest(
        collection="l2", queries=parts, k=5, filter=flt, diversity=div, combine=search_pb2.COMBINE_RRF), timeout=30)
    categories = [data.fields_of(h.id)["category"].keyword for h in fused.hits if "category" in data.fields_of(h.id)]
    assert len(fused.hits) == 5 and len(set(categories)) == len(categories) and all(not h.fields for h in fused.hits)
    # the fused list is depth(5) = 25 deep, from parts searched 2 x 25 deep; diversity walks it
    expected = rrf(data, q[:2], flt, depth(5), 2 * depth(5))
    assert [h.id for h in fused.hits] == greedy(expected, data, "category", 1, 5, depth(5))


# ---- bad requests ---------------------------------------------------------------------------------------------


def invalid(call: Any, request: Any, *fragments: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details()


BAD_FILTERS = [
    (all_of(match("a", "x"), match("b", "y"), number_range("price")), "filter.all_of[2].range: set at least one bound"),
    (F(), "filter: set one of match, range"),
    (any_of(), "filter.any_of: give at least one filter"),
    (match("category"), "filter.match.values: 0 values"),
    (none_of(number_range("price", gt=1, gte=2)), "filter.none_of[0].range: set gt or gte, not both"),
    (number_range("price", lt=math.nan), "filter.range.lt: nan is not a finite number"),
    (match("", "x"), "filter.match.field: a field name must not be empty"),
]


def validation_collection(cluster: LocalCluster) -> tuple[search_pb2_grpc.SearchServiceStub, str]:
    """A stub and the empty collection the validation tests send bad requests to (made by the first that runs)."""
    stub = connect(cluster)
    try:
        create(stub, "validation", DIM)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
    return stub, "validation"


@pytest.mark.parametrize("flt, message", BAD_FILTERS)
def test_bad_filters_are_invalid_argument_naming_the_path(cluster: LocalCluster, flt: F, message: str) -> None:
    stub, collection = validation_collection(cluster)
    vector = codec.pack(np.ones(DIM, np.float32))
    invalid(stub.Search, search_pb2.SearchRequest(collection=collection, vector_f32=vector, k=5, filter=flt), message)
    invalid(stub.BatchSearch, search_pb2.BatchSearchRequest(
        collection=collection, vectors_f32=vector, k=5, filter=flt), message)
    invalid(stub.SearchById, search_pb2.SearchByIdRequest(collection=collection, id="x", k=5, filter=flt), message)
    invalid(stub.SearchCombined, search_pb2.CombinedSearchRequest(
        collection=collection, queries=[search_pb2.WeightedQuery(vector_f32=vector)], k=5, filter=flt), message)
    (answer,) = stub.StreamSearch(iter([search_pb2.SearchRequest(
        collection=collection, vector_f32=vector, k=5, filter=flt, request_id="bad")]), timeout=30)
    assert answer.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and message in answer.error_message


def test_bad_diversity_and_bad_fields_are_invalid_argument(cluster: LocalCluster) -> None:
    stub, collection = validation_collection(cluster)
    vector = codec.pack(np.ones(DIM, np.float32))
    invalid(stub.Search, search_pb2.SearchRequest(
        collection=collection, vector_f32=vector, k=5, diversity=search_pb2.Diversity(field="c")),
        "diversity.max_per_value: must be at least 1")
    invalid(stub.Search, search_pb2.SearchRequest(
        collection=collection, vector_f32=vector, k=5, diversity=search_pb2.Diversity(max_per_value=1)),
        "diversity.field: a field name must not be empty")
    good = search_pb2.Item(id="ok", vector_f32=vector, fields={"c": V(keyword="x")})
    for fields, message in [
        ({"price": V(number=math.inf)}, "items[1].fields['price']: inf is not a finite number"),
        ({"c": V()}, "items[1].fields['c']: set keyword, number or keywords"),
        ({f"f{i}": V(number=i) for i in range(65)}, "items[1].fields: 65 fields exceeds the maximum of 64"),
        ({"tags": V(keywords=search_pb2.Keywords(values=["x" * 300]))}, "items[1].fields['tags'].keywords[0]"),
    ]:
        bad = search_pb2.Item(id="bad", vector_f32=vector, fields=fields)
        invalid(stub.Upsert, search_pb2.UpsertRequest(collection=collection, items=[good, bad]), message)
    reply = stub.Get(search_pb2.GetRequest(collection=collection, ids=["ok", "bad"]))
    assert not reply.items  # a refused upsert writes nothing


# ---- durability: fields travel in the write-ahead log, snapshots and replica catch-up ----------------------------


def reaches_every_shard(stub: Any, ids: list[str]) -> bool:
    try:
        stub.Get(search_pb2.GetRequest(collection="durable", ids=ids), timeout=5)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return False
    return True


def check_after_restart(data: Data, collection: str) -> None:
    sample = data.ids[::37]
    reply = data.stub.Get(search_pb2.GetRequest(collection=collection, ids=sample), timeout=30)
    assert [item.id for item in reply.items] == sample
    assert all(dict(item.fields) == data.fields_of(item.id) for item in reply.items)
    for name in ("selective", "nested", "three", "list membership"):
        for query in queries(2, seed=16):
            response = search(data, query, 10, collection=collection, filter=FILTERS[name], skip_cache=True)
            assert_exact(response.hits, data.ranking(query, FILTERS[name]), 10)


def test_fields_and_filters_survive_restarting_every_shard_from_its_log_and_snapshots() -> None:
    with LocalCluster(shards=2, shard_args=["--snapshot-wal-bytes", "200000"]) as cluster:
        stub = connect(cluster)
        data = make_data(stub, seed=21)
        create(stub, "durable", DIM)
        upsert_with_fields(stub, "durable", data, batch=250)
        check_after_restart(data, "durable")
        for proc in cluster.shard_procs:  # no graceful shutdown: the log and snapshots are all there is
            proc.signal(signal.SIGKILL)
            proc.popen.wait()  # type: ignore[union-attr]
        for index in range(2):
            cluster.restart_shard(index)
        # The coordinator's channels may still be in their reconnect backoff from while the shards were down (it
        # answers UNAVAILABLE, "retrying the whole call is safe"): wait until it reaches both shards again.
        wait_until(lambda: reaches_every_shard(stub, data.ids[:50]), "the coordinator to reach the restarted shards")
        check_after_restart(data, "durable")


def test_a_replica_that_catches_up_from_its_peer_gets_the_fields(cluster: LocalCluster, data: Data) -> None:
    """Runs last: replica 0 of shard 0 restarts and catches up; its peer is then stopped, so it answers alone."""
    peer = cluster.replica(0, 1)
    cluster.restart_shard(cluster.shard_procs.index(cluster.replica(0, 0)))
    peer.stop()
    try:
        check_after_restart(data, "l2")
    finally:
        cluster.restart_shard(cluster.shard_procs.index(peer))
