"""OpenTelemetry tracing through real processes: a caller's traceparent makes one trace of the coordinator's
Search span, its batch, a child span per shard call, and each shard's server span with its batch and FAISS call
(the SDK's console exporter writes them to the processes' logs); requests batched together each keep a trace of
their own; with no OTEL_* variable set there are no spans at all."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import grpc
import numpy as np

from shardsearch import codec
from shardsearch.tools.local import LocalCluster
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
    (batch,) = [s for s in ours["coordinator"] if s["name"] == "coordinator batcher batch"]
    assert batch["parent_id"] == search["context"]["span_id"] and batch["attributes"]["batch.requests"] == 1
    calls = [s for s in ours["coordinator"] if s["kind"] == "SpanKind.CLIENT"]
    assert len(calls) == 2 and all(c["parent_id"] == batch["context"]["span_id"] for c in calls)
    assert all(c["name"] == "/shardsearch.v1.ShardService/Search" for c in calls)
    for shard in ("shard-0", "shard-1"):
        by_name = {s["name"]: s for s in ours[shard]}
        assert len(by_name) == len(ours[shard]) == 3, sorted(by_name)
        served = by_name["/shardsearch.v1.ShardService/Search"]
        assert served["kind"] == "SpanKind.SERVER" and served["parent_id"] in {c["context"]["span_id"] for c in calls}
        assert by_name["shard batcher batch"]["parent_id"] == served["context"]["span_id"]
        faiss = by_name["faiss"]
        assert faiss["parent_id"] == by_name["shard batcher batch"]["context"]["span_id"]
        assert faiss["attributes"]["faiss.rows"] == 1 and faiss["attributes"]["faiss.filtered"] is False
    assert not any("grpc.health" in s["name"] for text in logs.values() for s in spans(text))


def test_searches_batched_together_each_keep_their_trace_and_the_batch_links_them() -> None:
    """32 searches at once: the coordinator batches those that arrive while one runs. Each trace holds its Search
    span and one "batch" span; a queued one also its wait; the real batch (with the shard calls) lives in one trace
    and links to the others, whose own "batch" span links back to it."""
    traces = [secrets.token_hex(16) for _ in range(32)]
    with LocalCluster(shards=1, env={"OTEL_TRACES_EXPORTER": "console"}) as cluster:
        stub = search_pb2_grpc.SearchServiceStub(grpc.insecure_channel(cluster.address))
        create(stub, "b", DIM)
        vectors = np.random.default_rng(1).standard_normal((64, DIM)).astype(np.float32)
        upsert(stub, "b", [str(i) for i in range(64)], vectors)

        async def burst() -> None:
            async with grpc.aio.insecure_channel(cluster.address) as channel:
                aio = search_pb2_grpc.SearchServiceStub(channel)
                await asyncio.gather(*(aio.Search(
                    search_pb2.SearchRequest(collection="b", vector_f32=codec.pack(vectors[i]), k=3, skip_cache=True),
                    metadata=(("traceparent", f"00-{trace}-{secrets.token_hex(8)}-01"),), timeout=10)
                    for i, trace in enumerate(traces)))

        asyncio.run(burst())
        coordinator = spans(cluster.coordinator_procs[0].log_path.read_text())
    by_id = {s["context"]["span_id"]: s for s in coordinator}
    queued = 0
    for trace in traces:
        mine = [s for s in coordinator if s["context"]["trace_id"] == f"0x{trace}"]
        (search,) = [s for s in mine if s["name"] == "/shardsearch.v1.SearchService/Search"]
        (batch,) = [s for s in mine if s["name"] == "coordinator batcher batch"]
        assert batch["parent_id"] == search["context"]["span_id"]
        queue = [s for s in mine if s["name"] == "coordinator batcher queue"]
        queued += len(queue)
        assert all(q["parent_id"] == search["context"]["span_id"] for q in queue)
        calls = [s for s in mine if s["kind"] == "SpanKind.CLIENT"]
        if calls:  # this trace holds the batch that ran: its shard call is the batch's child
            assert all(c["parent_id"] == batch["context"]["span_id"] for c in calls)
            assert len(batch["links"]) == batch["attributes"]["batch.requests"] - 1
        else:  # answered by a batch in another trace: linked both ways
            (link,) = batch["links"]
            ran = by_id[link["context"]["span_id"]]
            assert ran["name"] == "coordinator batcher batch" and ran["context"]["trace_id"] == link["context"]["trace_id"]
            assert f"0x{trace}" in {other["context"]["trace_id"] for other in ran["links"]}
    assert queued >= 1  # 32 arrivals within one search's time: at least one waited


def test_no_otel_variables_no_spans() -> None:
    with LocalCluster(shards=1) as cluster:
        stub = search_pb2_grpc.SearchServiceStub(grpc.insecure_channel(cluster.address))
        create(stub, "quiet", DIM)
        stub.ListCollections(search_pb2.ListCollectionsRequest(), timeout=10)
        logs = "".join(p.log_path.read_text() for p in cluster.coordinator_procs + cluster.shard_procs)
    assert not spans(logs) and "tracing on" not in logs
