"""The search path shared by Search, BatchSearch and StreamSearch: one batched RPC per shard, then merge.

Shard failures are handled by the request's partial policy; merging and building responses run in an executor.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Sequence

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter

from coordinator.catalog import Catalog
from coordinator.merge import ShardHits, merge
from coordinator.shards import Outcome, ShardPool
from shardsearch import codec
from shardsearch.errors import NotFound, ShardSearchError
from shardsearch.v1 import search_pb2, shard_pb2


@dataclass(frozen=True)
class SearchOptions:
    k: int
    nprobe: int = 0
    allow_partial: bool = False
    include_payload: bool = False


@dataclass(frozen=True)
class SearchOutcome:
    results: list[search_pb2.SearchResponse]
    missing: list[str]


class SearchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.partial = Counter(
            "shardsearch_coordinator_partial_responses", "Searches answered without some shards.", registry=registry
        )
        self.queries = Counter(
            "shardsearch_coordinator_queries", "Query vectors searched (a BatchSearch counts each).", registry=registry
        )


class Searcher:
    def __init__(self, pool: ShardPool, catalog: Catalog, executor: Executor, metrics: SearchMetrics) -> None:
        self._pool = pool
        self._catalog = catalog
        self._executor = executor
        self._metrics = metrics

    async def search(
        self, spec: search_pb2.Collection, queries: np.ndarray, opts: SearchOptions, timeout: float
    ) -> SearchOutcome:
        request = shard_pb2.ShardSearchRequest(
            collection=spec.name, queries_f32=codec.pack(queries), n=queries.shape[0], k=opts.k,
            nprobe=opts.nprobe, include_payload=opts.include_payload,
        )
        outcomes = await self._pool.broadcast("Search", request, timeout)
        missing = self._check_failures(spec.name, outcomes, opts.allow_partial)
        answered = [o.response for o in outcomes if o.ok]
        higher_is_better = spec.metric == search_pb2.METRIC_INNER_PRODUCT
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(
            self._executor, assemble, answered, opts.k, higher_is_better, opts.include_payload, missing
        )
        self._metrics.queries.inc(queries.shape[0])
        if missing:
            self._metrics.partial.inc()
        return SearchOutcome(results, missing)

    def _check_failures(self, collection: str, outcomes: Sequence[Outcome], allow_partial: bool) -> list[str]:
        failed = [o for o in outcomes if not o.ok]
        if not failed:
            return []
        if all(o.error is not None and o.error.code == grpc.StatusCode.NOT_FOUND for o in outcomes):
            self._catalog.forget(collection)
            raise NotFound(f"collection {collection!r} does not exist")
        for outcome in failed:  # a shard lacking the collection (e.g. restarted empty) counts as a failed shard
            assert outcome.error is not None
            if outcome.error.code == grpc.StatusCode.INVALID_ARGUMENT:
                raise outcome.error
        names = [o.shard.name for o in failed]
        if allow_partial and len(failed) < len(outcomes):
            return names
        codes = {o.error.code for o in failed if o.error is not None}
        code = grpc.StatusCode.DEADLINE_EXCEEDED if codes == {grpc.StatusCode.DEADLINE_EXCEEDED} else grpc.StatusCode.UNAVAILABLE
        hint = "" if allow_partial else "; set partial_policy=PARTIAL_POLICY_ALLOW to accept results from the others"
        raise ShardSearchError(
            f"{len(failed)} of {len(outcomes)} shards did not answer ({', '.join(names)}): {failed[0].error}{hint}", code
        )


def to_hits(response: shard_pb2.ShardSearchResponse) -> ShardHits:
    shape = (response.n, response.k)
    ids = np.array(response.ids, dtype=object).reshape(shape)
    scores = np.frombuffer(response.scores_f32, dtype=codec.F32).reshape(shape)
    payloads = np.array(response.payloads, dtype=object).reshape(shape) if len(response.payloads) else None
    return ShardHits(ids, scores, payloads)


def assemble(
    responses: Sequence[shard_pb2.ShardSearchResponse], k: int, higher_is_better: bool, include_payload: bool,
    missing: list[str],
) -> list[search_pb2.SearchResponse]:
    """Merges the shards' n x k answers and builds one SearchResponse per query (runs in the executor)."""
    merged = merge([to_hits(r) for r in responses], k, higher_is_better)
    partial = bool(missing)
    results = []
    for row in range(merged.ids.shape[0]):
        ids = merged.ids[row]
        count = int(np.count_nonzero(ids != ""))
        scores = merged.scores[row, :count].tolist()
        if include_payload and merged.payloads is not None:
            payloads = merged.payloads[row]
            hits = [search_pb2.Hit(id=ids[j], score=scores[j], payload=payloads[j]) for j in range(count)]
        else:
            hits = [search_pb2.Hit(id=ids[j], score=scores[j]) for j in range(count)]
        results.append(search_pb2.SearchResponse(hits=hits, partial=partial, missing_shards=missing))
    return results
