"""Overload through real processes: past its adaptive cap the coordinator refuses searches itself, at once, with
RESOURCE_EXHAUSTED and a message, serves every search it admitted, and cuts the cap once they came back late.

A stopped shard (SIGSTOP) plays the saturated shard tier: admitted searches pile up in flight behind it.
"""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import numpy as np
import pytest

from shardsearch import codec
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import search_pb2
from tests.integration.conftest import connect, create, upsert, wait_until
from tests.integration.test_batching import value

NAME = "flooded"
DIM = 8
TARGET_MS = 100
INITIAL_CAP = 256  # coordinator/admission.py INITIAL_LIMIT
FLOOD = INITIAL_CAP + 44


def test_a_flood_past_the_cap_is_refused_at_once_and_every_admitted_search_is_served() -> None:
    # Queue-time shedding off: only the adaptive cap refuses here (test_batching covers the queue limits). gRPC
    # core's own pending-call limit off too: the flood arrives at once, and on a busy machine more than
    # max_pending_rpcs calls can wait for the event loop, which core would refuse as CANCELLED before the cap sees them.
    args = ["--search-latency-target-ms", str(TARGET_MS), "--batch-max-queue-time-ms", "0", "--cache", "off",
            "--max-pending-rpcs", "0"]
    with LocalCluster(shards=2, metrics=True, coordinator_args=args) as cluster:
        coordinator = cluster.coordinator
        assert coordinator is not None
        stub = connect(cluster)
        create(stub, NAME, DIM)
        vectors = np.random.default_rng(9).standard_normal((100, DIM)).astype(np.float32)
        upsert(stub, NAME, [str(i) for i in range(100)], vectors)
        assert value(coordinator, "shardsearch_coordinator_search_concurrency_limit") == INITIAL_CAP

        cluster.shard_procs[1].signal(signal.SIGSTOP)
        try:
            futures = [
                stub.Search.future(search_pb2.SearchRequest(
                    collection=NAME, vector_f32=codec.pack(vectors[i % 100]), k=5), timeout=60)
                for i in range(FLOOD)
            ]
            wait_until(lambda: sum(f.done() for f in futures) >= FLOOD - INITIAL_CAP, "the refusals")
            time.sleep(0.3)  # a window in which nothing else may finish (a negative: there is no state to wait for)
            refused = [f for f in futures if f.done()]
            assert len(refused) == FLOOD - INITIAL_CAP
            for future in refused:
                assert future.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "adaptive limit" in future.details() and "retry with backoff" in future.details()
            assert value(coordinator, "shardsearch_coordinator_inflight_requests") >= INITIAL_CAP
        finally:
            cluster.shard_procs[1].signal(signal.SIGCONT)
        admitted = [f for f in futures if f not in refused]
        for future in admitted:
            assert len(future.result().hits) == 5
        assert value(coordinator, "shardsearch_coordinator_searches_shed_total") == FLOOD - INITIAL_CAP
        # They all came back later than the target: the cap was cut (by a tenth, at most once per target interval,
        # so once or a few times, however the answers spread out in time).
        assert value(coordinator, "shardsearch_coordinator_search_concurrency_limit") <= INITIAL_CAP * 0.9
        # And the coordinator serves at once afterwards.
        assert len(stub.Search(search_pb2.SearchRequest(
            collection=NAME, vector_f32=codec.pack(vectors[0]), k=5), timeout=10).hits) == 5


async def test_a_stream_client_that_never_reads_cannot_pile_answers_up_in_the_coordinator() -> None:
    """StreamSearch answers k=1000 hits each; the client writes thousands of requests and reads nothing. The
    coordinator searches at most its window plus what gRPC's buffers took, then flow control stops the client."""
    from shardsearch.v1 import search_pb2_grpc

    with LocalCluster(shards=1, metrics=True) as cluster:
        stub = connect(cluster)
        create(stub, "big", 8)
        vectors = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
        upsert(stub, "big", [f"id{i}" for i in range(2000)], vectors)
        async with grpc.aio.insecure_channel(cluster.address) as channel:
            call = search_pb2_grpc.SearchServiceStub(channel).StreamSearch()
            request = search_pb2.SearchRequest(collection="big", vector_f32=codec.pack(vectors[0]), k=1000,
                                               skip_cache=True)
            written = 0
            try:
                for _ in range(20_000):
                    await asyncio.wait_for(call.write(request), 2.0)
                    written += 1
            except asyncio.TimeoutError:
                pass  # the coordinator stopped reading: flow control holds the client's writes
            counts = []
            for _ in range(3):
                await asyncio.sleep(1.0)
                counts.append(value(cluster.coordinator, "shardsearch_coordinator_requests_total",
                                    method="StreamSearch", code="OK"))
            call.cancel()
        print(f"the client wrote {written} requests; the coordinator answered {counts} of them (after 1, 2, 3 s)")
        assert counts[0] == counts[-1] <= 1000 < written  # stalled: window + what gRPC's buffers hold


def test_an_answer_whose_payloads_exceed_the_limit_is_refused_naming_it() -> None:
    with LocalCluster(shards=1) as cluster:
        stub = connect(cluster)
        create(stub, "heavy", 8)
        vectors = np.random.default_rng(0).standard_normal((600, 8)).astype(np.float32)
        blob = b"x" * 60_000
        for lo in range(0, 600, 100):
            stub.Upsert(search_pb2.UpsertRequest(collection="heavy", items=[
                search_pb2.Item(id=f"id{i}", vector_f32=codec.pack(vectors[i]), payload=blob)
                for i in range(lo, lo + 100)]), timeout=30)
        query = search_pb2.SearchRequest(collection="heavy", vector_f32=codec.pack(vectors[0]), k=600,
                                         include_payload=True, skip_cache=True)
        for _ in range(2):  # over the search stream, then again (a refusal is no reason to drop the stream)
            with pytest.raises(grpc.RpcError) as failure:
                stub.Search(query, timeout=30)
            assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_answer_payload_bytes" in failure.value.details(), failure.value.details()
        query.k = 10
        assert len(stub.Search(query, timeout=30).hits) == 10


def test_deletes_of_ids_that_never_existed_stop_at_the_marker_limit_naming_it() -> None:
    with LocalCluster(shards=1, shard_args=["--max-delete-markers", "1000"]) as cluster:
        stub = connect(cluster)
        create(stub, "ghosts", 8)
        for lo in range(0, 1000, 250):
            stub.Delete(search_pb2.DeleteRequest(collection="ghosts", ids=[f"ghost{i}" for i in range(lo, lo + 250)]))
        with pytest.raises(grpc.RpcError) as failure:
            stub.Delete(search_pb2.DeleteRequest(collection="ghosts", ids=["one-more"]))
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max-delete-markers 1000" in failure.value.details()
        upsert(stub, "ghosts", ["real"], np.ones((1, 8), np.float32))  # writes and reads go on
        assert len(stub.Get(search_pb2.GetRequest(collection="ghosts", ids=["real"])).items) == 1


def test_overwriting_the_same_ids_keeps_shard_memory_flat() -> None:
    """1,000 ids overwritten 150 times below the training threshold: 150,000 rows written, 1,000 live. The dead
    rows are reclaimed (relabelled), so the shard's resident memory ends where it was after the first round."""
    from tests.integration.test_batching import value

    dim = 256
    with LocalCluster(shards=1, metrics=True) as cluster:
        stub = connect(cluster)
        create(stub, "churn", dim, train_threshold=1_000_000)
        rng = np.random.default_rng(0)
        ids = [f"id{i}" for i in range(1000)]
        shard = cluster.shard_procs[0]
        rss = []
        for round_ in range(150):
            vectors = rng.standard_normal((1000, dim)).astype(np.float32)
            upsert(stub, "churn", ids, vectors)
            if round_ in (10, 149):
                wait_until(lambda: "relabelled" in shard.log_path.read_text() or round_ < 20, "a relabel")
                rss.append(value(shard, "process_resident_memory_bytes"))
        hits = stub.Search(search_pb2.SearchRequest(collection="churn", vector_f32=codec.pack(vectors[3]), k=1,
                                                    skip_cache=True), timeout=10)
        assert hits.hits[0].id == "id3"
        grown = (rss[1] - rss[0]) / 2**20
        print(f"shard RSS after 10 rounds {rss[0] / 2**20:.0f} MiB, after 150 {rss[1] / 2**20:.0f} MiB "
              f"({grown:+.0f} MiB; the rows written take {150_000 * dim * 4 / 2**20:.0f} MiB)")
        assert grown < 40
