"""Searches over one long-lived ShardService.SearchStream per replica, against real shard processes: answers matched
by tag, each search's own status and deadline, a stream that dies with its shard, and unary calls for a shard that
does not know the stream (an older version during a rolling upgrade)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from shardsearch import codec
from shardsearch.coordinator.shards import ShardMetrics, ShardPool
from shardsearch.coordinator.streams import CORE_WRITE_ERROR, SearchStream, StreamFailed
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import search_pb2, shard_pb2, shard_pb2_grpc
from tests.integration.conftest import create, upsert, wait_until

DIM = 16


@pytest.fixture(scope="module")
def shard() -> Iterator[tuple[LocalCluster, np.ndarray]]:
    with LocalCluster(shards=1) as cluster:
        vectors = np.random.default_rng(4).standard_normal((500, DIM)).astype(np.float32)
        channel = grpc.insecure_channel(cluster.address)
        from shardsearch.v1 import search_pb2_grpc

        stub = search_pb2_grpc.SearchServiceStub(channel)
        create(stub, "s", DIM)
        upsert(stub, "s", [str(i) for i in range(len(vectors))], vectors)
        channel.close()
        yield cluster, vectors


def request(vectors: np.ndarray, k: int = 5, collection: str = "s") -> shard_pb2.ShardSearchRequest:
    return shard_pb2.ShardSearchRequest(collection=collection, queries_f32=codec.pack(vectors), n=len(vectors), k=k)


async def test_concurrent_searches_on_one_stream_get_their_own_answers(shard) -> None:
    cluster, vectors = shard
    async with grpc.aio.insecure_channel(cluster.shard_procs[0].address) as channel:
        stub = shard_pb2_grpc.ShardServiceStub(channel)
        stream = SearchStream(stub)
        answers = await asyncio.gather(*(stream.search(request(vectors[i : i + 1], k=1 + i % 7), 10) for i in range(40)))
        for i, answer in enumerate(answers):
            assert answer.ids[0] == str(i) and answer.k == 1 + i % 7  # each query finds itself first
        unary = await stub.Search(request(vectors[3:6]), timeout=10)
        streamed = await stream.search(request(vectors[3:6]), 10)
        assert list(streamed.ids) == list(unary.ids) and streamed.scores_f32 == unary.scores_f32
        await stream.close()


async def test_each_search_ends_with_its_own_status_and_the_stream_carries_on(shard) -> None:
    cluster, vectors = shard
    async with grpc.aio.insecure_channel(cluster.shard_procs[0].address) as channel:
        stream = SearchStream(shard_pb2_grpc.ShardServiceStub(channel))
        with pytest.raises(StreamFailed) as missing:
            await stream.search(request(vectors[:1], collection="nope"), 10)
        assert missing.value.code == grpc.StatusCode.NOT_FOUND and "'nope' does not exist" in missing.value.details
        bad = request(vectors[:1])
        bad.n = 2  # says two queries, holds one
        with pytest.raises(StreamFailed) as invalid:
            await stream.search(bad, 10)
        assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT and "n says 2" in invalid.value.details
        assert (await stream.search(request(vectors[:1]), 10)).ids[0] == "0"
        await stream.close()


async def test_a_search_past_its_deadline_fails_alone_and_a_late_answer_is_dropped(shard) -> None:
    cluster, vectors = shard
    proc = cluster.shard_procs[0]
    async with grpc.aio.insecure_channel(proc.address) as channel:
        stream = SearchStream(shard_pb2_grpc.ShardServiceStub(channel))
        assert (await stream.search(request(vectors[:1]), 10)).ids[0] == "0"  # the stream is open
        proc.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StreamFailed) as late:
                await stream.search(request(vectors[1:2]), 0.3)
            assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 2
        finally:
            proc.signal(signal.SIGCONT)
        assert (await stream.search(request(vectors[2:3]), 10)).ids[0] == "2"  # same stream; the late answer dropped
        await stream.close()


async def test_a_stream_whose_shard_died_fails_over_as_unavailable_and_reopens_after_a_restart(shard) -> None:
    cluster, vectors = shard
    pool = ShardPool([("shard-0", [cluster.shard_procs[0].address])], ShardMetrics(CollectorRegistry()))
    try:
        target = pool.shards[0]
        first = await pool.call(target, "Search", request(vectors[:1]), 10)
        assert first.ok and first.response.ids[0] == "0"
        assert target.replicas[0].stream is not None  # searches went over the stream
        cluster.shard_procs[0].popen.kill()  # type: ignore[union-attr]
        cluster.shard_procs[0].popen.wait()  # type: ignore[union-attr]
        dead = await pool.call(target, "Search", request(vectors[:1]), 2)
        assert not dead.ok and dead.error.code == grpc.StatusCode.UNAVAILABLE  # retryable: fail-over would go on
        cluster.restart_shard(0)
        address = cluster.shard_procs[0].address
        if address != target.replicas[0].address:  # a restarted shard may get a new port: follow it
            await pool.close()
            pool = ShardPool([("shard-0", [address])], ShardMetrics(CollectorRegistry()))
            target = pool.shards[0]

        async def answered() -> bool:
            outcome = await pool.call(target, "Search", request(vectors[5:6]), 5)
            return outcome.ok and outcome.response.ids[0] == "5"

        deadline = time.monotonic() + 30
        while not await answered():
            assert time.monotonic() < deadline, "the restarted shard never answered over a new stream"
            await asyncio.sleep(0.2)
    finally:
        await pool.close()


OLD_SHARD = '''
import asyncio, json, sys
import grpc
from shardsearch.v1 import shard_pb2, shard_pb2_grpc

class Old(shard_pb2_grpc.ShardServiceServicer):  # a shard from before SearchStream: unary Search only
    async def Search(self, request, context):
        return shard_pb2.ShardSearchResponse(n=request.n, k=request.k, ids=["old"] * (request.n * request.k),
                                             scores_f32=bytes(4 * request.n * request.k))

async def main():
    server = grpc.aio.server()
    shard_pb2_grpc.add_ShardServiceServicer_to_server(Old(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    open(sys.argv[1], "w").write(json.dumps({"grpc": port}))
    await server.wait_for_termination()

asyncio.run(main())
'''





class _CallThatLostItsStatus:
    """What grpc.aio leaves when a write meets a call the server had already ended (an older shard's UNIMPLEMENTED):
    the write fails and the call's status reads INTERNAL "Internal error from Core", for the reader as well."""

    def __init__(self) -> None:
        self.lost = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                         details=CORE_WRITE_ERROR)

    async def write(self, message: object) -> None:
        raise asyncio.InvalidStateError("RPC already finished.")

    def __aiter__(self) -> "_CallThatLostItsStatus":
        return self

    async def __anext__(self) -> object:
        raise self.lost

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INTERNAL

    async def details(self) -> str:
        return CORE_WRITE_ERROR

    def cancel(self) -> bool:
        return True


class _StubWhoseStreamLosesItsStatus:
    def SearchStream(self) -> _CallThatLostItsStatus:  # noqa: N802 (the stub's method name)
        return _CallThatLostItsStatus()


@contextlib.contextmanager
def old_shard() -> Iterator[str]:
    port_file = Path(tempfile.mkdtemp()) / "port.json"
    proc = subprocess.Popen([sys.executable, "-c", OLD_SHARD, str(port_file)])
    try:
        wait_until(port_file.exists, "the old-version shard to start")
        yield f"127.0.0.1:{json.loads(port_file.read_text())['grpc']}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_shard_without_search_stream_is_searched_with_unary_calls() -> None:
    with old_shard() as address:
        pool = ShardPool([("shard-0", [address])], ShardMetrics(CollectorRegistry()))
        try:
            vector = np.zeros((1, DIM), np.float32)
            for _ in range(3):
                outcome = await pool.call(pool.shards[0], "Search", request(vector, k=2), 10)
                assert outcome.ok and list(outcome.response.ids) == ["old", "old"], outcome.error
            stream = pool.shards[0].replicas[0].stream
            assert stream is not None and not stream.supported
        finally:
            await pool.close()

async def test_a_stream_whose_status_grpc_lost_is_answered_by_a_unary_call() -> None:
    with old_shard() as address:
        pool = ShardPool([("shard-0", [address])], ShardMetrics(CollectorRegistry()))
        try:
            replica = pool.shards[0].replicas[0]
            replica.stream = SearchStream(_StubWhoseStreamLosesItsStatus())  # type: ignore[arg-type]
            outcome = await pool.call(pool.shards[0], "Search", request(np.zeros((1, DIM), np.float32), k=2), 10)
            assert outcome.ok and list(outcome.response.ids) == ["old", "old"], outcome.error
        finally:
            await pool.close()


async def test_a_shard_that_did_not_know_search_stream_is_offered_one_again_later() -> None:
    with old_shard() as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stream = SearchStream(shard_pb2_grpc.ShardServiceStub(channel), unary_for_s=0.3)
            with pytest.raises(StreamFailed) as failed:
                await stream.search(request(np.zeros((1, DIM), np.float32)), 10)
            if failed.value.status_lost:  # the race above: the status is unknown, nothing is decided
                assert stream.supported
            else:
                assert failed.value.code == grpc.StatusCode.UNIMPLEMENTED and not stream.supported
                await asyncio.sleep(0.4)
                assert stream.supported  # a rolling upgrade may have replaced the shard meanwhile
            await stream.close()


def test_the_coordinator_searches_with_unary_calls_when_streams_are_off() -> None:
    with LocalCluster(shards=2, coordinator_args=["--no-search-streams"]) as cluster:
        from shardsearch.v1 import search_pb2_grpc

        with grpc.insecure_channel(cluster.address) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            vectors = np.random.default_rng(5).standard_normal((50, DIM)).astype(np.float32)
            create(stub, "u", DIM)
            upsert(stub, "u", [str(i) for i in range(50)], vectors)
            reply = stub.Search(search_pb2.SearchRequest(collection="u", vector_f32=codec.pack(vectors[7]), k=3), timeout=10)
            assert reply.hits[0].id == "7" and not reply.partial
