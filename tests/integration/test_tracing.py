"""OpenTelemetry tracing through real processes: a caller's traceparent makes one trace of the coordinator's
Search span, a child span per shard call, and each shard's server span (the SDK's console exporter writes them to
the processes' logs); with no OTEL_* variable set there are no spans at all."""

from __future__ import annotations

import json
import secrets
from typing import Any

import grpc
import numpy as np

from shardsearch import codec
from shardsearch.local import LocalCluster
from shardsearch.v1 import search_pb2, search_pb2_grpc
from tests.integration.conftest import create, upsert

DIM = 8


def spans(text: str) -> list[dict[str, Any]]:
    """The JSON span objects the console exporter printed among the log lines."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while (at := text.find("{\n", at)) >= 0:
        try:
            obj, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            at += 1
            continue
        if isinstance(obj, dict) and "context" in obj:
            found.append(obj)
        at = end
    return found


def test_one_search_is_one_trace_from_the_callers_span_to_each_shard() -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    with LocalCluster(shards=2, env={"OTEL_TRACES_EXPORTER": "console"}) as cluster:
        stub = search_pb2_grpc.SearchServiceStub(grpc.insecure_channel(cluster.address))
        create(stub, "t", DIM)
        vectors = np.random.default_rng(0).standard_normal((50, DIM)).astype(np.float32)
        upsert(stub, "t", [str(i) for i in range(50)], vectors)
        stub.Search(search_pb2.SearchRequest(collection="t", vector_f32=codec.pack(vectors[3]), k=3, skip_cache=True),
                    metadata=(("traceparent", f"00-{trace_id}-{parent}-01"),), timeout=10)
        logs = {p.name: p.log_path.read_text() for p in cluster.coordinator_procs + cluster.shard_procs}
    ours = {name: [s for s in spans(text) if s["context"]["trace_id"] == f"0x{trace_id}"] for name, text in logs.items()}
    (search,) = [s for s in ours["coordinator"] if s["name"] == "/shardsearch.v1.SearchService/Search"]
    assert search["kind"] == "SpanKind.SERVER" and search["parent_id"] == f"0x{parent}"
    calls = [s for s in ours["coordinator"] if s["kind"] == "SpanKind.CLIENT"]
    assert len(calls) == 2 and all(c["parent_id"] == search["context"]["span_id"] for c in calls)
    assert all(c["name"] == "/shardsearch.v1.ShardService/Search" for c in calls)
    for shard in ("shard-0", "shard-1"):
        (served,) = ours[shard]
        assert served["kind"] == "SpanKind.SERVER" and served["parent_id"] in {c["context"]["span_id"] for c in calls}
    assert not any("grpc.health" in s["name"] for text in logs.values() for s in spans(text))


def test_no_otel_variables_no_spans() -> None:
    with LocalCluster(shards=1) as cluster:
        stub = search_pb2_grpc.SearchServiceStub(grpc.insecure_channel(cluster.address))
        create(stub, "quiet", DIM)
        stub.ListCollections(search_pb2.ListCollectionsRequest(), timeout=10)
        logs = "".join(p.log_path.read_text() for p in cluster.coordinator_procs + cluster.shard_procs)
    assert not spans(logs) and "tracing on" not in logs
