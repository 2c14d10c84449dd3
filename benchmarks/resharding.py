"""Online resharding: how long adding a 5th shard and then removing one takes, under search and write traffic.

    .venv/bin/python benchmarks/resharding.py --n 200000 --out docs/BENCHMARKS.md

A cluster of 4 shards on this machine (durable: write-ahead logs and fsync) holds `--n` embedding-like vectors
(benchmarks/throughput.py's generator, 128-d, inner product). While a search thread (BatchSearch of 20 queries, cache
off) and a write thread (upserts of 20 new items, then a delete, back to back) run through the coordinator, a 5th
shard is added and then shard-1 is removed with AdminService; the time is from the call to the finished move.
Recall@10 of `--queries` queries against exact search (FAISS flat over the base and the written items) is measured
before, after the add (once the new shard has trained) and after the remove.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import faiss
import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import save  # noqa: E402
from throughput import embedding_like  # noqa: E402

from shardsearch import codec  # noqa: E402
from shardsearch.tools.local import LocalCluster  # noqa: E402
from shardsearch.v1 import (  # noqa: E402
    admin_pb2,
    admin_pb2_grpc,
    search_pb2_grpc,  # noqa: E402
)
from shardsearch.v1 import search_pb2 as pb  # noqa: E402

SECTION = "## Resharding"
DIM = 128
NAME = "elastic"


class Traffic(threading.Thread):
    """Searches and writes back to back; counts calls and failures."""

    def __init__(self, address: str, queries: np.ndarray, writes: bool, base_like: np.ndarray) -> None:
        super().__init__(daemon=True)
        channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.stub = search_pb2_grpc.SearchServiceStub(channel)
        self.queries, self.writes = queries, writes
        self.base_like = base_like
        self.calls = self.failures = 0
        self.written: dict[str, np.ndarray] = {}
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        rng, n = np.random.default_rng(3), 0
        base_like = self.base_like
        while not self.stop.is_set():
            try:
                if self.writes:
                    ids = [f"w{n + i}" for i in range(20)]
                    n += 20
                    vectors = base_like[rng.integers(0, len(base_like), 20)] + 0.01 * rng.standard_normal(
                        (20, DIM)).astype(np.float32)
                    self.stub.Upsert(pb.UpsertRequest(collection=NAME, items=[
                        pb.Item(id=i, vector_f32=codec.pack(v)) for i, v in zip(ids, vectors)]), timeout=30)
                    self.written.update(zip(ids, vectors))
                    doomed = ids[int(rng.integers(0, 20))]
                    self.stub.Delete(pb.DeleteRequest(collection=NAME, ids=[doomed]), timeout=30)
                    self.written.pop(doomed)
                else:
                    answer = self.stub.BatchSearch(pb.BatchSearchRequest(
                        collection=NAME, vectors_f32=codec.pack(self.queries[:20]), k=10, skip_cache=True), timeout=30)
                    if answer.partial:
                        raise RuntimeError("partial answer")
                self.calls += 1
            except (grpc.RpcError, RuntimeError) as exc:
                self.failures += 1
                self.errors.append(str(exc)[:200])


def recall(stub: search_pb2_grpc.SearchServiceStub, queries: np.ndarray, ids: list[str], vectors: np.ndarray,
           nprobe: int = 0) -> float:
    _, truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)
    answer = stub.BatchSearch(pb.BatchSearchRequest(collection=NAME, vectors_f32=codec.pack(queries), k=10,
                                                    nprobe=nprobe, skip_cache=True), timeout=120)
    hits = 0
    for row, result in enumerate(answer.results):
        hits += len({h.id for h in result.hits} & {ids[j] for j in truth[row]})
    return hits / (10 * len(queries))


def recall_of_base(stub: search_pb2_grpc.SearchServiceStub, queries: np.ndarray, base: np.ndarray,
                   nprobe: int = 0) -> float:
    """Recall@10 over the loaded items only (those written during the moves left out of both sides: 50 hits are
    searched and the first 10 loaded ones kept), so before and after compare the same thing."""
    _, truth = faiss.knn(queries, base, 10, metric=faiss.METRIC_INNER_PRODUCT)
    answer = stub.BatchSearch(pb.BatchSearchRequest(collection=NAME, vectors_f32=codec.pack(queries), k=50,
                                                    nprobe=nprobe, skip_cache=True), timeout=120)
    hits = 0
    for row, result in enumerate(answer.results):
        found = [h.id for h in result.hits if not h.id.startswith("w")][:10]
        hits += len(set(found) & {str(j) for j in truth[row]})
    return hits / (10 * len(queries))


def wait_trained(stub: search_pb2_grpc.SearchServiceStub, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shards = stub.DescribeCollection(pb.DescribeCollectionRequest(name=NAME)).shards
        if all(s.trained and not s.training and s.buffered_vectors == 0 for s in shards):
            return
        time.sleep(1)
    raise TimeoutError("shards did not finish training")


def move(admin: admin_pb2_grpc.AdminServiceStub, call: Any, request: Any) -> tuple[float, admin_pb2.Topology]:
    started = time.perf_counter()
    call(request, timeout=60)
    while True:
        layout = admin.GetTopology(admin_pb2.GetTopologyRequest())
        if layout.move.finished_unix_ms:
            return time.perf_counter() - started, layout
        time.sleep(0.05)


def run(n: int, nq: int) -> dict[str, Any]:
    data = embedding_like(n + nq, DIM)  # queries from the same distribution as the data
    base, queries = data[:n], data[n:]
    ids = [str(i) for i in range(n)]
    results: dict[str, Any] = {"n": n, "queries": nq}
    with LocalCluster(shards=4, coordinator_args=["--cache", "off"]) as cluster:
        channel = grpc.insecure_channel(cluster.address, options=[("grpc.max_receive_message_length", 64 << 20)])
        stub = search_pb2_grpc.SearchServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(  # every shard trains, the new one too
            name=NAME, dim=DIM, metric=pb.METRIC_INNER_PRODUCT, index=pb.IndexOptions(train_threshold=n // 10)))
        for lo in range(0, n, 2000):
            stub.Upsert(pb.UpsertRequest(collection=NAME, items=[
                pb.Item(id=ids[i], vector_f32=codec.pack(base[i])) for i in range(lo, min(n, lo + 2000))]), timeout=120)
        wait_trained(stub)
        results["recall_before"] = recall_of_base(stub, queries, base)
        results["recall_before_64"] = recall_of_base(stub, queries, base, 64)
        extra = cluster.start_extra_shard("shard-4")
        traffic = [Traffic(cluster.address, queries, False, base), Traffic(cluster.address, queries, True, base)]
        for thread in traffic:
            thread.start()
        time.sleep(2)
        counts = [t.calls for t in traffic]
        results["add_s"], added = move(admin, admin.AddShard, admin_pb2.AddShardRequest(
            shard=admin_pb2.ShardSpec(name="shard-4", addresses=[extra.address])))
        results["add_moved"] = sum(r.items for r in added.move.ranges)
        results["add_calls"] = [t.calls - c for t, c in zip(traffic, counts)]
        time.sleep(2)
        counts = [t.calls for t in traffic]
        results["remove_s"], removed = move(admin, admin.RemoveShard, admin_pb2.RemoveShardRequest(name="shard-1"))
        results["remove_moved"] = sum(r.items for r in removed.move.ranges)
        results["remove_calls"] = [t.calls - c for t, c in zip(traffic, counts)]
        time.sleep(1)
        for thread in traffic:
            thread.stop.set()
            thread.join()
        results["failures"] = sum(t.failures for t in traffic)
        results["errors"] = [e for t in traffic for e in t.errors][:5]
        results["mismatched_rounds"] = sum(r.mismatched_rounds for r in [*added.move.ranges, *removed.move.ranges])
        written = traffic[1].written
        all_ids = ids + list(written)
        all_vectors = np.vstack([base, np.array(list(written.values()), dtype=np.float32).reshape(-1, DIM)])
        wait_trained(stub)
        time.sleep(3)  # compaction of the old owners' dead codes
        results["recall_after"] = recall_of_base(stub, queries, base)
        results["recall_after_64"] = recall_of_base(stub, queries, base, 64)
        results["recall_after_all"] = recall(stub, queries, all_ids, all_vectors)
        results["total_after"] = stub.DescribeCollection(pb.DescribeCollectionRequest(name=NAME)).total_vectors
        results["expected_after"] = len(all_ids)
        print(results, flush=True)
    return results


def report(r: dict[str, Any], command: str) -> str:
    return "\n".join([
        SECTION,
        "",
        f"`{command}` on {platform.machine()}, {os.cpu_count()} cores, no GPU: 4 shards (durable) and one "
        f"coordinator on this machine, {r['n']:,} vectors (128-d, embedding-like, inner product). A search thread "
        "(BatchSearch of 20 queries, cache off) and a write thread (20 upserts then one delete per round) ran "
        "through the coordinator during both moves.",
        "",
        "| move | items moved | took | items/s | searches / write rounds during it | failed calls |",
        "|---|---:|---:|---:|---:|---:|",
        f"| add shard-4 (4 -> 5) | {r['add_moved']:,} ({r['add_moved'] / r['n']:.1%}) | {r['add_s']:.1f} s | "
        f"{r['add_moved'] / r['add_s']:,.0f} | {r['add_calls'][0]} / {r['add_calls'][1]} | {r['failures']} in all |",
        f"| remove shard-1 (5 -> 4) | {r['remove_moved']:,} | {r['remove_s']:.1f} s | "
        f"{r['remove_moved'] / r['remove_s']:,.0f} | {r['remove_calls'][0]} / {r['remove_calls'][1]} | |",
        "",
        f"Recall@10 against exact search ({r['queries']} queries from the data's distribution): "
        f"{r['recall_before']:.3f} before and {r['recall_after']:.3f} after both moves at each shard's default nprobe; "
        f"{r['recall_before_64']:.3f} and {r['recall_after_64']:.3f} at nprobe 64 (over the loaded items: the "
        "written ones are near-copies of loaded ones and are left out of both sides; with them in the ground truth, "
        f"recall after is {r['recall_after_all']:.3f} at the default nprobe). Live items after: "
        f"{r['total_after']:,} (expected {r['expected_after']:,}). Verification rounds that found a differing bucket "
        f"(copied again): {r['mismatched_rounds']}.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--out", type=Path, help="Markdown report to update (its Resharding section)")
    parser.add_argument("--json", type=Path, default=Path("bench-results/resharding.json"))
    args = parser.parse_args()
    results = run(args.n, args.queries)
    save(results, args.json, SECTION, report(results, f"python benchmarks/resharding.py --n {args.n} "
                                                       f"--queries {args.queries}"), args.out)


if __name__ == "__main__":
    main()
