"""SearchCombined: several weighted parts (vectors, stored items, texts, images) searched as one, by the weighted
mean of their vectors or by weighted reciprocal rank fusion of their result lists."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Sequence

import numpy as np

from shardsearch import codec, validation
from shardsearch.coordinator.catalog import Catalog
from shardsearch.coordinator.embedding import Embedding
from shardsearch.coordinator.postprocess import finish, leave_out
from shardsearch.coordinator.queries import Queries
from shardsearch.coordinator.router import remaining
from shardsearch.coordinator.search import Searcher
from shardsearch.coordinator.writes import Writes
from shardsearch.errors import InvalidArgument
from shardsearch.offload import Offload
from shardsearch.v1 import search_pb2

MAX_COMBINED_PARTS = 64
RRF_K = 60  # the usual reciprocal rank fusion constant (Cormack et al., 2009)
RRF_MIN_DEPTH = 20  # each part's list is at least this deep, else 2 x the hits wanted


class Combiner:
    def __init__(
        self, catalog: Catalog, searcher: Searcher, run: Offload, limits: validation.Limits, queries: Queries,
        writes: Writes, embedding: Embedding,
    ) -> None:
        self._catalog = catalog
        self._searcher = searcher
        self._run = run
        self._limits = limits
        self._queries = queries
        self._writes = writes
        self._embedding = embedding

    async def search(self, request: search_pb2.CombinedSearchRequest, timeout: float) -> search_pb2.SearchResponse:
        deadline = time.monotonic() + timeout
        spec = await self._catalog.get(request.collection, timeout)
        opts = self._queries.options(request)
        parts = list(request.queries)
        if not 1 <= len(parts) <= MAX_COMBINED_PARTS:
            raise InvalidArgument(f"queries: {len(parts)} parts; between 1 and {MAX_COMBINED_PARTS} are allowed")
        weights = np.array([check_weight(part.weight, i) for i, part in enumerate(parts)], dtype=np.float64)
        vectors = await self._part_vectors(spec, parts, timeout)
        timeout = remaining(deadline)
        exclude = set() if request.include_query_items else {p.id for p in parts if p.WhichOneof("query") == "id"}
        wanted = opts.k + len(exclude)
        if wanted > self._limits.max_k:
            raise InvalidArgument(f"k: {opts.k} plus {len(exclude)} query items to leave out exceeds {self._limits.max_k}")
        use_cache = not request.skip_cache
        listed = self._queries.depth(request, opts.k)  # the result list before diversity (k without it)
        if request.combine in (search_pb2.COMBINE_UNSPECIFIED, search_pb2.COMBINE_MEAN):
            query = await self._run(mean_query, vectors, weights, spec.metric)
            searched = min(self._limits.max_k, listed + len(exclude))
            outcome = await self._searcher.search(spec, query, replace(opts, k=searched), timeout, use_cache=use_cache)
            response = outcome.results[0]
            leave_out(response, exclude, listed)
            metric = spec.metric
        elif request.combine == search_pb2.COMBINE_RRF:
            depth = min(self._limits.max_k, max(2 * (listed + len(exclude)), RRF_MIN_DEPTH))
            outcome = await self._searcher.search(spec, vectors, replace(opts, k=depth), timeout, use_cache=use_cache)
            response = await self._run(fuse_rrf, outcome.results, weights, listed, exclude)
            response.partial = bool(outcome.missing)
            response.missing_shards.extend(outcome.missing)
            metric = search_pb2.METRIC_INNER_PRODUCT  # fused scores: larger is better
        else:
            raise InvalidArgument(f"combine: {request.combine} is not a Combine value")
        response.request_id = request.request_id
        finish(response, request, metric, opts.k)
        return response

    async def _part_vectors(
        self, spec: search_pb2.Collection, parts: list[search_pb2.WeightedQuery], timeout: float
    ) -> np.ndarray:
        """The query vector of each part: given, embedded, or read from the shard owning the item."""
        vectors = np.empty((len(parts), spec.dim), dtype=np.float32)
        by_id: dict[str, list[int]] = {}
        content: dict[str, list[int]] = {"text": [], "image": []}
        for i, part in enumerate(parts):
            kind = part.WhichOneof("query")
            if kind == "vector_f32":
                vectors[i] = codec.one_vector((), part.vector_f32, spec.dim, f"queries[{i}].vector")
            elif kind == "id":
                by_id.setdefault(part.id, []).append(i)
            elif kind in content:
                content[kind].append(i)
            else:
                raise InvalidArgument(f"queries[{i}]: set vector_f32, id, text or image")
        deadline = time.monotonic() + timeout
        for kind, indices in content.items():
            if indices:
                embedded, _ = await self._embedding.embed(
                    spec, kind, [getattr(parts[i], kind) for i in indices], [f"queries[{i}].{kind}" for i in indices],
                    remaining(deadline),
                )
                vectors[indices] = embedded
        if by_id:
            for item_id, vector in (await self._writes.stored_vectors(spec, list(by_id), remaining(deadline))).items():
                vectors[by_id[item_id]] = vector
        return vectors


def check_weight(weight: float, index: int) -> float:
    if weight == 0:
        return 1.0
    if not (math.isfinite(weight) and weight > 0):
        raise InvalidArgument(f"queries[{index}].weight: {weight} must be a finite number > 0 (0 means 1)")
    return weight


def mean_query(vectors: np.ndarray, weights: np.ndarray, metric: int) -> np.ndarray:
    """The weighted mean of the parts (1 x dim); for inner product of the L2-normalised parts."""
    if metric == search_pb2.METRIC_INNER_PRODUCT:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        zero = np.flatnonzero(norms[:, 0] == 0)
        if len(zero):
            raise InvalidArgument(f"queries[{zero[0]}]: a zero vector has no direction to average")
        vectors = vectors / norms
    mean = (weights[:, None] * vectors).sum(axis=0) / weights.sum()
    return mean.astype(np.float32).reshape(1, -1)


def fuse_rrf(
    results: Sequence[search_pb2.SearchResponse], weights: np.ndarray, k: int, exclude: set[str]
) -> search_pb2.SearchResponse:
    """Weighted reciprocal rank fusion: each part's hit at rank r (from 1) adds weight / (RRF_K + r); best k by
    fused score, ties by id. Items in `exclude` still hold their ranks in each list but are not returned.
    Each fused hit keeps the payload and fields it had in the parts' hits."""
    fused: dict[str, float] = {}
    first: dict[str, search_pb2.Hit] = {}
    for weight, result in zip(weights.tolist(), results):
        for rank, hit in enumerate(result.hits, 1):
            if hit.id in exclude:
                continue
            fused[hit.id] = fused.get(hit.id, 0.0) + weight / (RRF_K + rank)
            first.setdefault(hit.id, hit)
    best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
    return search_pb2.SearchResponse(hits=[
        search_pb2.Hit(id=item_id, score=score, payload=first[item_id].payload, fields=first[item_id].fields)
        for item_id, score in best
    ])

