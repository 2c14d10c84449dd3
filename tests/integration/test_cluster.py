"""The cluster through its public API: recall on embedding-like data, freshness, deletes, overwrites, all search forms."""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shardsearch import __version__, codec
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import search_pb2
from tests.conftest import load_dataset, recall_at_10
from tests.integration.conftest import batch_search, create, metrics_text, upsert, wait_trained

VECTORS = "vectors"


@pytest.fixture(scope="module")
def vectors(stub):
    """10k embedding-like 128-d vectors in a 4-shard collection, trained into IVF-PQ on every shard."""
    base, queries, gt = load_dataset("l2-10k-128")
    create(stub, VECTORS, 128, train_threshold=1_000)
    upsert(stub, VECTORS, [str(i) for i in range(len(base))], base)
    info = wait_trained(stub, VECTORS)
    return base, queries, gt, info


def ids_of(response: search_pb2.SearchResponse) -> list[int]:
    return [int(h.id) for h in response.hits]


def test_recall_through_four_trained_shards(stub, vectors) -> None:
    base, queries, gt, info = vectors
    assert len(info.shards) == 4 and info.total_vectors == len(base)
    for shard in info.shards:
        assert shard.trained and shard.index_description.startswith("IVF"), shard
        assert shard.indexed_vectors > 0 and 0.2 < shard.vectors / (len(base) / 4) < 1.8
    found = [ids_of(stub.Search(search_pb2.SearchRequest(collection=VECTORS, vector=q.tolist(), k=10))) for q in queries]
    recall = recall_at_10(found, gt)
    assert recall >= 0.95, recall


def test_batch_and_stream_agree_with_unary(stub, vectors) -> None:
    _, queries, gt, _ = vectors
    batch = batch_search(stub, VECTORS, queries[:20])
    unary = [stub.Search(search_pb2.SearchRequest(collection=VECTORS, vector_f32=codec.pack(q), k=10)) for q in queries[:20]]
    assert [ids_of(r) for r in batch.results] == [ids_of(r) for r in unary]
    requests = (search_pb2.SearchRequest(collection=VECTORS, vector_f32=codec.pack(q), k=10, request_id=f"q{i}")
                for i, q in enumerate(queries[:20]))
    streamed = {r.request_id: r for r in stub.StreamSearch(requests)}
    assert sorted(streamed) == sorted(f"q{i}" for i in range(20))
    assert all(r.error_code == 0 and r.response.request_id == rid for rid, r in streamed.items())
    assert [ids_of(streamed[f"q{i}"].response) for i in range(20)] == [ids_of(r) for r in unary]


def test_a_stream_survives_a_bad_request(stub, vectors) -> None:
    _, queries, _, _ = vectors
    requests = [
        search_pb2.SearchRequest(collection=VECTORS, vector_f32=codec.pack(queries[0]), k=5, request_id="good"),
        search_pb2.SearchRequest(collection=VECTORS, vector=[1.0, 2.0], k=5, request_id="bad"),
        search_pb2.SearchRequest(collection="nope", vector=[1.0], k=5, request_id="missing"),
    ]
    replies = {r.request_id: r for r in stub.StreamSearch(iter(requests))}
    assert len(replies["good"].response.hits) == 5 and replies["good"].error_code == 0
    assert replies["bad"].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "dim 128" in replies["bad"].error_message
    assert replies["missing"].error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_a_stream_message_may_carry_many_queries_and_is_answered_as_batch_search(stub, vectors) -> None:
    _, queries, _, _ = vectors
    batch = batch_search(stub, VECTORS, queries[:30])
    requests = [
        search_pb2.SearchRequest(collection=VECTORS, vectors_f32=codec.pack(queries[:10]), k=10, request_id="a"),
        search_pb2.SearchRequest(collection=VECTORS, vector_f32=codec.pack(queries[10]), k=10, request_id="one"),
        search_pb2.SearchRequest(collection=VECTORS, vectors_f32=codec.pack(queries[10:30]), k=10, request_id="b"),
        search_pb2.SearchRequest(collection=VECTORS, vectors_f32=codec.pack(queries[:2]), k=5, request_id="explain",
                                 explain=True),
        search_pb2.SearchRequest(collection=VECTORS, vectors_f32=codec.pack(queries[:2]), k=5, request_id="both",
                                 vector_f32=codec.pack(queries[0])),
        search_pb2.SearchRequest(collection=VECTORS, vectors_f32=b"\0" * 12, k=5, request_id="ragged"),
        search_pb2.SearchRequest(collection=VECTORS, vectors_f32=codec.pack(np.zeros((1001, 128), np.float32)), k=1000,
                                 request_id="many"),
    ]
    replies = {r.request_id: r for r in stub.StreamSearch(iter(requests))}
    assert [ids_of(r) for r in replies["a"].batch.results] == [ids_of(r) for r in batch.results[:10]]
    assert [ids_of(r) for r in replies["b"].batch.results] == [ids_of(r) for r in batch.results[10:]]
    assert not replies["a"].HasField("response") and not replies["one"].HasField("batch")
    assert ids_of(replies["one"].response) == ids_of(batch.results[10])
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    for rid, words in (("explain", "explain"), ("both", "not both"), ("ragged", "vectors"), ("many", "1001 queries x k 1000")):
        assert replies[rid].error_code == invalid and words in replies[rid].error_message, replies[rid]
    with pytest.raises(grpc.RpcError) as err:  # unary Search takes one query
        stub.Search(search_pb2.SearchRequest(collection=VECTORS, vectors_f32=codec.pack(queries[:2]), k=5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "BatchSearch" in err.value.details()


def test_upserted_vector_is_its_own_top_hit_at_once(stub, vectors) -> None:
    rng = np.random.default_rng(11)
    for round_ in range(5):
        vector = rng.uniform(0, 255, 128).astype(np.float32)
        stub.Upsert(search_pb2.UpsertRequest(collection=VECTORS, items=[
            search_pb2.Item(id=f"fresh-{round_}", vector_f32=codec.pack(vector), payload=b"fresh")
        ]))
        reply = stub.Search(search_pb2.SearchRequest(collection=VECTORS, vector_f32=codec.pack(vector), k=3, include_payload=True))
        assert reply.hits[0].id == f"fresh-{round_}" and reply.hits[0].score == pytest.approx(0.0, abs=1e-3)
        assert reply.hits[0].payload == b"fresh"


def test_delete_and_overwrite_are_exact(stub, vectors) -> None:
    base, queries, gt, _ = vectors
    before = stub.DescribeCollection(search_pb2.DescribeCollectionRequest(name=VECTORS)).total_vectors
    victims = [str(int(gt[i, 0])) for i in range(5)]
    assert stub.Delete(search_pb2.DeleteRequest(collection=VECTORS, ids=victims + ["never-existed"])).deleted == 5
    for i in range(5):
        reply = stub.Search(search_pb2.SearchRequest(collection=VECTORS, vector_f32=codec.pack(queries[i]), k=100))
        assert victims[i] not in [h.id for h in reply.hits]
    assert stub.Get(search_pb2.GetRequest(collection=VECTORS, ids=victims)).items == []

    target = str(int(gt[10, 0]))
    moved = np.full(128, 300.0, np.float32)
    stub.Upsert(search_pb2.UpsertRequest(collection=VECTORS, items=[search_pb2.Item(id=target, vector_f32=codec.pack(moved))]))
    old = stub.Search(search_pb2.SearchRequest(collection=VECTORS, vector_f32=codec.pack(base[int(target)]), k=100))
    assert target not in [h.id for h in old.hits]
    new = stub.Search(search_pb2.SearchRequest(collection=VECTORS, vector_f32=codec.pack(moved), k=1))
    assert new.hits[0].id == target
    (item,) = stub.Get(search_pb2.GetRequest(collection=VECTORS, ids=[target])).items
    assert np.array_equal(np.frombuffer(item.vector_f32, np.float32), moved)
    described = stub.DescribeCollection(search_pb2.DescribeCollectionRequest(name=VECTORS))
    assert described.total_vectors == before - 5  # 5 deleted; the overwrite replaced one in place


def test_four_shards_answer_exactly_like_one(stub) -> None:
    base, queries, _ = load_dataset("l2-1k-784")
    create(stub, "fmnist", base.shape[1])
    ids = [str(i) for i in range(len(base))]
    upsert(stub, "fmnist", ids, base, batch=250)
    with LocalCluster(shards=1) as single:
        from tests.integration.conftest import connect

        one = connect(single)
        create(one, "fmnist", base.shape[1])
        upsert(one, "fmnist", ids, base, batch=250)
        four_results = batch_search(stub, "fmnist", queries[:100], k=10).results
        one_results = batch_search(one, "fmnist", queries[:100], k=10).results
    for a, b in zip(four_results, one_results):
        assert np.allclose([h.score for h in a.hits], [h.score for h in b.hits], rtol=1e-5)
        # identical up to ties: ids may only differ where scores are equal
        differing = {h.id for h in a.hits} ^ {h.id for h in b.hits}
        if differing:
            tied = {h.id for h in (*a.hits, *b.hits) if h.score == a.hits[-1].score}
            assert differing <= tied


def test_list_describe_and_drop(stub) -> None:
    create(stub, "scratch", 4, metric=search_pb2.METRIC_INNER_PRODUCT)
    names = [c.name for c in stub.ListCollections(search_pb2.ListCollectionsRequest()).collections]
    assert "scratch" in names
    info = stub.DescribeCollection(search_pb2.DescribeCollectionRequest(name="scratch"))
    assert info.collection.metric == search_pb2.METRIC_INNER_PRODUCT and len(info.shards) == 4
    assert all(not s.trained and s.index.train_threshold > 0 for s in info.shards)
    stub.DropCollection(search_pb2.DropCollectionRequest(name="scratch"))
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(search_pb2.SearchRequest(collection="scratch", vector=[1, 0, 0, 0], k=1))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_every_server_has_health_and_reflection(cluster) -> None:
    addresses = [cluster.address] + [p.address for p in cluster.shard_procs]
    expected = ["shardsearch.v1.SearchService"] + ["shardsearch.v1.ShardService"] * len(cluster.shard_procs)
    for address, service in zip(addresses, expected):
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            reply = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
            names = {s.name for s in reply.list_services_response.service}
            assert {service, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_metrics_endpoint_counts_requests_by_method_and_code(cluster, stub, vectors) -> None:
    stub.Search(search_pb2.SearchRequest(collection=VECTORS, vector_f32=codec.pack(vectors[1][0]), k=1))
    with pytest.raises(grpc.RpcError):
        stub.Search(search_pb2.SearchRequest(collection=VECTORS, vector=[1.0], k=1))
    text = metrics_text(cluster.coordinator.metrics_port)
    assert 'shardsearch_coordinator_requests_total{code="OK",method="Search"}' in text
    assert 'shardsearch_coordinator_requests_total{code="INVALID_ARGUMENT",method="Search"}' in text
    assert "shardsearch_coordinator_request_duration_seconds_bucket" in text
    assert 'shardsearch_coordinator_shard_request_duration_seconds_count{method="Search",shard="shard-0"}' in text
    shard_text = metrics_text(cluster.shard_procs[0].metrics_port)
    assert 'shardsearch_shard_vectors{collection="vectors"}' in shard_text


def test_every_server_exports_its_build_and_process_metrics(cluster) -> None:
    for proc in (cluster.coordinator, cluster.shard_procs[0]):
        text = metrics_text(proc.metrics_port)
        component = "coordinator" if proc is cluster.coordinator else "shard"
        assert re.search(rf'^shardsearch_build_info{{[^}}]*component="{component}"[^}}]*version="{__version__}"'
                         r'[^}]*} 1\.0$', text, re.M), text[:2000]
        resident = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)
        assert resident and float(resident.group(1)) > 10 * 2**20
        assert re.search(r"^process_cpu_seconds_total \S+$", text, re.M)
        assert "python_gc_collections_total" in text


def test_a_shard_says_at_start_which_faiss_build_it_loaded(cluster) -> None:
    log = cluster.shard_procs[0].log_path.read_text()
    line = next(line for line in log.splitlines() if "serving gRPC" in line)
    assert re.search(r"FAISS \d+\.\d+\.\d+ \(faiss-(cpu|gpu)[^)]*\); \d+ GPU\(s\) visible; searching on the (CPU|GPU)",
                     line), line
