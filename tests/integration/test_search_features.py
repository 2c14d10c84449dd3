"""Search shapes beyond a bare vector, through a real replicated cluster: score thresholds, "more like this item"
(SearchById) and the paged listing of a collection's ids (ListIds)."""

from __future__ import annotations

import base64
from typing import Any, Iterator

import grpc
import numpy as np
import pytest

from shardsearch import codec
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import search_pb2, search_pb2_grpc
from tests.conftest import exact
from tests.integration.conftest import create, running_cluster, upsert

DIM = 16
N = 600


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """2 shards x 2 replicas: pages of a listing and Get calls land on either replica."""
    with running_cluster(request, shards=2, replicas=2, durable=False) as running:
        yield running


@pytest.fixture(scope="module")
def data(cluster: LocalCluster) -> tuple[search_pb2_grpc.SearchServiceStub, list[str], np.ndarray]:
    """`l2` and `ip` collections with the same N items, below the train threshold: searched exactly."""
    stub = search_pb2_grpc.SearchServiceStub(grpc.insecure_channel(cluster.address))
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"item-{i}" for i in range(N)]
    create(stub, "l2", DIM)
    create(stub, "ip", DIM, metric=search_pb2.METRIC_INNER_PRODUCT)
    upsert(stub, "l2", ids, vectors)
    upsert(stub, "ip", ids, vectors)
    return stub, ids, vectors


# ---- score threshold ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_score_threshold_keeps_exactly_the_hits_at_least_that_good(data: Any, metric: str) -> None:
    stub, ids, vectors = data
    query = vectors[3] + 0.05
    order, scores = exact(vectors, query, metric)
    threshold = float(scores[6])  # the 7th best: ties aside, 7 hits qualify
    plain = stub.Search(search_pb2.SearchRequest(collection=metric, vector_f32=codec.pack(query), k=20))
    cut = stub.Search(search_pb2.SearchRequest(
        collection=metric, vector_f32=codec.pack(query), k=20, score_threshold=threshold))
    good = [h for h in plain.hits if (h.score >= threshold if metric == "ip" else h.score <= threshold)]
    assert [h.id for h in cut.hits] == [h.id for h in good]
    assert 6 <= len(cut.hits) <= 8  # float rounding at the boundary
    assert [h.id for h in cut.hits][:6] == [ids[i] for i in order[:6]]


def test_a_threshold_nothing_meets_gives_no_hits_and_zero_is_a_real_threshold(data: Any) -> None:
    stub, _, vectors = data
    none = stub.Search(search_pb2.SearchRequest(
        collection="ip", vector_f32=codec.pack(vectors[0]), k=10, score_threshold=1.5))  # unit vectors: max 1
    assert len(none.hits) == 0
    # 0.0 is a threshold, not "unset": for L2 only exact duplicates qualify.
    zero = stub.Search(search_pb2.SearchRequest(
        collection="l2", vector_f32=codec.pack(vectors[0]), k=10, score_threshold=0.0))
    assert [h.id for h in zero.hits] == ["item-0"]


def test_batch_search_applies_the_threshold_per_query(data: Any) -> None:
    stub, _, vectors = data
    response = stub.BatchSearch(search_pb2.BatchSearchRequest(
        collection="ip", vectors_f32=codec.pack(vectors[:5]), k=10, score_threshold=0.5))
    for query, result in zip(vectors[:5], response.results):
        _, scores = exact(vectors, query, "ip")
        assert len(result.hits) == min(10, int(np.count_nonzero(scores >= 0.5)))
        assert all(h.score >= 0.5 for h in result.hits)


# ---- SearchById ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_search_by_id_is_search_by_its_vector_without_itself(data: Any, metric: str) -> None:
    stub, ids, vectors = data
    for index in (0, 17, 599):
        response = stub.SearchById(search_pb2.SearchByIdRequest(collection=metric, id=ids[index], k=10))
        order, _ = exact(vectors, vectors[index], metric)
        expected = [ids[i] for i in order if i != index][:10]
        assert [h.id for h in response.hits] == expected
        assert ids[index] not in {h.id for h in response.hits}


def test_search_by_id_follows_an_overwrite_and_honours_the_threshold(data: Any) -> None:
    stub, ids, vectors = data
    stub.Upsert(search_pb2.UpsertRequest(collection="ip", items=[
        search_pb2.Item(id="moving", vector_f32=codec.pack(vectors[40]))]))
    first = stub.SearchById(search_pb2.SearchByIdRequest(collection="ip", id="moving", k=1))
    assert first.hits[0].id == "item-40"
    stub.Upsert(search_pb2.UpsertRequest(collection="ip", items=[
        search_pb2.Item(id="moving", vector_f32=codec.pack(vectors[41]))]))
    second = stub.SearchById(search_pb2.SearchByIdRequest(collection="ip", id="moving", k=1))
    assert second.hits[0].id == "item-41"  # never a stale cached answer
    strict = stub.SearchById(search_pb2.SearchByIdRequest(collection="ip", id="moving", k=5, score_threshold=0.999))
    assert [h.id for h in strict.hits] == ["item-41"]
    stub.Delete(search_pb2.DeleteRequest(collection="ip", ids=["moving"]))


@pytest.mark.parametrize(
    ("request_fields", "code", "message"),
    [
        ({"collection": "l2", "id": "no-such-item", "k": 5}, grpc.StatusCode.NOT_FOUND, "no item 'no-such-item'"),
        ({"collection": "nope", "id": "item-1", "k": 5}, grpc.StatusCode.NOT_FOUND, "nope"),
        ({"collection": "l2", "id": "", "k": 5}, grpc.StatusCode.INVALID_ARGUMENT, "id"),
        ({"collection": "l2", "id": "item-1", "k": 0}, grpc.StatusCode.INVALID_ARGUMENT, "k"),
        ({"collection": "l2", "id": "item-1", "k": 1000}, grpc.StatusCode.INVALID_ARGUMENT, "below 1000"),
    ],
)
def test_search_by_id_errors(data: Any, request_fields: dict[str, Any], code: grpc.StatusCode, message: str) -> None:
    stub = data[0]
    with pytest.raises(grpc.RpcError) as failure:
        stub.SearchById(search_pb2.SearchByIdRequest(**request_fields))
    assert failure.value.code() == code
    assert message in failure.value.details()


# ---- ListIds -------------------------------------------------------------------------------------------------


def list_all(stub: search_pb2_grpc.SearchServiceStub, collection: str, page_size: int) -> list[list[str]]:
    pages, token = [], ""
    while True:
        page = stub.ListIds(search_pb2.ListIdsRequest(collection=collection, page_size=page_size, page_token=token))
        pages.append(list(page.ids))
        token = page.next_page_token
        if not token:
            return pages


@pytest.mark.parametrize("page_size", [1, 37, 600, 10_000])
def test_listing_returns_every_id_once_across_replicas(data: Any, page_size: int) -> None:
    stub, ids, _ = data
    pages = list_all(stub, "l2", page_size)
    listed = [i for page in pages for i in page]
    assert sorted(listed) == sorted(ids)  # each exactly once, though pages hop between replicas
    assert all(len(page) == page_size for page in pages[:-1])
    assert list_all(stub, "l2", page_size) == pages  # a stable order


def test_listing_sees_deletes_and_an_empty_collection(data: Any) -> None:
    stub, ids, vectors = data
    create(stub, "small", DIM)
    assert list_all(stub, "small", 10) == [[]]
    upsert(stub, "small", ids[:30], vectors[:30])
    stub.Delete(search_pb2.DeleteRequest(collection="small", ids=ids[:10]))
    assert sorted(i for page in list_all(stub, "small", 7) for i in page) == sorted(ids[10:30])


def test_bad_tokens_and_sizes_are_refused(data: Any) -> None:
    stub = data[0]
    token = stub.ListIds(search_pb2.ListIdsRequest(collection="l2", page_size=5)).next_page_token
    cases = [
        (search_pb2.ListIdsRequest(collection="ip", page_token=token), "lists collection 'l2'"),
        (search_pb2.ListIdsRequest(collection="l2", page_token="garbage!"), "not a token from ListIds"),
        (search_pb2.ListIdsRequest(collection="l2", page_token=token[:-3]), "not a token from ListIds"),
        (search_pb2.ListIdsRequest(collection="l2", page_size=10_001), "page_size"),
    ]
    for forged in ('[1, "l2", 1, 0, Infinity, true]', '[1, "l2", 1, 0, NaN, true]', '[1, "l2", 1, 0, 1e400, true]',
                   '[1, "l2", 1, 0.5, 3, true]', '[1, ["l2"], 1, 0, 3, true]', '[1, "l2", 1, 0, 3, "yes"]',
                   "[" * 100_000):
        encoded = base64.urlsafe_b64encode(forged.encode()).decode()
        cases.append((search_pb2.ListIdsRequest(collection="l2", page_token=encoded), "not a token from ListIds"))
    for request, message in cases:
        with pytest.raises(grpc.RpcError) as failure:
            stub.ListIds(request)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert message in failure.value.details()
    with pytest.raises(grpc.RpcError) as failure:
        stub.ListIds(search_pb2.ListIdsRequest(collection="nope"))
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


# ---- SearchCombined: several weighted queries, one list -------------------------------------------------------


def part(vector: np.ndarray | None = None, item_id: str | None = None, weight: float = 0.0) -> search_pb2.WeightedQuery:
    if item_id is not None:
        return search_pb2.WeightedQuery(id=item_id, weight=weight)
    assert vector is not None
    return search_pb2.WeightedQuery(vector_f32=codec.pack(vector), weight=weight)


def test_items_like_these_searches_their_normalised_mean_without_them(data: Any) -> None:
    stub, ids, vectors = data
    chosen = [3, 50, 99]
    response = stub.SearchCombined(search_pb2.CombinedSearchRequest(
        collection="ip", queries=[part(item_id=ids[i]) for i in chosen], k=10))
    mean = vectors[chosen].mean(axis=0)  # already unit vectors
    order, _ = exact(vectors, mean, "ip")
    assert [h.id for h in response.hits] == [ids[i] for i in order if i not in chosen][:10]
    kept = stub.SearchCombined(search_pb2.CombinedSearchRequest(
        collection="ip", queries=[part(item_id=ids[i]) for i in chosen], k=10, include_query_items=True))
    assert [h.id for h in kept.hits] == [ids[i] for i in order[:10]]


def test_a_weighted_hybrid_of_two_vectors(data: Any) -> None:
    stub, ids, vectors = data
    image, text = vectors[10] * 2.0, vectors[20]  # norms differ: the mean is of the normalised parts
    response = stub.SearchCombined(search_pb2.CombinedSearchRequest(
        collection="ip", queries=[part(image, weight=0.75), part(text, weight=0.25)], k=10))
    order, scores = exact(vectors, 0.75 * vectors[10] + 0.25 * vectors[20], "ip")
    assert [h.id for h in response.hits] == [ids[i] for i in order[:10]]
    assert np.allclose([h.score for h in response.hits], scores[:10], atol=1e-5)
    # L2: the weighted centroid, as is.
    l2 = stub.SearchCombined(search_pb2.CombinedSearchRequest(
        collection="l2", queries=[part(image, weight=3), part(text, weight=1)], k=5))
    order, _ = exact(vectors, (3 * image + text) / 4, "l2")
    assert [h.id for h in l2.hits] == [ids[i] for i in order[:5]]


def test_reciprocal_rank_fusion_of_exact_lists(data: Any) -> None:
    stub, ids, vectors = data
    a, b = vectors[5], vectors[6]
    k, weights = 8, (2.0, 1.0)
    response = stub.SearchCombined(search_pb2.CombinedSearchRequest(
        collection="l2", queries=[part(a, weight=weights[0]), part(b, weight=weights[1])],
        combine=search_pb2.COMBINE_RRF, k=k))
    depth = max(2 * k, 20)
    fused: dict[str, float] = {}
    for weight, query in zip(weights, (a, b)):
        order, _ = exact(vectors, query, "l2")
        for rank, index in enumerate(order[:depth], 1):
            fused[ids[index]] = fused.get(ids[index], 0.0) + weight / (60 + rank)
    expected = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
    assert [h.id for h in response.hits] == [i for i, _ in expected]
    assert np.allclose([h.score for h in response.hits], [s for _, s in expected], atol=1e-6)
    assert response.hits[0].id == "item-5"  # first in the heavier list
    cut = stub.SearchCombined(search_pb2.CombinedSearchRequest(
        collection="l2", queries=[part(a, weight=2), part(b)], combine=search_pb2.COMBINE_RRF, k=k,
        score_threshold=expected[2][1]))
    assert [h.id for h in cut.hits] == [i for i, _ in expected[:3]]


@pytest.mark.parametrize(
    ("queries", "code", "message"),
    [
        ([], grpc.StatusCode.INVALID_ARGUMENT, "queries: 0 parts"),
        ([search_pb2.WeightedQuery(weight=1)], grpc.StatusCode.INVALID_ARGUMENT, "queries[0]: set vector_f32, id, text or image"),
        ([search_pb2.WeightedQuery(id="item-1", weight=-1)], grpc.StatusCode.INVALID_ARGUMENT, "queries[0].weight"),
        ([search_pb2.WeightedQuery(id="item-1", weight=float("nan"))], grpc.StatusCode.INVALID_ARGUMENT, "weight"),
        ([search_pb2.WeightedQuery(id="item-1"), search_pb2.WeightedQuery(id="ghost")], grpc.StatusCode.NOT_FOUND,
         "no item 'ghost'"),
        ([search_pb2.WeightedQuery(vector_f32=b"\x00" * 8)], grpc.StatusCode.INVALID_ARGUMENT, "queries[0].vector_f32"),
        ([search_pb2.WeightedQuery(vector_f32=codec.pack(np.zeros(DIM, np.float32)))],
         grpc.StatusCode.INVALID_ARGUMENT, "zero vector"),
    ],
)
def test_combined_search_errors(data: Any, queries: list[Any], code: grpc.StatusCode, message: str) -> None:
    stub = data[0]
    with pytest.raises(grpc.RpcError) as failure:
        stub.SearchCombined(search_pb2.CombinedSearchRequest(collection="ip", queries=queries, k=5))
    assert failure.value.code() == code
    assert message in failure.value.details()
