"""Request ids: passed along in `x-request-id` metadata and present in the JSON logs of every hop.

Real processes logging JSON lines with every RPC in the access log; the test follows one request from the client
through the coordinator to the shard (and the shard's batch) by reading the processes' log files.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator

import grpc
import numpy as np
import pytest

from shardsearch import codec
from shardsearch.tools.local import LocalCluster, Process
from shardsearch.v1 import search_pb2, search_pb2_grpc
from tests.integration.conftest import create, running_cluster

DIM = 8
JSON_LOGS = ("--log-format", "json", "--access-log", "all")


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    with running_cluster(request, shards=2, durable=False, shard_args=JSON_LOGS, coordinator_args=JSON_LOGS) as running:
        yield running


@pytest.fixture(scope="module")
def stub(cluster: LocalCluster) -> search_pb2_grpc.SearchServiceStub:
    stub = search_pb2_grpc.SearchServiceStub(grpc.insecure_channel(cluster.address))
    create(stub, "traced", DIM)
    stub.Upsert(search_pb2.UpsertRequest(collection="traced", items=[  # something to find, for any test alone
        search_pb2.Item(id=f"seed-{i}", vector_f32=codec.pack(v)) for i, v in enumerate(vectors(40, 0))]))
    return stub


def records(proc: Process) -> list[dict[str, Any]]:
    """Every line a process logged, parsed: each must be one JSON object."""
    lines = [line for line in proc.log_path.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(record, dict) for record in parsed)
    return parsed


def wait_for(find: Callable[[], list[dict[str, Any]]], what: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while not (found := find()):
        assert time.monotonic() < deadline, f"no log record for {what}"
        time.sleep(0.05)
    return found


def access(proc: Process, method: str, request_id: str) -> list[dict[str, Any]]:
    """Access lines of `method` whose request ids (a batch's are comma-joined) include `request_id`."""
    return [
        r for r in records(proc)
        if r.get("logger") == "shardsearch.access" and r.get("method") == method
        and request_id in r.get("request_id", "").split(",")
    ]


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def test_every_line_is_json_with_the_standard_fields(cluster: LocalCluster, stub: Any) -> None:
    for proc in (cluster.coordinator, *cluster.shard_procs):
        assert proc is not None
        lines = records(proc)
        assert lines, f"{proc.name} logged nothing"
        for record in lines:
            assert {"timestamp", "level", "logger", "message", "process", "request_id"} <= record.keys(), record


def test_a_write_is_traced_to_the_shards_that_own_it(cluster: LocalCluster, stub: Any) -> None:
    ids = [f"item-{i}" for i in range(40)]
    items = [search_pb2.Item(id=i, vector_f32=codec.pack(v)) for i, v in zip(ids, vectors(40, 1))]
    _, call = stub.Upsert.with_call(
        search_pb2.UpsertRequest(collection="traced", items=items), metadata=(("x-request-id", "write-7f3a"),)
    )
    assert ("x-request-id", "write-7f3a") in call.trailing_metadata()
    (line,) = wait_for(lambda: access(cluster.coordinator, "Upsert", "write-7f3a"), "the coordinator's Upsert")
    assert line["code"] == "OK" and line["level"] == "INFO" and line["duration_seconds"] > 0
    # 40 ids over 2 shards: both own some, and each logs the write under the caller's id.
    for proc in cluster.shard_procs:
        (shard_line,) = wait_for(lambda: access(proc, "Upsert", "write-7f3a"), f"{proc.name}'s Upsert")
        assert shard_line["code"] == "OK"


def test_a_search_is_traced_into_each_shards_batch(cluster: LocalCluster, stub: Any) -> None:
    query = vectors(1, 2)[0]
    request = search_pb2.SearchRequest(collection="traced", vector_f32=codec.pack(query), k=5, skip_cache=True)
    response, call = stub.Search.with_call(request, metadata=(("x-request-id", "search-91c2"),))
    assert len(response.hits) == 5
    assert ("x-request-id", "search-91c2") in call.trailing_metadata()
    wait_for(lambda: access(cluster.coordinator, "Search", "search-91c2"), "the coordinator's Search")
    for proc in cluster.shard_procs:
        wait_for(lambda: access(proc, "Search", "search-91c2"), f"{proc.name}'s Search")


def test_a_call_without_an_id_gets_one_and_every_hop_logs_it(cluster: LocalCluster, stub: Any) -> None:
    queries = vectors(3, 3)
    _, call = stub.BatchSearch.with_call(search_pb2.BatchSearchRequest(
        collection="traced", vectors_f32=codec.pack(queries), k=3, skip_cache=True
    ))
    (request_id,) = [value for key, value in call.trailing_metadata() if key == "x-request-id"]
    assert len(request_id) == 16 and int(request_id, 16) >= 0
    wait_for(lambda: access(cluster.coordinator, "BatchSearch", request_id), "the coordinator's BatchSearch")
    for proc in cluster.shard_procs:
        wait_for(lambda: access(proc, "Search", request_id), f"{proc.name}'s Search")


def test_a_failed_call_is_logged_under_its_id_with_its_status(cluster: LocalCluster, stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        stub.Search(search_pb2.SearchRequest(collection="no-such", vector=[0.0] * DIM, k=3),
                    metadata=(("x-request-id", "missing-1"),))
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert ("x-request-id", "missing-1") in failure.value.trailing_metadata()
    (line,) = wait_for(lambda: access(cluster.coordinator, "Search", "missing-1"), "the failed Search")
    assert line["code"] == "NOT_FOUND"


def test_stream_requests_are_traced_by_stream_and_request(cluster: LocalCluster, stub: Any) -> None:
    queries = vectors(2, 4)
    requests = [
        search_pb2.SearchRequest(collection="traced", vector_f32=codec.pack(q), k=3, skip_cache=True, request_id=f"q{i}")
        for i, q in enumerate(queries)
    ]
    answers = list(stub.StreamSearch(iter(requests), metadata=(("x-request-id", "stream-5"),)))
    assert sorted(a.request_id for a in answers) == ["q0", "q1"] and all(len(a.response.hits) == 3 for a in answers)
    for name in ("q0", "q1"):
        wait_for(lambda: access(cluster.coordinator, "StreamSearch", f"stream-5/{name}"), f"stream item {name}")
        for proc in cluster.shard_procs:
            wait_for(lambda: access(proc, "Search", f"stream-5/{name}"), f"{proc.name}'s Search for {name}")


def test_an_unusable_id_is_replaced(cluster: LocalCluster, stub: Any) -> None:
    _, call = stub.ListCollections.with_call(search_pb2.ListCollectionsRequest(),
                                             metadata=(("x-request-id", "x" * 5000),))
    (request_id,) = [value for key, value in call.trailing_metadata() if key == "x-request-id"]
    assert request_id != "x" * 5000 and len(request_id) == 16
