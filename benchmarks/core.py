"""Core benchmark: the cluster vs one raw FAISS index over the same data, in one run, with recall@10.

    .venv/bin/python benchmarks/core.py --n 200000 --shards 4 --out bench-results/core.json

Data: a seeded Gaussian mixture (unit-normalised, inner product) with exact ground truth computed here by brute
force. The raw baseline is what a user would run instead: ONE IVF-PQ fast-scan index + exact refine over all the
data, parameters from the same rule, in this process with every core. The cluster runs N shard processes (1 OpenMP
thread each) and a coordinator on the same machine, so client, coordinator and shards share the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import faiss
import grpc
import numpy as np

from shard_server import params as index_params
from shardsearch import codec, demo
from shardsearch.local import LocalCluster
from shardsearch.v1 import search_pb2, search_pb2_grpc


def recall(found: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10].tolist()) & set(g[:10].tolist())) / 10 for f, g in zip(found, gt)]))


def raw_faiss(base: np.ndarray, queries: np.ndarray, gt: np.ndarray, batch: int) -> dict[str, float]:
    chosen = index_params.choose(base.shape[1], len(base), search_pb2.IndexOptions())
    index = faiss.index_factory(base.shape[1], chosen.factory() + ",RFlat", faiss.METRIC_INNER_PRODUCT)
    index.train(base[np.random.default_rng(0).choice(len(base), min(len(base), chosen.nlist * 64), replace=False)])
    index.add(base)
    p = faiss.IndexRefineSearchParameters(
        k_factor=chosen.refine_factor, base_index_params=faiss.SearchParametersIVF(nprobe=chosen.default_nprobe))
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    found = np.vstack([index.search(queries[i : i + batch], 10, params=p)[1] for i in range(0, len(queries), batch)])
    batched = len(queries) / (time.perf_counter() - start)
    faiss.omp_set_num_threads(1)
    start = time.perf_counter()
    for q in queries[:300]:
        index.search(q[None], 10, params=p)
    single = 300 / (time.perf_counter() - start)
    return {"factory": chosen.factory() + ",RFlat", "nprobe": chosen.default_nprobe, "batch_qps": batched,
            "single_qps": single, "recall": recall(found, gt)}


async def unary_load(address: str, queries: np.ndarray, concurrency: int, seconds: float) -> tuple[float, list[float]]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        packed = [codec.pack(q) for q in queries]
        latencies: list[float] = []
        stop = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < stop:
                t = time.perf_counter()
                await stub.Search(search_pb2.SearchRequest(collection="bench", vector_f32=packed[i % len(packed)], k=10))
                latencies.append(time.perf_counter() - t)
                i += concurrency

        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in range(concurrency)))
        return len(latencies) / (time.perf_counter() - start), latencies


def cluster_run(base: np.ndarray, queries: np.ndarray, gt: np.ndarray, shards: int, batch: int) -> dict[str, object]:
    with LocalCluster(shards=shards) as cluster:
        stub = search_pb2_grpc.SearchServiceStub(grpc.insecure_channel(
            cluster.address, options=[("grpc.max_receive_message_length", 64 << 20)]))
        stub.CreateCollection(search_pb2.CreateCollectionRequest(name="bench", dim=base.shape[1],
                                                                 metric=search_pb2.METRIC_INNER_PRODUCT))
        start = time.perf_counter()
        for lo in range(0, len(base), 5000):
            stub.Upsert(search_pb2.UpsertRequest(collection="bench", items=[
                search_pb2.Item(id=str(i), vector_f32=codec.pack(base[i])) for i in range(lo, min(len(base), lo + 5000))]))
        ingest = len(base) / (time.perf_counter() - start)
        while True:
            info = stub.DescribeCollection(search_pb2.DescribeCollectionRequest(name="bench"))
            if all(s.trained and not s.training and s.buffered_vectors < 10_000 for s in info.shards):
                break
            time.sleep(0.5)
        stub.BatchSearch(search_pb2.BatchSearchRequest(collection="bench", vectors_f32=codec.pack(queries[:batch]), k=10))
        start = time.perf_counter()
        found = []
        for lo in range(0, len(queries), batch):
            reply = stub.BatchSearch(search_pb2.BatchSearchRequest(
                collection="bench", vectors_f32=codec.pack(queries[lo : lo + batch]), k=10))
            found.extend([[int(h.id) for h in r.hits] for r in reply.results])
        batched = len(queries) / (time.perf_counter() - start)
        sequential, lat1 = asyncio.run(unary_load(cluster.address, queries, 1, 5.0))
        concurrent, lat32 = asyncio.run(unary_load(cluster.address, queries, 32, 5.0))
        return {
            "shards": shards, "index": info.shards[0].index_description, "nprobe": info.shards[0].index.default_nprobe,
            "ingest_vectors_per_s": ingest, "batch_qps": batched, "recall": recall(np.array(found), gt),
            "unary_sequential_qps": sequential, "unary_sequential_p50_ms": 1e3 * float(np.percentile(lat1, 50)),
            "unary_concurrent32_qps": concurrent, "unary_concurrent32_p50_ms": 1e3 * float(np.percentile(lat32, 50)),
            "unary_concurrent32_p99_ms": 1e3 * float(np.percentile(lat32, 99)),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", default="bench-results/core.json")
    args = parser.parse_args()
    data = demo.gaussian_mixture(args.n + args.queries, args.dim, seed=1, clusters=1000)
    base, queries = data[: args.n], data[args.n :]
    _, gt = faiss.knn(queries, base, 10, metric=faiss.METRIC_INNER_PRODUCT)
    result = {"n": args.n, "dim": args.dim, "cores": os.cpu_count(), "raw_faiss": raw_faiss(base, queries, gt, args.batch)}
    result["cluster"] = cluster_run(base, queries, gt, args.shards, args.batch)
    raw, cl = result["raw_faiss"], result["cluster"]
    result["ratios"] = {"batch_cluster_vs_raw": cl["batch_qps"] / raw["batch_qps"],
                        "unary_concurrent_vs_raw_single": cl["unary_concurrent32_qps"] / raw["single_qps"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
