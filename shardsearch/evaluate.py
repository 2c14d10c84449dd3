"""Offline evaluation (`shardsearch eval`): Recall@K, Precision@K, mAP and MRR of a labelled query set.

Four layers, each usable alone:
- metrics, pure: `metrics_at(hits, relevant, k)` scores one query; `score(...)` averages a query set per K;
- the query set: `load_queries(path)` reads JSON (a list of objects) or JSONL (one object a line);
- the run: `await run_eval(EvalConfig(...))` searches every query through a coordinator and returns an `EvalResult`,
  whose `table()` the command prints and whose `to_json()` `--json` writes;
- the command: `add_arguments` and `run`, registered in `shardsearch.cli`.

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
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import AbstractSet, Any, Iterable, NoReturn, Sequence

import grpc
import numpy as np

from shardsearch import codec, security
from shardsearch.client import AsyncClient, Unavailable
from shardsearch.v1 import search_pb2, search_pb2_grpc

logger = logging.getLogger(__name__)

DEFAULT_AT = (1, 5, 10, 100)
DEFAULT_K = 10
CONNECT_TIMEOUT_S = 10.0
QUERY_FIELDS = ("query_id", "relevant", "relevant_ids", "vector", "id", "text")


# --- metrics (pure) -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metrics:
    """One query's scores at one cutoff K (or, from `score`, their mean over the evaluated queries)."""

    recall: float
    precision: float
    average_precision: float
    reciprocal_rank: float

    def to_json(self) -> dict[str, float]:
        return {"recall": self.recall, "precision": self.precision, "map": self.average_precision,
                "mrr": self.reciprocal_rank}


def relevant_ranks(hits: Sequence[str], relevant: AbstractSet[str], k: int) -> list[int]:
    """The 1-based ranks within the top k at which a relevant id appears for the first time, ascending."""
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")
    if not relevant:
        raise ValueError("no relevant ids: the metrics are undefined (such a query is skipped)")
    seen: set[str] = set()
    ranks = []
    for rank, hit in enumerate(hits[:k], 1):
        if hit in relevant and hit not in seen:
            seen.add(hit)
            ranks.append(rank)
    return ranks


def recall_at(hits: Sequence[str], relevant: AbstractSet[str], k: int) -> float:
    """|relevant ids in the top k| / |relevant ids|."""
    return len(relevant_ranks(hits, relevant, k)) / len(relevant)


def precision_at(hits: Sequence[str], relevant: AbstractSet[str], k: int) -> float:
    """|relevant ids in the top k| / k (k, not the hits returned: a short answer scores lower)."""
    return len(relevant_ranks(hits, relevant, k)) / k


def average_precision_at(hits: Sequence[str], relevant: AbstractSet[str], k: int) -> float:
    """The sum of precision@i over the ranks i <= k that hold a relevant id, divided by min(|relevant|, k)."""
    ranks = relevant_ranks(hits, relevant, k)
    return sum(found / rank for found, rank in enumerate(ranks, 1)) / min(len(relevant), k)


def reciprocal_rank_at(hits: Sequence[str], relevant: AbstractSet[str], k: int) -> float:
    """1 / the rank of the first relevant id within the top k, or 0 if there is none."""
    ranks = relevant_ranks(hits, relevant, k)
    return 1.0 / ranks[0] if ranks else 0.0


def metrics_at(hits: Sequence[str], relevant: AbstractSet[str], k: int) -> Metrics:
    """All four metrics of one query at cutoff k."""
    return Metrics(recall_at(hits, relevant, k), precision_at(hits, relevant, k),
                   average_precision_at(hits, relevant, k), reciprocal_rank_at(hits, relevant, k))


def cutoffs(at: Iterable[int], k: int) -> tuple[int, ...]:
    """The K values to report: each capped at k (a search of k hits says nothing beyond k), sorted, no repeats."""
    values = list(at)
    if not values or min(values) < 1 or k < 1:
        raise ValueError(f"K values and k must be >= 1, got at={values}, k={k}")
    return tuple(sorted({min(value, k) for value in values}))


@dataclass(frozen=True)
class QueryResult:
    """What the server answered for one query: its hits in rank order, or the error (gRPC code name, message)."""

    query_id: str
    relevant: frozenset[str]
    hits: tuple[str, ...] = ()
    error: tuple[str, str] | None = None

    @property
    def status(self) -> str:
        """skipped (no relevant ids, never searched), failed, or evaluated."""
        if not self.relevant:
            return "skipped"
        return "failed" if self.error is not None else "evaluated"


@dataclass(frozen=True)
class QueryScore:
    """One query in the report: its status, its metrics per K (evaluated only) and its error (failed only)."""

    query_id: str
    status: str
    metrics: dict[int, Metrics] = field(default_factory=dict)
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"query_id": self.query_id, "status": self.status, "error": self.error,
                "metrics": {str(k): m.to_json() for k, m in self.metrics.items()}}


@dataclass(frozen=True)
class EvalResult:
    """A whole run: mean metrics per K over the evaluated queries, the counts, the errors by code and the settings."""

    metrics: dict[int, Metrics]
    queries: int
    evaluated: int
    skipped: int
    failed: int
    errors: dict[str, dict[str, Any]]
    """Per gRPC code name: {"count": n, "example": the first message}."""
    elapsed_s: float
    settings: dict[str, Any]
    scores: tuple[QueryScore, ...]

    def to_json(self, per_query: bool = False) -> dict[str, Any]:
        """The --json document; `per_query` adds every query's own scores (to compare two runs query by query)."""
        doc: dict[str, Any] = {
            "metrics": {str(k): m.to_json() for k, m in self.metrics.items()}, "queries": self.queries,
            "evaluated": self.evaluated, "skipped": self.skipped, "failed": self.failed, "errors": self.errors,
            "elapsed_s": self.elapsed_s, "settings": self.settings,
        }
        if per_query:
            doc["per_query"] = [s.to_json() for s in self.scores]
        return doc

    def table(self) -> str:
        s = self.settings
        nprobe = s.get("nprobe") or "the collection's default"
        lines = [
            f"{s.get('collection', '')!r} at {s.get('address', '')}: k={s.get('k')}, nprobe {nprobe}",
            f"{self.queries} queries: {self.evaluated} evaluated, {self.skipped} skipped (no relevant ids), "
            f"{self.failed} failed, in {self.elapsed_s:.2f}s",
            f"{'K':>6} {'Recall@K':>10} {'Precision@K':>12} {'mAP@K':>10} {'MRR@K':>10}",
        ]
        for k in self.settings.get("ks", sorted(self.metrics)):
            m = self.metrics.get(k)
            values = [m.recall, m.precision, m.average_precision, m.reciprocal_rank] if m else [None] * 4
            cells = ["-" if v is None else f"{v:.4f}" for v in values]
            lines.append(f"{k:>6} {cells[0]:>10} {cells[1]:>12} {cells[2]:>10} {cells[3]:>10}")
        for code, error in self.errors.items():
            lines.append(f"failed: {code} x{error['count']} (e.g. {error['example']})")
        return "\n".join(lines)


def score(results: Sequence[QueryResult], ks: Sequence[int], settings: dict[str, Any],
          elapsed_s: float = 0.0) -> EvalResult:
    """Scores every query at every K and averages over the evaluated ones (pure; run it off the event loop)."""
    scores: list[QueryScore] = []
    errors: dict[str, dict[str, Any]] = {}
    counts = Counter(result.status for result in results)
    for result in results:
        if result.status == "evaluated":
            scores.append(QueryScore(result.query_id, "evaluated",
                                     {k: metrics_at(result.hits, result.relevant, k) for k in ks}))
        elif result.status == "failed" and result.error is not None:
            code, message = result.error
            errors.setdefault(code, {"count": 0, "example": message})["count"] += 1
            scores.append(QueryScore(result.query_id, "failed", error=f"{code}: {message}"))
        else:
            scores.append(QueryScore(result.query_id, "skipped"))
    n = counts["evaluated"]
    means = {k: _mean([s.metrics[k] for s in scores if s.status == "evaluated"]) for k in ks} if n else {}
    return EvalResult(means, len(results), n, counts["skipped"], counts["failed"], errors, elapsed_s,
                      {**settings, "ks": list(ks)}, tuple(scores))


def _mean(values: Sequence[Metrics]) -> Metrics:
    return Metrics(*(math.fsum(getattr(m, name) for m in values) / len(values)
                     for name in ("recall", "precision", "average_precision", "reciprocal_rank")))


# --- the query set --------------------------------------------------------------------------------------------------

class QuerySetError(ValueError):
    """A query file that cannot be used; the message names the file and the line (JSONL) or item (JSON list)."""


@dataclass(frozen=True)
class Query:
    """One labelled query: `kind` is vector (`value` packed float32), id (an item id) or text."""

    query_id: str
    relevant: frozenset[str]
    kind: str
    value: bytes | str


def load_queries(path: str | Path) -> list[Query]:
    """Reads a query set: a JSON list of objects, or JSONL (one object a line; blank lines ignored).

    Each object: `relevant` (or `relevant_ids`): a list of ids (strings, or integers taken as their decimal string),
    may be empty; exactly one of `vector` (a list of numbers), `id` (an item id, searched with SearchById) or `text`;
    optionally `query_id` (default "line N" / "item N"). Any other field is an error, so a typo is not ignored.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QuerySetError(f"cannot read query file {path}: {exc}") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QuerySetError(f"{path}: not valid JSON: {exc}") from None
        numbered = [(f"item {i}", obj) for i, obj in enumerate(items, 1)]
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    numbered.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    reason = f"not valid JSON ({exc.msg}, column {exc.colno})"
                    raise QuerySetError(f"{path}: line {number}: {reason}") from None
    if not numbered:
        raise QuerySetError(f"{path}: no queries")
    queries, seen = [], set()
    for where, obj in numbered:
        try:
            query = parse_query(obj, where)
        except QuerySetError as exc:
            raise QuerySetError(f"{path}: {where}: {exc}") from None
        if query.query_id in seen:
            raise QuerySetError(f"{path}: {where}: query_id {query.query_id!r} is used twice")
        seen.add(query.query_id)
        queries.append(query)
    return queries


def parse_query(obj: Any, default_id: str) -> Query:
    """One query object, checked; errors say what is wrong without the file position (the caller adds it)."""
    if not isinstance(obj, dict):
        raise QuerySetError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(QUERY_FIELDS))
    if unknown:
        raise QuerySetError(f"unknown field(s) {', '.join(map(repr, unknown))} (expected {', '.join(QUERY_FIELDS)})")
    if "relevant" in obj and "relevant_ids" in obj:
        raise QuerySetError("give 'relevant' or 'relevant_ids', not both")
    relevant = obj.get("relevant", obj.get("relevant_ids"))
    if not isinstance(relevant, list):
        raise QuerySetError("'relevant' must be a list of ids (it may be empty)")
    kinds = [name for name in ("vector", "id", "text") if name in obj]
    if len(kinds) != 1:
        raise QuerySetError(f"needs exactly one of 'vector', 'id' or 'text', got {' and '.join(kinds) or 'none'}")
    kind = kinds[0]
    query_id = _item_id(obj["query_id"], "query_id") if "query_id" in obj else default_id
    value: bytes | str
    if kind == "vector":
        value = _vector(obj["vector"])
    elif kind == "id":
        value = _item_id(obj["id"], "id")
    else:
        if not isinstance(obj["text"], str) or not obj["text"]:
            raise QuerySetError("'text' must be a non-empty string")
        value = obj["text"]
    return Query(query_id, frozenset(_item_id(r, "relevant") for r in relevant), kind, value)


def _item_id(value: Any, name: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise QuerySetError(f"{name!r}: ids are non-empty strings or integers, got {value!r}")
    return value


def _vector(value: Any) -> bytes:
    if not isinstance(value, list) or not value or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise QuerySetError("'vector' must be a non-empty list of numbers")
    if not all(math.isfinite(v) for v in value):
        raise QuerySetError("'vector' contains NaN or Inf")
    return codec.pack(np.asarray(value, dtype=np.float32))


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


def _fail(message: str) -> NoReturn:
    print(f"shardsearch eval: error: {message}", file=sys.stderr)
    sys.exit(2)


def run(args: argparse.Namespace) -> None:
    """The command: exit 2 when the run could not start, 1 when not one query was evaluated, else 0."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        result = asyncio.run(run_eval(config_from_args(args)))
    except (ValueError, OSError) as exc:  # QuerySetError, SecurityConfigError, ConnectionError among them
        _fail(str(exc))
    print(result.table(), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result.to_json(args.per_query), indent=2) + "\n")
    if not result.evaluated:
        sys.exit(1)
