"""Every kind of bad input gets a clear status naming the field, and the service keeps answering correctly."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from shardsearch import codec
from shardsearch.v1 import search_pb2
from tests.integration.conftest import create

NAME = "valid"
DIM = 8


@pytest.fixture(scope="module", autouse=True)
def collection(stub):
    create(stub, NAME, DIM)
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((50, DIM)).astype(np.float32)
    stub.Upsert(search_pb2.UpsertRequest(collection=NAME, items=[
        search_pb2.Item(id=f"v{i}", vector_f32=codec.pack(v)) for i, v in enumerate(vectors)
    ]))
    return vectors


def item(id_: str = "x", vector: list[float] | None = None, **kw) -> search_pb2.Item:
    return search_pb2.Item(id=id_, vector=vector if vector is not None else [0.5] * DIM, **kw)


def search(**kw) -> search_pb2.SearchRequest:
    return search_pb2.SearchRequest(**{"collection": NAME, "vector": [0.1] * DIM, "k": 5, **kw})


CASES = [
    ("Search", search(collection="missing"), grpc.StatusCode.NOT_FOUND, "'missing' does not exist"),
    ("Upsert", search_pb2.UpsertRequest(collection="missing", items=[item()]), grpc.StatusCode.NOT_FOUND, "does not exist"),
    ("Search", search(vector=[0.1] * (DIM + 1)), grpc.StatusCode.INVALID_ARGUMENT, "vector: 9 values"),
    ("Search", search(vector=[], vector_f32=b"\0" * 12), grpc.StatusCode.INVALID_ARGUMENT, "vector_f32: 12 bytes"),
    ("Search", search(vector=[float("nan")] * DIM), grpc.StatusCode.INVALID_ARGUMENT, "NaN or Inf"),
    ("Search", search(vector=[float("inf")] + [0.0] * (DIM - 1)), grpc.StatusCode.INVALID_ARGUMENT, "NaN or Inf"),
    ("Search", search(k=0), grpc.StatusCode.INVALID_ARGUMENT, "k: 0 must be between 1 and 1000"),
    ("Search", search(k=1001), grpc.StatusCode.INVALID_ARGUMENT, "k: 1001"),
    ("Search", search(nprobe=1 << 20), grpc.StatusCode.INVALID_ARGUMENT, "nprobe"),
    ("BatchSearch", search_pb2.BatchSearchRequest(collection=NAME, vectors=[0.1] * (DIM + 3), k=5),
     grpc.StatusCode.INVALID_ARGUMENT, "not a multiple of the collection's dim 8"),
    ("BatchSearch", search_pb2.BatchSearchRequest(collection=NAME, k=5), grpc.StatusCode.INVALID_ARGUMENT, "at least one query"),
    ("Upsert", search_pb2.UpsertRequest(collection=NAME, items=[item(id_="")]), grpc.StatusCode.INVALID_ARGUMENT, "items[0]: id must not be empty"),
    ("Upsert", search_pb2.UpsertRequest(collection=NAME, items=[item(id_="é" * 200)]), grpc.StatusCode.INVALID_ARGUMENT, "longer than 256 bytes"),
    ("Upsert", search_pb2.UpsertRequest(collection=NAME, items=[item("a"), item("a")]), grpc.StatusCode.INVALID_ARGUMENT, "items[1]: duplicate id"),
    ("Upsert", search_pb2.UpsertRequest(collection=NAME, items=[item("a"), item("b", [1.0] * 3)]), grpc.StatusCode.INVALID_ARGUMENT, "items[1].vector: 3 values"),
    ("Upsert", search_pb2.UpsertRequest(collection=NAME, items=[item("a", [float("nan")] * DIM)]), grpc.StatusCode.INVALID_ARGUMENT, "items[0].vector contains NaN"),
    ("Upsert", search_pb2.UpsertRequest(collection=NAME, items=[item("a", [], vector_f32=codec.pack(np.ones(DIM)))] * 1 + [item("b", [1.0] * DIM, vector_f32=codec.pack(np.ones(DIM)))]),
     grpc.StatusCode.INVALID_ARGUMENT, "items[1].vector: set either"),
    ("Upsert", search_pb2.UpsertRequest(collection=NAME, items=[item("a", payload=b"x" * 70_000)]), grpc.StatusCode.INVALID_ARGUMENT, "items[0].payload"),
    ("Upsert", search_pb2.UpsertRequest(collection=NAME, items=[item(f"i{i}") for i in range(10_001)]), grpc.StatusCode.INVALID_ARGUMENT, "exceeds the maximum of 10000"),
    ("Upsert", search_pb2.UpsertRequest(collection=NAME), grpc.StatusCode.INVALID_ARGUMENT, "items: at least one"),
    ("Delete", search_pb2.DeleteRequest(collection=NAME, ids=["ok", ""]), grpc.StatusCode.INVALID_ARGUMENT, "ids[1]: id must not be empty"),
    ("Get", search_pb2.GetRequest(collection=NAME), grpc.StatusCode.INVALID_ARGUMENT, "ids: at least one id"),
    ("CreateCollection", search_pb2.CreateCollectionRequest(name=NAME, dim=DIM, metric=search_pb2.METRIC_L2), grpc.StatusCode.ALREADY_EXISTS, "already exists"),
    ("CreateCollection", search_pb2.CreateCollectionRequest(name="bad name!", dim=4, metric=search_pb2.METRIC_L2), grpc.StatusCode.INVALID_ARGUMENT, "name:"),
    ("CreateCollection", search_pb2.CreateCollectionRequest(name="c", dim=0, metric=search_pb2.METRIC_L2), grpc.StatusCode.INVALID_ARGUMENT, "dim: 0"),
    ("CreateCollection", search_pb2.CreateCollectionRequest(name="c", dim=5000, metric=search_pb2.METRIC_L2), grpc.StatusCode.INVALID_ARGUMENT, "dim: 5000"),
    ("CreateCollection", search_pb2.CreateCollectionRequest(name="c", dim=4), grpc.StatusCode.INVALID_ARGUMENT, "metric:"),
    ("CreateCollection", search_pb2.CreateCollectionRequest(name="c", dim=128, metric=search_pb2.METRIC_L2, index=search_pb2.IndexOptions(pq_m=30)),
     grpc.StatusCode.INVALID_ARGUMENT, "index.pq_m"),
    ("DropCollection", search_pb2.DropCollectionRequest(name="missing"), grpc.StatusCode.NOT_FOUND, "does not exist"),
    ("DescribeCollection", search_pb2.DescribeCollectionRequest(name="missing"), grpc.StatusCode.NOT_FOUND, "does not exist"),
]


@pytest.mark.parametrize("method,request_,code,message", CASES, ids=[f"{c[0]}:{c[3][:30]}" for c in CASES])
def test_bad_input_gets_a_clear_status(stub, collection, method, request_, code, message) -> None:
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(request_)
    assert err.value.code() == code, err.value.details()
    assert message in err.value.details(), err.value.details()
    # ...and the service still answers correctly, with the stored data intact
    reply = stub.Search(search_pb2.SearchRequest(collection=NAME, vector_f32=codec.pack(collection[7]), k=1))
    assert reply.hits[0].id == "v7"


def test_oversize_message_is_refused_by_the_transport(stub, collection) -> None:
    huge = search_pb2.UpsertRequest(collection=NAME, items=[search_pb2.Item(id="big", payload=b"x" * (65 << 20))])
    with pytest.raises(grpc.RpcError) as err:
        stub.Upsert(huge)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.Get(search_pb2.GetRequest(collection=NAME, ids=["big", "v3"])).items[0].id == "v3"


def test_no_bad_request_changed_the_data(stub, collection) -> None:
    info = stub.DescribeCollection(search_pb2.DescribeCollectionRequest(name=NAME))
    assert info.total_vectors == len(collection)
    items = stub.Get(search_pb2.GetRequest(collection=NAME, ids=[f"v{i}" for i in range(len(collection))])).items
    assert np.array_equal(np.stack([np.frombuffer(i.vector_f32, np.float32) for i in items]), collection)
