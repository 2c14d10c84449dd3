"""The demo the README's first command shows: a collection loaded into a local cluster and an example query."""

from __future__ import annotations

import time

import numpy as np

from shardsearch.client import Client

DIM = 64


def gaussian_mixture(n: int, dim: int, seed: int = 0, clusters: int = 100) -> np.ndarray:
    """Unit-normalised points around random centres: closer to real embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    points = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def run(address: str, n: int = 20_000, collection: str = "demo") -> None:
    with Client(address, timeout=60) as client:
        data = gaussian_mixture(n + 100, DIM)
        base, queries = data[:n], data[n:]
        client.create_collection(collection, DIM, "ip", train_threshold=2_000)
        started = time.perf_counter()
        client.upsert(collection, [f"doc-{i}" for i in range(n)], base,
                      payloads=[f"document {i}".encode() for i in range(n)])
        print(f"loaded {n} vectors ({DIM}-d, inner product) into {collection!r} in {time.perf_counter() - started:.1f}s")
        print("example query, top 5:")
        for hit in client.search(collection, queries[0], k=5, include_payload=True):
            print(f"  {hit.id:<12} score {hit.score:.4f}  payload {hit.payload.decode()!r}")
        truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]
        results = client.search(collection, queries, k=10)
        recall = np.mean([
            len({int(h.id[4:]) for h in hits} & set(truth[i].tolist())) / 10 for i, hits in enumerate(results)
        ])
        print(f"recall@10 over {len(queries)} queries against exact search: {recall:.3f}")
        for shard in client.describe(collection).shards:
            print(f"  {shard.shard}: {shard.vectors} vectors, trained={shard.trained}, {shard.index_description}")
