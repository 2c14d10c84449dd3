"""Relevance metrics, pure: Recall@K, Precision@K, average precision and reciprocal rank of one query's hits, and a
query set's scores averaged per K (`score`). No I/O; `shardsearch eval` (shardsearch/tools/evaluate.py) feeds it.

Ranks are the order in which the server returned the hits (ties are not re-ordered); a repeated hit id counts once,
at its first rank; Precision@K divides by K, not by the hits returned.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import AbstractSet, Any, Iterable, Sequence


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
