"""The search path shared by Search, BatchSearch and StreamSearch: cache, dynamic batcher, one RPC per shard, merge.

Shard failures are handled by the request's partial policy; merging and building responses run in an executor.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Hashable, Sequence

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter

from shardsearch import codec
from shardsearch.batching import Batcher, BatchingConfig, BatchMetrics
from shardsearch.coordinator.cache import Lookup, ResultCache, entry_keys
from shardsearch.coordinator.catalog import Catalog
from shardsearch.coordinator.merge import ShardHits, merge
from shardsearch.coordinator.router import Router
from shardsearch.coordinator.shards import Outcome, ShardPool
from shardsearch.errors import AnswerTooLarge, NotFound, ShardSearchError
from shardsearch.offload import Offload
from shardsearch.v1 import search_pb2, shard_pb2

LOOKUP_BATCH_ROWS = 1024
SMALL_MERGE_HITS = 160  # candidates (queries x shards x k) up to which a merge runs inline, in plain Python (~100 us)


@dataclass(frozen=True)
class SearchOptions:
    k: int
    nprobe: int = 0
    allow_partial: bool = False
    include_payload: bool = False
    min_shards: int = 0
    """Answer once this many shards answered (0: every shard, or one with allow_partial)."""
    filter: bytes = b""
    """The search_pb2.Filter, serialised deterministically (b"": none): hashable, so part of the batching key."""
    include_fields: bool = False
    """Hits carry their structured fields (asked for with include_payload, or needed for diversity)."""


@dataclass(frozen=True)
class _Job:
    spec: search_pb2.Collection
    queries: np.ndarray


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
    """Search = result cache lookup, then the dynamic batcher (one RPC per shard per batch), merge, cache fill."""

    def __init__(
        self, pool: ShardPool, router: Router, catalog: Catalog, executor: Executor, metrics: SearchMetrics,
        batching: BatchingConfig, batch_metrics: BatchMetrics, lookup_metrics: BatchMetrics,
        cache: ResultCache | None = None,
    ) -> None:
        self._pool = pool
        self._router = router
        self._catalog = catalog
        self._run = Offload(executor)
        self._metrics = metrics
        self._cache = cache
        self._batcher: Batcher[_Job, SearchOutcome] = Batcher("coordinator batcher", batching, self._run_batch, batch_metrics)
        # Concurrent cache lookups share one Redis round trip too (redis-py costs ~100 us of loop time per call).
        lookup_batching = replace(batching, max_batch_size=LOOKUP_BATCH_ROWS, max_queue_delay_us=0, max_in_flight=2)
        self._lookups: Batcher[Sequence[str], Lookup] = Batcher(
            "cache lookup batcher", lookup_batching, self._lookup_batch, lookup_metrics
        )

    @property
    def cache(self) -> ResultCache | None:
        return self._cache

    async def search(
        self, spec: search_pb2.Collection, queries: np.ndarray, opts: SearchOptions, timeout: float,
        use_cache: bool = True, explain: search_pb2.Explain | None = None,
    ) -> SearchOutcome:
        """`explain`, when given, is filled in: the cache outcome, and the shards' own accounts (an explained
        search is sent alone, not batched)."""
        self._metrics.queries.inc(queries.shape[0])
        if self._cache is None or not use_cache:
            if explain is not None:
                explain.cache = "skipped"
                return await self._search_now(spec, queries, opts, timeout, explain)
            return await self._batched(spec, queries, opts, timeout)
        n = queries.shape[0]
        args = (
            spec.dim, spec.metric, opts.k, opts.nprobe, opts.include_payload, queries, opts.filter, opts.include_fields
        )
        keys = entry_keys(*args) if n <= 16 else await self._run(entry_keys, *args)
        lookup = await self._lookups.submit(spec.name, keys, n, timeout)
        misses = [i for i, value in enumerate(lookup.values) if value is None]
        results: list[search_pb2.SearchResponse | None] = [None] * n
        for i, value in enumerate(lookup.values):
            if value is not None:
                results[i] = response = search_pb2.SearchResponse.FromString(value)
                response.cached = True
        if explain is not None:
            explain.cache = "miss" if misses else "hit"
        if not misses:
            return SearchOutcome(results, [])  # type: ignore[arg-type]
        if len(misses) == n:
            subset = queries
        else:
            subset = queries[misses] if len(misses) <= 16 else await self._run(np.take, queries, misses, 0)
        if explain is not None:
            fresh = await self._search_now(spec, subset, opts, timeout, explain)
        else:
            fresh = await self._batched(spec, subset, opts, timeout)
        for i, response in zip(misses, fresh.results, strict=True):
            results[i] = response
        if not fresh.missing and lookup.token is not None:  # partial answers are never cached
            self._cache.store(spec.name, lookup.token, [(keys[i], r.SerializeToString()) for i, r in zip(misses, fresh.results)])
        return SearchOutcome(results, fresh.missing)  # type: ignore[arg-type]

    async def _lookup_batch(self, collection: Hashable, batch: list[Sequence[str]], timeout: float) -> list[Lookup]:
        assert self._cache is not None
        keys = batch[0] if len(batch) == 1 else [key for keys in batch for key in keys]
        lookup = await self._cache.lookup(str(collection), keys)
        split, offset = [], 0
        for keys in batch:
            split.append(Lookup(lookup.token, lookup.values[offset : offset + len(keys)]))
            offset += len(keys)
        return split

    async def _batched(
        self, spec: search_pb2.Collection, queries: np.ndarray, opts: SearchOptions, timeout: float
    ) -> SearchOutcome:
        key = (spec.name, spec.dim, spec.metric, opts)
        return await self._batcher.submit(key, _Job(spec, queries), queries.shape[0], timeout)

    async def _run_batch(self, key: Hashable, jobs: list[_Job], timeout: float) -> list[SearchOutcome]:
        """One shard RPC per shard for the whole batch; the merged answers are split back per caller."""
        opts: SearchOptions = key[3]  # type: ignore[index]
        spec = jobs[0].spec
        queries = jobs[0].queries if len(jobs) == 1 else np.concatenate([job.queries for job in jobs])
        outcome = await self._search_now(spec, queries, opts, timeout)
        split, offset = [], 0
        for job in jobs:
            rows = job.queries.shape[0]
            split.append(SearchOutcome(outcome.results[offset : offset + rows], outcome.missing))
            offset += rows
        return split

    async def _search_now(
        self, spec: search_pb2.Collection, queries: np.ndarray, opts: SearchOptions, timeout: float,
        explain: search_pb2.Explain | None = None,
    ) -> SearchOutcome:
        request = shard_pb2.ShardSearchRequest(
            collection=spec.name, queries_f32=codec.pack(queries), n=queries.shape[0], k=opts.k,
            nprobe=opts.nprobe, include_payload=opts.include_payload, include_fields=opts.include_fields,
            filter=search_pb2.Filter.FromString(opts.filter) if opts.filter else None, explain=explain is not None,
        )
        dedupe = False

        async def attempt(timeout: float) -> list[Outcome]:
            nonlocal dedupe
            request.topology_version = self._router.version
            shards = self._router.search_shards()
            request.shards_searched = self._router.spread()  # a shard's fitted re-ranking depth follows it
            dedupe = len(shards) > 1 and self._router.dedupe  # while shards move, an id may be on two of them
            return await self._pool.fan_out("Search", [(shard, request) for shard in shards], timeout)

        outcomes = await self._router.routed(attempt, time.monotonic() + timeout)
        missing = self._check_failures(spec.name, outcomes, opts)
        answered = [o.response for o in outcomes if o.ok]
        higher_is_better = spec.metric == search_pb2.METRIC_INNER_PRODUCT
        args = (answered, opts.k, higher_is_better, opts.include_payload, missing, opts.include_fields, dedupe)
        merging = time.perf_counter()
        results = assemble_small(*args) if small(answered) else await self._run(assemble_large, *args)
        if explain is not None:
            explain.merge_seconds = time.perf_counter() - merging
            for outcome in outcomes:
                if outcome.ok:
                    shard = explain.shards.add()
                    shard.CopyFrom(outcome.response.explain)
                    shard.shard, shard.call_seconds = outcome.shard.name, outcome.seconds
                    shard.address = outcome.replica.address if outcome.replica is not None else ""
        if missing:
            self._metrics.partial.inc()
        return SearchOutcome(results, missing)

    async def close(self) -> None:
        await self._lookups.close()
        await self._batcher.close()
        if self._cache is not None:
            await self._cache.close()

    def _check_failures(self, collection: str, outcomes: Sequence[Outcome], opts: SearchOptions) -> list[str]:
        failed = [o for o in outcomes if not o.ok]
        if not failed:
            return []
        if all(o.error is not None and o.error.code == grpc.StatusCode.NOT_FOUND for o in outcomes):
            self._catalog.forget(collection)
            raise NotFound(f"collection {collection!r} does not exist")
        for outcome in failed:  # a shard lacking the collection (e.g. restarted empty) counts as a failed shard
            assert outcome.error is not None
            if outcome.error.code == grpc.StatusCode.INVALID_ARGUMENT or isinstance(outcome.error, AnswerTooLarge):
                raise outcome.error
        names = [o.shard.name for o in failed]
        needed = min(required_shards(opts, len(outcomes)), len(outcomes))
        answered = len(outcomes) - len(failed)
        if answered >= needed:
            return names
        codes = {o.error.code for o in failed if o.error is not None}
        same = codes.pop() if len(codes) == 1 else None  # every failure alike and telling: keep its status
        code = same if same in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DATA_LOSS) else grpc.StatusCode.UNAVAILABLE
        hint = "" if needed < len(outcomes) else (
            "; set partial_policy=PARTIAL_POLICY_ALLOW or min_shards to accept results from the others"
        )
        raise ShardSearchError(
            f"{len(failed)} of {len(outcomes)} shards did not answer ({', '.join(names)}), {needed} needed: "
            f"{failed[0].error}{hint}", code,
        )


def required_shards(opts: SearchOptions, total: int) -> int:
    """Shards that must answer: min_shards if set, else all (PARTIAL_POLICY_FAIL) or one (ALLOW)."""
    if opts.min_shards:
        return max(1, opts.min_shards)
    return 1 if opts.allow_partial else total


def to_hits(response: shard_pb2.ShardSearchResponse) -> ShardHits:
    shape = (response.n, response.k)
    ids = np.array(response.ids, dtype=object).reshape(shape)
    scores = np.frombuffer(response.scores_f32, dtype=codec.F32).reshape(shape)
    payloads = np.array(response.payloads, dtype=object).reshape(shape) if len(response.payloads) else None
    fields = None
    if len(response.fields) == ids.size and ids.size:
        fields = np.empty(ids.size, dtype=object)
        fields[:] = list(response.fields)
        fields = fields.reshape(shape)
    return ShardHits(ids, scores, payloads, fields)


def small(responses: Sequence[shard_pb2.ShardSearchResponse]) -> bool:
    """Whether merging these answers costs less than an executor hop (measured: one query over 4 shards at k 10 is
    ~15 us in plain Python, ~110 us through numpy; a thread-pool hop is 100-200 us on these machines)."""
    return bool(responses) and sum(r.n * r.k for r in responses) <= SMALL_MERGE_HITS


def assemble(
    responses: Sequence[shard_pb2.ShardSearchResponse], k: int, higher_is_better: bool, include_payload: bool,
    missing: list[str], include_fields: bool = False, dedupe: bool = False,
) -> list[search_pb2.SearchResponse]:
    """Merges the shards' n x k answers and builds one SearchResponse per query: small merges in plain Python
    (inline on the event loop), large ones with numpy (in the executor)."""
    if small(responses):
        return assemble_small(responses, k, higher_is_better, include_payload, missing, include_fields, dedupe)
    return assemble_large(responses, k, higher_is_better, include_payload, missing, include_fields, dedupe)


def assemble_large(
    responses: Sequence[shard_pb2.ShardSearchResponse], k: int, higher_is_better: bool, include_payload: bool,
    missing: list[str], include_fields: bool = False, dedupe: bool = False,
) -> list[search_pb2.SearchResponse]:
    """`assemble` with numpy (coordinator.merge): for many queries, in the executor."""
    merged = merge([to_hits(r) for r in responses], k, higher_is_better, dedupe)
    partial = bool(missing)
    results = []
    for row in range(merged.ids.shape[0]):
        ids = merged.ids[row]
        count = int(np.count_nonzero(ids != ""))
        scores = merged.scores[row, :count].tolist()
        response = search_pb2.SearchResponse(partial=partial, missing_shards=missing)
        add = response.hits.add  # builds each hit in place (Hit(...) objects passed in would be copied: ~2x the time)
        if include_payload and merged.payloads is not None:
            payloads = merged.payloads[row]
            for j in range(count):
                add(id=ids[j], score=scores[j], payload=payloads[j])
        else:
            for j in range(count):
                add(id=ids[j], score=scores[j])
        if include_fields and merged.fields is not None:
            for hit, fields in zip(response.hits, merged.fields[row, :count].tolist()):
                if fields is not None and fields.values:
                    hit.fields.MergeFrom(fields.values)
        results.append(response)
    return results


def assemble_small(
    responses: Sequence[shard_pb2.ShardSearchResponse], k: int, higher_is_better: bool, include_payload: bool,
    missing: list[str], include_fields: bool = False, dedupe: bool = False,
) -> list[search_pb2.SearchResponse]:
    """`assemble` for a few dozen candidates, without numpy: the same answer (best first; ties in shard order, then
    rank order; with `dedupe` each id once, at its best score)."""
    n = responses[0].n
    sign = -1.0 if higher_is_better else 1.0
    payloads = include_payload and all(len(r.payloads) for r in responses)
    scores = [np.frombuffer(r.scores_f32, dtype=codec.F32).tolist() for r in responses]
    partial = bool(missing)
    results = []
    for row in range(n):
        candidates = []
        for s, response in enumerate(responses):
            width, ids, row_scores = response.k, response.ids, scores[s]
            for j in range(row * width, (row + 1) * width):
                if ids[j]:
                    candidates.append((sign * row_scores[j], s, j))
        candidates.sort()
        result = search_pb2.SearchResponse(partial=partial, missing_shards=missing)
        add, seen, count = result.hits.add, set(), 0
        for _, s, j in candidates:
            response = responses[s]
            item_id = response.ids[j]
            if dedupe:
                if item_id in seen:
                    continue
                seen.add(item_id)
            hit = add(id=item_id, score=scores[s][j], payload=response.payloads[j] if payloads else b"")
            if include_fields and len(response.fields) == response.n * response.k and response.fields[j].values:
                hit.fields.MergeFrom(response.fields[j].values)
            count += 1
            if count == k:
                break
        results.append(result)
    return results
