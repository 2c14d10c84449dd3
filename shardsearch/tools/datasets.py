"""Seeded vector sets shaped like real embeddings, with exact ground truth: what the tests, the demo and the
benchmarks use when no real data is at hand (a user's clone has none beside it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def embedding_like(n: int, dim: int, seed: int = 1, clusters: int = 1000, intrinsic: int = 16) -> np.ndarray:
    """A seeded Gaussian mixture shaped like real embeddings: `clusters` centres, each point spread over its
    cluster's own `intrinsic`-d subspace plus a little isotropic noise, unit-normalised. (An isotropic mixture in
    128-d makes every point of a cluster almost equidistant, so no compressed index can rank it; real embeddings
    have a low intrinsic dimension.)"""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    spans = rng.standard_normal((clusters, intrinsic, dim)).astype(np.float32) / np.sqrt(intrinsic)
    out = np.empty((n, dim), np.float32)
    for lo in range(0, n, 100_000):
        m = min(100_000, n - lo)
        which = rng.integers(0, clusters, m)
        z = rng.standard_normal((m, intrinsic)).astype(np.float32)
        noise = rng.standard_normal((m, dim)).astype(np.float32)
        out[lo : lo + m] = centres[which] + 0.8 * np.einsum("ni,nid->nd", z, spans[which]) + 0.1 * noise
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def exact_neighbours(base: np.ndarray, queries: np.ndarray, k: int = 100, metric: str = "l2") -> np.ndarray:
    """Row ids into `base` of each query's exact `k` nearest (nearest first), by brute force in float64."""
    k = min(k, len(base))
    out = np.empty((len(queries), k), np.int64)
    base64 = base.astype(np.float64)
    norms = (base64 * base64).sum(axis=1)
    for lo in range(0, len(queries), 256):
        q = queries[lo : lo + 256].astype(np.float64)
        similarity = q @ base64.T
        # For L2 the query's own norm is the same for every row, so it does not change the order.
        distance = norms[None, :] - 2 * similarity if metric == "l2" else -similarity
        top = np.argpartition(distance, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(distance, top, axis=1).argsort(axis=1, kind="stable")
        out[lo : lo + len(q)] = np.take_along_axis(top, order, axis=1)
    return out


@dataclass(frozen=True)
class Dataset:
    """base (n x d), queries (nq x d) and the exact top-k of every query (row ids into base, nearest first)."""

    base: np.ndarray
    queries: np.ndarray
    ground_truth: np.ndarray
    metric: str

    @classmethod
    def generate(
        cls, n: int, nq: int, dim: int, *, metric: str = "l2", seed: int = 1, clusters: int = 1000, scale: float = 1.0,
        k: int = 100,
    ) -> "Dataset":
        """`n + nq` points of `embedding_like` (times `scale`), the last `nq` as queries, with exact ground truth."""
        data = embedding_like(n + nq, dim, seed=seed, clusters=clusters) * np.float32(scale)
        base, queries = data[:n], data[n:]
        return cls(base, queries, exact_neighbours(base, queries, k, metric), metric)
