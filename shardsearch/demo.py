"""The demo the README's first command shows: a collection loaded into a local cluster and an example query."""

from __future__ import annotations

import time

import grpc
import numpy as np

from shardsearch import codec
from shardsearch.v1 import search_pb2, search_pb2_grpc

DIM = 64


def gaussian_mixture(n: int, dim: int, seed: int = 0, clusters: int = 100) -> np.ndarray:
    """Unit-normalised points around random centres: closer to real embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    points = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def run(address: str, n: int = 20_000, collection: str = "demo") -> None:
    with grpc.insecure_channel(address) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        data = gaussian_mixture(n + 100, DIM)
        base, queries = data[:n], data[n:]
        stub.CreateCollection(search_pb2.CreateCollectionRequest(
            name=collection, dim=DIM, metric=search_pb2.METRIC_INNER_PRODUCT,
            index=search_pb2.IndexOptions(train_threshold=2_000),
        ))
        started = time.perf_counter()
        for lo in range(0, n, 1000):
            stub.Upsert(search_pb2.UpsertRequest(collection=collection, items=[
                search_pb2.Item(id=f"doc-{i}", vector_f32=codec.pack(base[i]), payload=f"document {i}".encode())
                for i in range(lo, min(n, lo + 1000))
            ]))
        print(f"loaded {n} vectors ({DIM}-d, inner product) into {collection!r} in {time.perf_counter() - started:.1f}s")
        reply = stub.Search(search_pb2.SearchRequest(
            collection=collection, vector_f32=codec.pack(queries[0]), k=5, include_payload=True
        ))
        print("example query, top 5:")
        for hit in reply.hits:
            print(f"  {hit.id:<12} score {hit.score:.4f}  payload {hit.payload.decode()!r}")
        truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]
        batch = stub.BatchSearch(search_pb2.BatchSearchRequest(collection=collection, vectors_f32=codec.pack(queries), k=10))
        recall = np.mean([
            len({int(h.id[4:]) for h in r.hits} & set(truth[i].tolist())) / 10 for i, r in enumerate(batch.results)
        ])
        print(f"recall@10 over {len(queries)} queries against exact search: {recall:.3f}")
        info = stub.DescribeCollection(search_pb2.DescribeCollectionRequest(name=collection))
        for shard in info.shards:
            print(f"  {shard.shard}: {shard.vectors} vectors, trained={shard.trained}, {shard.index_description}")
