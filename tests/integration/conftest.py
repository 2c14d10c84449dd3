"""Real clusters: shard and coordinator processes on ephemeral 127.0.0.1 ports, driven over real gRPC."""

from __future__ import annotations

import contextlib
import time
import urllib.request
from typing import Any, Callable, Iterator

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shardsearch import codec
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import admin_pb2, admin_pb2_grpc, search_pb2, search_pb2_grpc, shard_pb2, shard_pb2_grpc


@contextlib.contextmanager
def running_cluster(
    request: pytest.FixtureRequest, extra_logs: Callable[[], str] | None = None, **options: Any
) -> Iterator[LocalCluster]:
    """A LocalCluster for a fixture or a test; its logs (and `extra_logs()`) are printed at the end if a test failed
    meanwhile or an error leaves the block."""
    failed_before = request.session.testsfailed
    with LocalCluster(**options) as running:
        failed = True
        try:
            yield running
            failed = request.session.testsfailed > failed_before
        finally:
            if failed:
                print(f"\n=== cluster logs ===\n{running.logs()}{extra_logs() if extra_logs else ''}")


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A 4-shard cluster shared by a test module; its logs are printed if a test fails."""
    with running_cluster(request, shards=4, metrics=True) as running:
        yield running


def connect(cluster: LocalCluster) -> search_pb2_grpc.SearchServiceStub:
    channel = grpc.insecure_channel(cluster.address, options=[("grpc.max_receive_message_length", 64 << 20)])
    return search_pb2_grpc.SearchServiceStub(channel)


@pytest.fixture(scope="module")
def stub(cluster: LocalCluster) -> search_pb2_grpc.SearchServiceStub:
    return connect(cluster)


def shard_ids(address: str, collection: str) -> list[str]:
    """Every id a shard holds (straight from the shard, past the coordinators), by pages of ListIds."""
    with grpc.insecure_channel(address) as channel:
        stub = shard_pb2_grpc.ShardServiceStub(channel)
        ids, after, resume = [], 0, False
        while True:
            page = stub.ListIds(shard_pb2.ShardListIdsRequest(collection=collection, after=after, resume=resume,
                                                              limit=10_000))
            ids.extend(page.ids)
            if not page.more:
                return ids
            after, resume = page.next_after, True


def upsert(stub: search_pb2_grpc.SearchServiceStub, collection: str, ids: list[str], vectors: np.ndarray,
           batch: int = 1000) -> None:
    for lo in range(0, len(ids), batch):
        stub.Upsert(search_pb2.UpsertRequest(collection=collection, items=[
            search_pb2.Item(id=ids[i], vector_f32=codec.pack(vectors[i])) for i in range(lo, min(len(ids), lo + batch))
        ]))


def batch_search(stub: search_pb2_grpc.SearchServiceStub, collection: str, queries: np.ndarray, k: int = 10,
                 **kwargs: object) -> search_pb2.BatchSearchResponse:
    return stub.BatchSearch(search_pb2.BatchSearchRequest(
        collection=collection, vectors_f32=codec.pack(queries), k=k, **kwargs
    ))


def wait_trained(stub: search_pb2_grpc.SearchServiceStub, collection: str, timeout: float = 60.0) -> search_pb2.DescribeCollectionResponse:
    """Polls DescribeCollection until every shard has trained and absorbed its buffer into IVF-PQ."""
    deadline = time.monotonic() + timeout
    while True:
        info = stub.DescribeCollection(search_pb2.DescribeCollectionRequest(name=collection))
        if all(s.trained and not s.training for s in info.shards):
            return info
        assert time.monotonic() < deadline, f"shards did not train in {timeout}s: {info}"
        time.sleep(0.1)


def create(stub: search_pb2_grpc.SearchServiceStub, name: str, dim: int, metric: int = search_pb2.METRIC_L2,
           **index: int) -> None:
    stub.CreateCollection(search_pb2.CreateCollectionRequest(
        name=name, dim=dim, metric=metric, index=search_pb2.IndexOptions(**index)
    ))


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    """Polls `condition` until it holds: tests wait for a state, never for a guessed time."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def wait_for_move(admin: admin_pb2_grpc.AdminServiceStub, timeout: float = 60.0) -> admin_pb2.Topology:
    """Polls GetTopology until the move this coordinator drives has finished; returns that layout."""
    deadline = time.monotonic() + timeout
    while True:
        layout = admin.GetTopology(admin_pb2.GetTopologyRequest())
        if layout.move.finished_unix_ms:
            return layout
        assert time.monotonic() < deadline, f"the move did not finish in {timeout}s: {layout}"
        time.sleep(0.05)


def retry_until_ok(call, seconds: float = 15.0):
    """What a client does on UNAVAILABLE: retry (the coordinator's channel may still be in reconnect backoff)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_text(port: int) -> str:
    """What a server's /metrics endpoint serves (the Prometheus text format)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def scrape(port: int) -> Samples:
    """Every sample a server's /metrics serves, by (name, its labels sorted)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics_text(port)) for sample in family.samples
    }


def metric_sum(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, w) in ls for k, w in labels.items()))
