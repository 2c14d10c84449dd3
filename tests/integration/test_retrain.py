"""Retraining through the coordinator, with real processes: a 2-shard cluster holding bigann10k retrains on request
while searches go on; every shard reports its state and the outcome, through the RPC and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Iterator

import grpc
import numpy as np
import pytest

from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import admin_pb2, admin_pb2_grpc, search_pb2_grpc
from tests.conftest import load_dataset, recall_at_10
from tests.integration.conftest import batch_search, create, running_cluster, upsert, wait_trained

COLLECTION = "drifting"
SHARDS = ["shard-0", "shard-1"]
IDLE = admin_pb2.RetrainStatus.STATE_IDLE


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    with running_cluster(request, shards=2, coordinator_args=["--cache", "off"]) as running:
        yield running


@pytest.fixture(scope="module")
def stubs(cluster: LocalCluster) -> tuple[search_pb2_grpc.SearchServiceStub, admin_pb2_grpc.AdminServiceStub]:
    channel = grpc.insecure_channel(cluster.address, options=[("grpc.max_receive_message_length", 64 << 20)])
    return search_pb2_grpc.SearchServiceStub(channel), admin_pb2_grpc.AdminServiceStub(channel)


def recall(stub: search_pb2_grpc.SearchServiceStub, queries: np.ndarray, gt: np.ndarray) -> float:
    reply = batch_search(stub, COLLECTION, queries)
    return recall_at_10([[int(h.id) for h in r.hits] for r in reply.results], gt)


def wait_retrained(
    admin: admin_pb2_grpc.AdminServiceStub, since_ms: int, timeout: float = 60.0
) -> admin_pb2.RetrainResponse:
    """Polls GetRetrainStatus until every shard is idle with a retrain that finished after `since_ms`."""
    deadline = time.monotonic() + timeout
    while True:
        answer = admin.GetRetrainStatus(admin_pb2.GetRetrainStatusRequest(collection=COLLECTION), timeout=10)
        if all(s.status.state == IDLE and s.status.last.finished_unix_ms >= since_ms for s in answer.shards):
            return answer
        assert time.monotonic() < deadline, f"shards did not finish retraining in {timeout}s: {answer}"
        time.sleep(0.1)


def test_retrain_on_request_while_searching(cluster: LocalCluster, stubs) -> None:
    search, admin = stubs
    base, queries, gt = load_dataset("l2-10k-128")
    create(search, COLLECTION, base.shape[1], train_threshold=2_000)
    upsert(search, COLLECTION, [str(i) for i in range(len(base))], base)
    wait_trained(search, COLLECTION)
    before = recall(search, queries, gt)

    status = admin.GetRetrainStatus(admin_pb2.GetRetrainStatusRequest(collection=COLLECTION, measure=True))
    assert [s.shard for s in status.shards] == SHARDS
    for entry in status.shards:
        assert not entry.error and entry.status.state == IDLE and entry.status.trained_on >= 2_000, entry
        assert entry.status.estimated_recall > 0.9 and not entry.status.due, entry
        # The first index, or a retrain the shard started itself: on a slow machine the upserts go on while the
        # first index trains on the 2,000 it had, and the shard grows past twice that before this check.
        assert entry.status.last.reason.startswith(("trained the first index", "promoted", "kept")), entry

    errors: list[str] = []
    searches = 0
    stop = threading.Event()

    def search_meanwhile() -> None:
        nonlocal searches
        while not stop.is_set():
            try:
                reply = batch_search(search, COLLECTION, queries[:20])
                assert all(len(r.hits) == 10 for r in reply.results)
                searches += 1
            except (grpc.RpcError, AssertionError) as exc:
                errors.append(repr(exc))

    searcher = threading.Thread(target=search_meanwhile)
    searcher.start()
    try:
        started_ms = int(time.time() * 1000)
        answer = admin.Retrain(admin_pb2.RetrainRequest(collection=COLLECTION, force=True), timeout=10)
        assert [s.shard for s in answer.shards] == SHARDS
        for entry in answer.shards:  # started (or, on a quick shard, already done)
            assert entry.status.state != IDLE or entry.status.last.finished_unix_ms >= started_ms, entry
        done = wait_retrained(admin, started_ms)
    finally:
        stop.set()
        searcher.join()
    assert not errors, errors[:3]
    assert searches > 0
    for entry in done.shards:
        last = entry.status.last
        assert last.recall_before > 0.9 and last.recall_after > 0.9, entry  # both measured: the gate ran
        assert last.promoted == (last.recall_after >= last.recall_before), entry
        assert last.duration_s > 0 and last.trained_on > 4_000
        assert entry.status.trained_on == (last.trained_on if last.promoted else entry.status.trained_on)
        print(f"{entry.shard}: {last.reason}")
    assert recall(search, queries, gt) >= min(before, 0.95) - 0.02

    # Only the named shard; none asked while one runs.
    started_ms = int(time.time() * 1000)
    answer = admin.Retrain(admin_pb2.RetrainRequest(collection=COLLECTION, shards=["shard-1"], force=True))
    assert [s.shard for s in answer.shards] == ["shard-1"]
    wait_retrained(admin, 0)
    assert [s.status.last.finished_unix_ms >= started_ms for s in wait_retrained(admin, 0).shards] == [False, True]

    # Without force, nothing is due: nothing starts.
    answer = admin.Retrain(admin_pb2.RetrainRequest(collection=COLLECTION))
    assert all(s.status.state == IDLE and not s.status.due for s in answer.shards), answer

    # The CLI prints every shard's state as JSON.
    shown = subprocess.run(
        [sys.executable, "-m", "shardsearch.tools.cli", "admin", "--coordinator", cluster.address, "retrain-status",
         COLLECTION], capture_output=True, text=True, timeout=60, check=True,
    )
    printed = json.loads(shown.stdout)["shards"]
    assert [s["shard"] for s in printed] == SHARDS
    assert all(s["status"]["state"] == "STATE_IDLE" and s["status"]["last"]["trainedOn"] for s in printed), printed


def test_refusals(cluster: LocalCluster, stubs) -> None:
    search, admin = stubs
    create(search, "refusals", 4)  # its own collection: this test must pass alone
    for call, request, code in [
        (admin.Retrain, admin_pb2.RetrainRequest(collection="nope"), grpc.StatusCode.NOT_FOUND),
        (admin.GetRetrainStatus, admin_pb2.GetRetrainStatusRequest(collection="nope"), grpc.StatusCode.NOT_FOUND),
        (admin.Retrain, admin_pb2.RetrainRequest(collection="refusals", shards=["shard-9"]),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=10)
        assert err.value.code() == code, err.value.details()


def test_a_shard_with_too_few_vectors_reports_an_error(cluster: LocalCluster, stubs) -> None:
    search, admin = stubs
    create(search, "small", 4)
    upsert(search, "small", ["a", "b", "c"], np.eye(3, 4, dtype=np.float32))
    answer = admin.Retrain(admin_pb2.RetrainRequest(collection="small", force=True), timeout=10)
    assert [s.shard for s in answer.shards] == SHARDS
    assert all("train_threshold" in s.error for s in answer.shards), answer
