"""When a shard's IVF-PQ index is due for retraining, and how a retrained (shadow) index is judged before it replaces
the current one.

IVF centroids and PQ codebooks are fitted to the vectors a shard held when it trained; as data is added or changes,
they drift. Three signals say a retrain is due, all cheap to read (the maintenance thread checks them every second):
- writes since training (upserts, overwrites included) of at least RETRAIN_GROWTH - 1 times the vectors trained on:
  without overwrites, the shard then holds RETRAIN_GROWTH times what it trained on (the size rule of the index
  parameters, shardsearch/index_params.py, no longer fits);
- IVF list imbalance: the largest list over the mean list size (kept up to date as the index changes, O(nlist));
- a recall estimate: recall@10 of the shard's search path on a held-out sample, against exact search, measured at
  most every RECALL_CHECK_INTERVAL_S when the index changed (or on demand).

A retrain builds the candidate on a snapshot, then measures the current and the candidate search paths on one sample
and promotes the candidate only if its recall is no worse. A candidate for a grown shard has more, smaller lists, so
the rule's nprobe covers less of it: unless the collection fixes default_nprobe, the gate raises the candidate's
nprobe by half until it is no worse (up to nlist) and promotes it with that nprobe. Held-out sample: RECALL_SAMPLE
stored vectors are the queries, each one's own item left out of its exact neighbours and of the answers
(leave-one-out). Recall is tie-aware: an answer counts when its exact score is as good as the 10th exact
neighbour's, so duplicate vectors in the data do not make a correct answer look wrong.

After any retrain, automatic ones wait for HOLD_WRITES more writes or HOLD_S (a retrain asked for by RPC does not):
a reason that persists (a rejected candidate, data on which no index reaches RECALL_DUE_BELOW) must not retrain in
a loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import faiss
import numpy as np

from shardsearch.v1 import admin_pb2

RETRAIN_GROWTH = 4.0  # due once writes since training reach (this - 1) x the vectors trained on
IMBALANCE_DUE = 10.0  # due when the largest IVF list holds this many times the mean: fresh k-means gives 2-5 on real
# data (bigann10k: 3.7); a 4x shifted growth on a stale quantizer gave 20-70 in tests
IMBALANCE_MIN_MEAN = 16.0  # the imbalance counts only when lists hold this many vectors on average (noise below)
RECALL_DUE_BELOW = 0.90  # due when the estimated recall@10 falls below this (the default nprobe and refine give
# 0.98-0.99 on bigann10k, shardsearch/index_params.py)
RECALL_K = 10
RECALL_SAMPLE = 200  # held-out queries per estimate: the standard error of recall@10 is ~0.005 at 0.95
RECALL_CHECK_INTERVAL_S = 300.0  # an estimate costs an exact search of the sample over the whole shard
HOLD_WRITES = 0.25  # after a retrain, automatic ones wait for this fraction of the vectors trained on in new writes,
HOLD_S = 3600.0  # or this long: a rejected retrain on the same data would be rejected again
EXACT_CHUNK = 65_536  # vectors per exact-search slice (bounds the copy of the shard's vectors)

State = admin_pb2.RetrainStatus.State


@dataclass
class Tracker:
    """A collection's retraining state. Read and written under the collection's lock."""

    state: int = State.STATE_IDLE
    asked: bool = False
    """A Retrain RPC asked for a retrain that the maintenance thread has not started yet."""
    trained_upto: int = 0
    """Labels below this existed when the current index was trained: writes since = next label - this."""
    imbalance: float = 0.0
    index_version: int = 0
    """Bumped whenever the index's contents change (trained, absorbed, compacted)."""
    recall: float = 0.0
    recall_at_ms: int = 0
    recall_version: int = -1
    next_check: float = 0.0
    """Monotonic time before which the maintenance thread does not measure the recall again."""
    hold_next: int = 0
    hold_until: float = 0.0
    fit_size: int = 0
    """Codes the index held when its re-ranking depths were last fitted (shard_server/refine_fit.py)."""
    last: admin_pb2.RetrainOutcome = field(default_factory=admin_pb2.RetrainOutcome)

    def reasons(self, live: int, trained_on: int, written: int, threshold: int) -> list[str]:
        """Why a retrain is due (empty: it is not). O(1)."""
        out = []
        if trained_on and live >= threshold and written >= (RETRAIN_GROWTH - 1) * trained_on:
            out.append(f"vectors written since training: {written} ({written / trained_on:.0%} of the {trained_on} "
                       f"trained on; due at {RETRAIN_GROWTH - 1:.0%})")
        if self.imbalance >= IMBALANCE_DUE:
            out.append(f"IVF lists out of balance: the largest holds {self.imbalance:.1f}x the mean "
                       f"(due at {IMBALANCE_DUE:g}x)")
        if self.recall_at_ms and self.recall < RECALL_DUE_BELOW:
            out.append(f"estimated recall@10 {self.recall:.3f} is below {RECALL_DUE_BELOW:g}")
        return out

    def held(self, next_label: int) -> bool:
        """Whether automatic retrains wait: the last one was recent and little has been written since."""
        return next_label < self.hold_next and time.monotonic() < self.hold_until

    def hold(self, next_label: int, trained_on: int) -> None:
        self.hold_next = next_label + max(1, int(HOLD_WRITES * trained_on))
        self.hold_until = time.monotonic() + HOLD_S

    def measured(self, recall: float, version: int) -> None:
        self.recall, self.recall_version = recall, version
        self.recall_at_ms = int(time.time() * 1000)
        self.next_check = time.monotonic() + RECALL_CHECK_INTERVAL_S

    def measure_due(self) -> bool:
        return self.recall_version != self.index_version and time.monotonic() >= self.next_check

    def changed(self, index: faiss.Index) -> None:
        """After the index's contents changed (under the lock): a new version and its list imbalance."""
        self.index_version += 1
        self.imbalance = list_imbalance(index)


def list_imbalance(index: faiss.Index) -> float:
    """Largest IVF list over the mean list size; 0.0 when lists are too small to tell (or the sizes cannot be read).
    About 0.5 us per list."""
    try:
        sizes = _list_sizes(index)
    except (RuntimeError, AttributeError):  # not an IVF index FAISS can read list sizes from
        return 0.0
    mean = sizes.mean() if len(sizes) else 0.0
    return float(sizes.max() / mean) if mean >= IMBALANCE_MIN_MEAN else 0.0


def _list_sizes(index: faiss.Index) -> np.ndarray:
    if hasattr(index, "getListLength"):  # a GPU IVF index
        nlist, size = index.nlist, index.getListLength
    else:
        ivf = faiss.extract_index_ivf(index)
        nlist, size = ivf.nlist, ivf.invlists.list_size
    return np.fromiter((size(i) for i in range(nlist)), dtype=np.int64, count=nlist)


@dataclass(frozen=True)
class Sample:
    """Held-out queries: stored vectors, each with the exact score of its 10th nearest other item."""

    labels: np.ndarray
    queries: np.ndarray
    bound: np.ndarray
    tops: np.ndarray
    """Each query's RECALL_K exact neighbour scores, best first (`bound` is the last column)."""


def draw_sample(
    vecs: np.ndarray, labels: np.ndarray, metric: int, score: Callable[[np.ndarray, np.ndarray], np.ndarray],
    seed: int, size: int = RECALL_SAMPLE,
) -> Sample | None:
    """Picks `size` of `labels` and finds their exact neighbours among `labels` (None if too few to measure).
    `score(queries, labels)` gives the exact scores the search path re-ranks with, so a bound and an answer's score
    for the same pair are computed alike."""
    if len(labels) <= RECALL_K + 1:
        return None
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(labels, size=min(size, len(labels)), replace=False))
    queries = vecs[chosen]
    _, found = exact_search(queries, vecs, labels, RECALL_K + 1, metric)
    others = found != chosen[:, None]  # leave-one-out: the query's own item is no neighbour
    others[others.sum(axis=1) > RECALL_K, RECALL_K] = False  # own item not among the 11: keep the first 10
    neighbours = found[others].reshape(len(chosen), RECALL_K)
    exact = score(queries, neighbours)
    tops = -np.sort(-exact, axis=1) if metric == faiss.METRIC_INNER_PRODUCT else np.sort(exact, axis=1)
    return Sample(chosen, queries, tops[:, -1].copy(), tops)


def exact_search(
    queries: np.ndarray, vecs: np.ndarray, labels: np.ndarray, k: int, metric: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among `labels` (slices of EXACT_CHUNK rows, merged): scores and labels."""
    keep_max = metric == faiss.METRIC_INNER_PRODUCT
    heap = faiss.ResultHeap(len(queries), k, keep_max=keep_max)
    for lo in range(0, len(labels), EXACT_CHUNK):
        part = labels[lo : lo + EXACT_CHUNK]
        scores, found = faiss.knn(queries, vecs[part], min(k, len(part)), metric=metric)
        heap.add_result(scores, np.where(found >= 0, part[np.maximum(found, 0)], -1))
    heap.finalize()
    return heap.D, heap.I


def recall(sample: Sample, labels: np.ndarray, scores: np.ndarray, inner_product: bool) -> float:
    """Tie-aware recall@10 of answers (exact scores, own item already left out) against the sample's bounds."""
    slack = 1e-6 * np.abs(sample.bound)[:, None]
    good = scores >= sample.bound[:, None] - slack if inner_product else scores <= sample.bound[:, None] + slack
    hits = np.count_nonzero(good[:, :RECALL_K] & (labels[:, :RECALL_K] >= 0), axis=1)
    return float(np.mean(np.minimum(hits, RECALL_K)) / RECALL_K)


def outcome(promoted: bool, before: float, after: float, started: float, trained_on: int,
            reason: str) -> admin_pb2.RetrainOutcome:
    return admin_pb2.RetrainOutcome(
        finished_unix_ms=int(time.time() * 1000), promoted=promoted, recall_before=before, recall_after=after,
        duration_s=time.perf_counter() - started, trained_on=trained_on, reason=reason,
    )


def verdict(before: float, after: float, note: str = "") -> tuple[bool, str]:
    """The gate: promote only if the candidate's recall on the sample is no worse."""
    if after >= before:
        return True, f"promoted: recall@10 on the sample {before:.3f} -> {after:.3f}{note}"
    return False, (f"kept the current index: the retrained one's recall@10 on the sample is lower "
                   f"({after:.3f} < {before:.3f}{note})")
