"""The result cache with a real redis-server shared by two coordinators: hits, never stale, opt-out, Redis failures."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Iterator

import grpc
import numpy as np
import pytest

from shardsearch import codec
from shardsearch.tools.local import LocalCluster, RedisServer
from shardsearch.v1 import search_pb2
from tests.integration.conftest import connect, create, wait_until
from tests.integration.test_batching import value

NAME = "cached"
DIM = 8
K = 5


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer().start()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def two(redis_server: RedisServer) -> Iterator[tuple[LocalCluster, list]]:
    """2 shards behind two coordinators (their own ports) sharing one Redis."""
    args = ["--redis-url", redis_server.url, "--cache-timeout-s", "0.2"]
    with LocalCluster(shards=2, coordinators=2, metrics=True, coordinator_args=args) as cluster:
        stubs = [connect(cluster)]
        stubs.append(connect_to(cluster.addresses[1]))
        yield cluster, stubs


def connect_to(address: str):
    from shardsearch.v1 import search_pb2_grpc

    return search_pb2_grpc.SearchServiceStub(grpc.insecure_channel(address))


class Model:
    """What the collection should hold: every acknowledged write applied, for exact expected answers."""

    def __init__(self) -> None:
        self.vectors: dict[str, np.ndarray] = {}

    def top(self, query: np.ndarray) -> list[str]:
        ids = sorted(self.vectors)
        matrix = np.stack([self.vectors[i] for i in ids])
        distances = ((matrix - query) ** 2).sum(1)
        return [ids[j] for j in np.lexsort((np.arange(len(ids)), distances))[:K]]


def upsert(stub, model: Model, items: dict[str, np.ndarray], collection: str = NAME) -> None:
    stub.Upsert(search_pb2.UpsertRequest(collection=collection, items=[
        search_pb2.Item(id=i, vector_f32=codec.pack(v)) for i, v in items.items()]), timeout=10)
    model.vectors.update(items)


def search(stub, query: np.ndarray, collection: str = NAME, **kwargs: object) -> search_pb2.SearchResponse:
    return stub.Search(search_pb2.SearchRequest(
        collection=collection, vector_f32=codec.pack(query), k=K, **kwargs), timeout=10)


def ids(response: search_pb2.SearchResponse) -> list[str]:
    return [h.id for h in response.hits]


def test_a_search_after_an_acknowledged_write_sees_it_through_either_coordinator(two) -> None:
    cluster, stubs = two
    rng = np.random.default_rng(11)
    create(stubs[0], NAME, DIM)
    model = Model()
    upsert(stubs[0], model, {f"v{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(300)})
    queries = rng.standard_normal((4, DIM)).astype(np.float32)
    cached_answers = 0
    for round_ in range(40):
        for stub in stubs:  # fill the cache through both coordinators, then hit it
            for query in queries:
                first, second = search(stub, query), search(stub, query)
                assert ids(first) == ids(second) == model.top(query)
                cached_answers += first.cached + second.cached
        writer = stubs[round_ % 2]
        query = queries[rng.integers(len(queries))]
        action = rng.integers(3)
        if action == 0:  # a new nearest neighbour of one query
            upsert(writer, model, {f"new{round_}": query + 0.001 * rng.standard_normal(DIM).astype(np.float32)})
        elif action == 1:  # move an existing top hit far away
            victim = model.top(query)[0]
            upsert(writer, model, {victim: (100 + rng.standard_normal(DIM)).astype(np.float32)})
        else:  # delete the current top hit
            victim = model.top(query)[0]
            writer.Delete(search_pb2.DeleteRequest(collection=NAME, ids=[victim]), timeout=10)
            del model.vectors[victim]
        reader = stubs[(round_ + 1) % 2]  # read through the *other* coordinator first
        for stub in (reader, writer):
            for q in queries:
                answer = search(stub, q)
                assert ids(answer) == model.top(q), f"stale answer after round {round_} ({answer.cached=})"
    assert cached_answers > 40 * 8  # the cache really served most repeats
    for proc in cluster.coordinator_procs:
        assert value(proc, "shardsearch_coordinator_cache_lookups_total", result="hit") > 0
        assert value(proc, "shardsearch_coordinator_cache_lookups_total", result="miss") > 0
        assert value(proc, "shardsearch_coordinator_cache_up") == 1


def test_skip_cache_neither_reads_nor_fills_the_cache(two) -> None:
    _, stubs = two
    name = "skip-cache"  # its own collection: the test passes alone
    create(stubs[0], name, DIM)
    query = np.full(DIM, 0.25, dtype=np.float32)
    stubs[0].Upsert(search_pb2.UpsertRequest(collection=name, items=[
        search_pb2.Item(id="skip-probe", vector_f32=codec.pack(query))]), timeout=10)
    assert [search(stubs[0], query, name, skip_cache=True).cached for _ in range(2)] == [False, False]
    assert [search(stubs[0], query, name).cached for _ in range(2)] == [False, True]
    assert not search(stubs[0], query, name, skip_cache=True).cached
    batch = stubs[1].BatchSearch(search_pb2.BatchSearchRequest(
        collection=name, vectors_f32=codec.pack(np.stack([query, query + 1])), k=K), timeout=10)
    assert [r.cached for r in batch.results] == [True, False]  # per query: a filled one hits, a new one misses


def test_redis_killed_or_stalled_turns_the_cache_off_without_failing_a_search(two, redis_server) -> None:
    cluster, stubs = two
    rng = np.random.default_rng(12)
    create(stubs[0], "outage", DIM)
    model = Model()
    upsert(stubs[0], model, {f"o{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(200)}, "outage")
    query = rng.standard_normal(DIM).astype(np.float32)
    assert search(stubs[0], query, "outage").cached is False and search(stubs[1], query, "outage").cached is True

    for stop, resume in ((signal.SIGSTOP, signal.SIGCONT), (signal.SIGKILL, None)):
        redis_server.signal(stop)
        if stop == signal.SIGKILL:
            redis_server.popen.wait()  # type: ignore[union-attr]
        for i in range(10):  # searches and writes keep working, answers stay exact, deadlines are kept
            upsert(stubs[i % 2], model, {f"during{stop}-{i}": query + 0.001 * i}, "outage")
            for stub in stubs:
                answer = stub.Search(search_pb2.SearchRequest(
                    collection="outage", vector_f32=codec.pack(query), k=K), timeout=2)
                assert ids(answer) == model.top(query) and not answer.cached
        for proc in cluster.coordinator_procs:
            assert value(proc, "shardsearch_coordinator_cache_up") == 0
            errors = sum(value(proc, "shardsearch_coordinator_cache_errors_total", operation=op)
                         for op in ("lookup", "invalidate"))
            assert errors > 0 and value(proc, "shardsearch_coordinator_cache_lookups_total", result="unavailable") > 0
        if resume is not None:
            redis_server.signal(resume)
        else:
            redis_server.start()  # same port, empty
        for proc in cluster.coordinator_procs:
            wait_until(lambda: value(proc, "shardsearch_coordinator_cache_up") == 1, "the cache back on", 30)
        for stub in stubs:  # back on, and still never stale: the writes made during the outage are there
            assert ids(search(stub, query, "outage")) == model.top(query)
        assert search(stubs[0], query, "outage").cached and search(stubs[1], query, "outage").cached


def test_without_redis_a_single_coordinator_uses_its_own_lru() -> None:
    with LocalCluster(shards=2, metrics=True) as cluster:
        stub = connect(cluster)
        create(stub, NAME, DIM)
        model = Model()
        rng = np.random.default_rng(13)
        upsert(stub, model, {f"l{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(100)})
        query = rng.standard_normal(DIM).astype(np.float32)
        assert [search(stub, query).cached for _ in range(2)] == [False, True]
        upsert(stub, model, {"closest": query})
        fresh = search(stub, query)
        assert not fresh.cached and ids(fresh)[0] == "closest" and ids(fresh) == model.top(query)
        assert value(cluster.coordinator, "shardsearch_coordinator_cache_lookups_total", result="hit") == 1


async def test_the_cache_stays_off_while_an_invalidation_that_failed_during_recovery_is_unapplied(
    redis_server: RedisServer,
) -> None:
    """The recovery round pings Redis; an invalidation that fails while it waits must be applied before the cache is
    used again (else this coordinator could read entries older than its own acknowledged write)."""
    from prometheus_client import CollectorRegistry

    from shardsearch.coordinator import cache as cache_module

    cache = cache_module.RedisCache(cache_module.CacheMetrics(CollectorRegistry()), redis_server.url, ttl_s=60,
                                    timeout_s=0.5, retry_s=0.01)
    try:
        await cache.lookup("c", ["k"])  # the first use sets the collection's token
        token = (await cache.lookup("c", ["k"])).token
        assert token is not None
        cache._trip("lookup", RuntimeError("made unavailable by the test"))
        real_ping = cache._redis.ping

        async def ping_while_an_invalidation_fails() -> bool:
            cache._unapplied.add("c")  # what invalidate() records when Redis times out meanwhile
            cache._redis.ping = real_ping  # type: ignore[method-assign]
            return bool(await real_ping())

        cache._redis.ping = ping_while_an_invalidation_fails  # type: ignore[method-assign]
        for _ in range(200):
            await asyncio.sleep(0.01)
            if cache.available:
                break
        assert cache.available and not cache._unapplied
        assert (await cache.lookup("c", ["k"])).token != token  # the missed invalidation landed first
    finally:
        await cache.close()


def test_no_search_after_an_acknowledged_write_returns_a_pre_write_answer_with_a_replica_lagging(
    redis_server: RedisServer,
) -> None:
    """Two coordinators, one Redis, replica B paused while a write is acknowledged by A alone (quorum 1). When B
    resumes, the coordinator that did not see the write could read B before the other one's resync lands (here it
    never does: that coordinator died), and cache that answer under the new token for everyone. B notices its pause
    and refuses reads until it has compared with A."""
    from shardsearch.v1 import search_pb2_grpc

    coordinator_args = ["--redis-url", redis_server.url, "--cache-timeout-s", "0.2"]
    shard_args = ["--anti-entropy-s", "600"]  # only the pause detection repairs B here
    with LocalCluster(shards=1, replicas=2, coordinators=2, coordinator_args=coordinator_args,
                      shard_args=shard_args) as cluster:
        stubs = [search_pb2_grpc.SearchServiceStub(grpc.insecure_channel(a)) for a in cluster.addresses]
        create(stubs[0], "lag", DIM)
        rng = np.random.default_rng(11)
        model = Model()
        upsert(stubs[0], model, {f"i{n}": v for n, v in enumerate(rng.standard_normal((50, DIM)).astype(np.float32))},
               collection="lag")
        query = rng.standard_normal(DIM).astype(np.float32)
        for stub in stubs * 3:
            assert ids(search(stub, query, collection="lag")) == model.top(query)  # cached, before the write
        b = cluster.replica(0, 1)
        b.signal(signal.SIGSTOP)
        try:
            upsert(stubs[0], model, {"new": query + 1e-3}, collection="lag")  # acknowledged by A alone
            cluster.coordinator_procs[0].signal(signal.SIGKILL)  # and the coordinator that fenced B dies
            time.sleep(2.5)  # past the write's deadline: B drops it unread when it resumes
        finally:
            b.signal(signal.SIGCONT)
        stale = []
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            for stub in stubs[1:]:
                for skip in (False, True):
                    try:
                        got = ids(search(stub, query, collection="lag", skip_cache=skip))
                    except grpc.RpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                        continue
                    if got[0] != "new":
                        stale.append((cluster.addresses[stubs.index(stub)], skip, got))
        assert not stale, f"{len(stale)} searches answered from before the write, e.g. {stale[:3]}"
        assert "was paused for" in b.log_path.read_text()
