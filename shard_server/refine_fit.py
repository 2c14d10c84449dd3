"""The re-ranking depth a shard's index needs, fitted to its data and to the number of shards a search reaches.

A search re-ranks k x refine_factor of the IVF-PQ candidates exactly. How deep that must go depends on the data
(how well 4-bit PQ orders it: real 384-d sentence embeddings need k x 4-16, a tight 32-d mixture more than k x 20;
../shared/PITFALLS.md) and on how many shards share the collection: the merged top 10 of S shards takes about 10 / S
of its hits from each, the ones each shard ranks first, and a shard's first few true neighbours sit high in its PQ
order. One fixed factor is either too shallow for some data or, for most, several times too deep in every shard.

So when a collection leaves refine_factor unset, each shard measures, on the held-out sample its retrain gate uses
(stored vectors as queries, their own item left out, shard_server/retrain.py), how many of each query's exact
neighbours a depth of (k + 1) x r of its PQ order holds, for r in LADDER, and keeps per shard count S the smallest r
whose estimated recall@10 of the *merged* answer is within TOLERANCE of the deepest rung's. The merged estimate
weights the shard's m-th neighbour by the chance that it is among the global top 10 when the items are spread
evenly (by id hash) over S shards: M, the number of the global top 10 on this shard, is Binomial(10, 1 / S), and the
estimate is E[hits of the shard's top M] / E[M] (tie-aware, as the gate's recall). Checked against real merged
recall on 100K x 384 embedding-like data and 32-d data, 1, 4 and 8 shards (docs/BENCHMARKS.md): within 0.01.

An explicit refine_factor is kept as it is, for every shard count.
"""

from __future__ import annotations

import math

import numpy as np

from shardsearch import index_params
from shardsearch.shard_server.retrain import RECALL_K, Sample

LADDER = (2, 3, 4, 6, 8, 12, 16, index_params.DEFAULT_REFINE_FACTOR)
"""Factors tried, shallowest first; the last is the depth an unfitted index uses."""
SHARD_COUNTS = (1, 2, 4, 8, 16, 32)
"""Shard counts a depth is fitted for; a search reaching S shards uses the largest of them <= S."""
TOLERANCE = 0.005
"""Recall@10 a fitted depth may lose on the sample against the deepest rung: about the sample's standard error."""
REFIT_GROWTH = 1.5
"""The depths are fitted again (with the next recall estimate) once the index holds this many times the codes it
held at the last fit: at most three refits between retrains, which come at 4x growth."""


def weights(shards: int) -> np.ndarray:
    """P(M = m) for m = 0..RECALL_K, M ~ Binomial(RECALL_K, 1 / shards): how many of a query's global top
    RECALL_K one of `shards` evenly filled shards holds."""
    p = 1.0 / shards
    return np.array([math.comb(RECALL_K, m) * p**m * (1 - p) ** (RECALL_K - m) for m in range(RECALL_K + 1)])


def merged_recall(good_within: np.ndarray, shards: int) -> float:
    """Estimated recall@10 of an S-shard merge from one shard's counts: `good_within[q, m - 1]` is how many of query
    q's candidates (inside the depth measured) score at least as well as its m-th exact neighbour."""
    found = np.minimum(np.arange(1, RECALL_K + 1)[None, :], good_within).mean(axis=0)  # E[hits | M = m]
    w = weights(shards)[1:]
    return float((w * found).sum() / (w * np.arange(1, RECALL_K + 1)).sum())


def fit(
    sample: Sample, labels: np.ndarray, scores: np.ndarray, valid: np.ndarray, inner_product: bool,
    floor_one_shard: float = 0.0,
) -> tuple[tuple[int, ...], dict[int, list[float]]]:
    """The factor to use per SHARD_COUNTS, from the sample's candidates in PQ order (`labels`, q x (RECALL_K + 1) x
    LADDER[-1], their exact `scores` and whether each is `valid`: alive, not the query's own item). The one-shard
    factor also keeps the estimate at `floor_one_shard` or above where the deepest rung reaches it (the retrain
    gate's current recall). Returns the factors and the estimates per shard count, by rung (for logs and tests)."""
    tops = sample.tops  # q x RECALL_K exact scores, best first
    slack = 1e-6 * np.abs(tops)[:, None, :]
    if inner_product:
        good = scores[:, :, None] >= tops[:, None, :] - slack
    else:
        good = scores[:, :, None] <= tops[:, None, :] + slack
    good &= valid[:, :, None]
    within = np.cumsum(good, axis=1, dtype=np.int32)  # q x depth x m
    width = labels.shape[1]
    factors, estimates = [], {}
    for shards in SHARD_COUNTS:
        # a search for k re-ranks k x r candidates: RECALL_K x r others, plus the query's own item, held out here
        row = [merged_recall(within[:, min(width, RECALL_K * r + 1) - 1, :], shards) for r in LADDER]
        need = row[-1] - TOLERANCE
        if shards == 1:
            need = max(need, min(floor_one_shard, row[-1]))
        factors.append(next(r for r, value in zip(LADDER, row) if value >= need))
        estimates[shards] = row
    return tuple(factors), estimates


def factor(chosen: index_params.IndexParams, shards: int) -> int:
    """The refine factor a search reaching `shards` shards uses (the collection's own when it is not fitted)."""
    table = chosen.refine_by_shards
    if not table:
        return chosen.refine_factor
    at = min(len(table), len(SHARD_COUNTS)) - 1
    while at > 0 and SHARD_COUNTS[at] > max(shards, 1):
        at -= 1
    return table[at]


def describe(table: tuple[int, ...]) -> str:
    """`refine fitted: k x 16 (1 shard), x 8 (2), ...` for DescribeCollection's index description."""
    parts = [f"x{f} ({s} shard{'s' if s > 1 else ''})" for s, f in zip(SHARD_COUNTS, table)]
    return "refine depth fitted: k " + ", ".join(parts)
