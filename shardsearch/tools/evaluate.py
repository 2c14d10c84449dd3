"""Offline evaluation (`shardsearch eval`): Recall@K, Precision@K, mAP and MRR of a labelled query set.

Four layers, each usable alone:
- metrics, pure (shardsearch/tools/relevance.py): `metrics_at(hits, relevant, k)` scores one query; `score(...)` averages
  a query set per K;
- the query set (shardsearch/tools/query_sets.py): `load_queries(path)` reads JSON (a list of objects) or JSONL;
- the run: `await run_eval(EvalConfig(...))` searches every query through a coordinator and returns an `EvalResult`,
  whose `table()` the command prints and whose `to_json()` `--json` writes;
- the command: `add_arguments` and `run`, registered in `shardsearch.tools.cli`.

Conventions (the README's "Offline evaluation" says the same):
- Ranks are the order in which the server returned the hits. Hits with equal scores are not re-ordered: a tie is
  ranked as returned, so the metrics measure what a caller sees.
- A repeated hit id counts once, at its first rank: the repeat keeps its slot (it is what the caller was shown) but is
  never relevant, so duplicates can only lower the scores.
- Precision@K divides by K, not by the hits returned: fewer than K hits lower it.
- A query with no relevant ids is not searched: it is left out of every mean and counted in `skipped`. A query that
  fails (a gRPC error: say FAILED_PRECONDITION for a text query to a coordinator without a text model) is left out
  too and counted in `failed` by code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import grpc

from shardsearch import security
from shardsearch.client import AsyncClient, Unavailable
from shardsearch.tools.exits import fail
from shardsearch.tools.query_sets import QUERY_FIELDS, Query, QuerySetError, load_queries, parse_query
from shardsearch.tools.relevance import (
    EvalResult,
    Metrics,
    QueryResult,
    QueryScore,
    average_precision_at,
    cutoffs,
    metrics_at,
    precision_at,
    recall_at,
    reciprocal_rank_at,
    relevant_ranks,
    score,
)
from shardsearch.v1 import search_pb2, search_pb2_grpc

__all__ = [
    "CONNECT_TIMEOUT_S", "DEFAULT_AT", "DEFAULT_K", "QUERY_FIELDS", "EvalConfig", "EvalResult", "Metrics", "Query",
    "QueryResult", "QueryScore", "QuerySetError", "add_arguments", "average_precision_at", "config_from_args",
    "cutoffs", "load_queries", "metrics_at", "parse_query", "precision_at", "recall_at", "reciprocal_rank_at",
    "relevant_ranks", "run", "run_eval", "score", "search_all", "search_one",
]

logger = logging.getLogger(__name__)

DEFAULT_AT = (1, 5, 10, 100)
DEFAULT_K = 10
CONNECT_TIMEOUT_S = 10.0


# --- the run --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalConfig(security.ClientSecurity):
    """One evaluation run; each field is the `shardsearch eval` flag of the same name. Checked on creation."""

    address: str = "127.0.0.1:50051"
    collection: str = ""
    queries: str = ""
    """The query file (see `load_queries`); ignored when `run_eval` is handed the queries."""
    k: int = DEFAULT_K
    """Hits asked for per query; K values above it are reported at k."""
    at: tuple[int, ...] = DEFAULT_AT
    nprobe: int = 0
    """IVF lists probed per shard (0: the collection's default_nprobe)."""
    skip_cache: bool = False
    concurrency: int = 16
    """Calls in flight at once."""
    timeout: float = 5.0
    """Per-call deadline in seconds."""

    def __post_init__(self) -> None:
        if not self.collection:
            raise ValueError("collection is required")
        if self.concurrency < 1 or self.timeout <= 0 or self.nprobe < 0:
            raise ValueError("concurrency must be >= 1, timeout > 0 and nprobe >= 0")
        cutoffs(self.at, self.k)

    @property
    def ks(self) -> tuple[int, ...]:
        return cutoffs(self.at, self.k)


async def search_one(stub: search_pb2_grpc.SearchServiceStub, config: EvalConfig, query: Query) -> QueryResult:
    """Searches one query (SearchByText for a text, SearchById for an id, Search for a vector); a gRPC error becomes
    the result's error, never an exception."""
    if not query.relevant:
        return QueryResult(query.query_id, query.relevant)
    shared = {"collection": config.collection, "k": config.k, "nprobe": config.nprobe, "skip_cache": config.skip_cache}
    try:
        if query.kind == "text":
            call = stub.SearchByText(search_pb2.SearchByTextRequest(text=query.value, **shared), timeout=config.timeout)
        elif query.kind == "id":
            call = stub.SearchById(search_pb2.SearchByIdRequest(id=query.value, **shared), timeout=config.timeout)
        else:
            call = stub.Search(search_pb2.SearchRequest(vector_f32=query.value, **shared), timeout=config.timeout)
        response = await call
    except grpc.aio.AioRpcError as exc:
        return QueryResult(query.query_id, query.relevant, error=(exc.code().name, exc.details() or ""))
    return QueryResult(query.query_id, query.relevant, hits=tuple(hit.id for hit in response.hits))


async def search_all(stub: search_pb2_grpc.SearchServiceStub, config: EvalConfig,
                     queries: Sequence[Query]) -> list[QueryResult]:
    """Every query, `config.concurrency` calls at a time (workers draining one iterator), results in query order."""
    results: list[QueryResult | None] = [None] * len(queries)
    pending = iter(range(len(queries)))

    async def worker() -> None:
        for i in pending:
            results[i] = await search_one(stub, config, queries[i])

    await asyncio.gather(*(worker() for _ in range(min(config.concurrency, len(queries)))))
    return [r for r in results if r is not None]


async def run_eval(config: EvalConfig, queries: Sequence[Query] | None = None) -> EvalResult:
    """Loads the query set (unless given), searches it through `config.address` and scores the answers.

    Raises ConnectionError when the coordinator cannot be reached, QuerySetError for a bad query file and
    SecurityConfigError for bad TLS/token settings; failed searches are counted in the result, not raised.
    """
    if queries is None:
        queries = await asyncio.to_thread(load_queries, config.queries)
    # No gRPC retries: a failed search is counted, as the caller would have seen it.
    client = AsyncClient(config.address, timeout=config.timeout, retries=False, **config.client_kwargs())
    try:
        try:
            await client.wait_ready(CONNECT_TIMEOUT_S)
        except Unavailable:
            raise ConnectionError(f"could not connect to {config.address}") from None
        started = time.perf_counter()
        results = await search_all(search_pb2_grpc.SearchServiceStub(client.channel), config, queries)
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    return await asyncio.to_thread(score, results, config.ks, asdict(config), elapsed)


# --- the command ----------------------------------------------------------------------------------------------------

def _k_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"K values must be integers >= 1, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arg = parser.add_argument
    arg("--address", default="127.0.0.1:50051", help="coordinator host:port (default 127.0.0.1:50051)")
    arg("--collection", required=True, help="collection to search")
    arg("--queries", required=True, help="labelled query set: JSON list or JSONL (see the README)")
    arg("--k", type=int, help=f"hits asked for per query (default: the largest --at, or {DEFAULT_K})")
    arg("--at", type=_k_list, help="comma-separated cutoffs K to report (default 1,5,10,100, each capped at --k)")
    arg("--nprobe", type=int, default=0, help="IVF lists probed per shard (default: the collection's)")
    arg("--skip-cache", action="store_true", help="bypass the coordinator's result cache")
    arg("--concurrency", type=int, default=16, help="calls in flight at once (default 16)")
    arg("--timeout", type=float, default=5.0, help="per-call deadline in seconds (default 5)")
    arg("--json", type=Path, help="write the result as JSON here")
    arg("--per-query", action="store_true", help="with --json: add each query's own metrics")
    security.ClientSecurity.add_arguments(parser)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The flags as an EvalConfig: k defaults to the largest --at when --at is given, else to 10."""
    at = args.at or DEFAULT_AT
    k = args.k if args.k is not None else (max(args.at) if args.at else DEFAULT_K)
    if args.at and max(args.at) > k:
        logger.warning("K values above --k %d are reported at %d", k, k)
    return EvalConfig(
        address=args.address, collection=args.collection, queries=args.queries, k=k, at=at, nprobe=args.nprobe,
        skip_cache=args.skip_cache, concurrency=args.concurrency, timeout=args.timeout,
        **security.ClientSecurity.from_args(args),
    )


def run(args: argparse.Namespace) -> None:
    """The command: exit 2 when the run could not start, 1 when not one query was evaluated, else 0."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        result = asyncio.run(run_eval(config_from_args(args)))
    except (ValueError, OSError) as exc:  # QuerySetError, SecurityConfigError, ConnectionError among them
        fail("eval", str(exc))
    print(result.table(), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result.to_json(args.per_query), indent=2) + "\n")
    if not result.evaluated:
        sys.exit(1)
