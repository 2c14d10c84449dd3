"""A collection's search path: IVF-PQ candidates and the exact fresh buffer, re-ranked exactly; filtered search.

Part of `Collection` (shard_server/index.py): candidates are taken under its lock (`_candidates`, which also records
what `explain` reports), then scored and ranked outside it (`_rank`), since rows below `_next` never change and a
resize makes new arrays. The FAISS-level steps (ivf_candidates, resolved, rerank, selected, exact_subset) are in
shard_server/ann.py; this module wires them to the collection's columns, once for every kind of search.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import faiss
import numpy as np

from shardsearch.shard_server import ann, refine_fit
from shardsearch.shard_server import vectors as vector_rows
from shardsearch.shard_server.columns import Columns
from shardsearch.shard_server.ids import IdTable
from shardsearch.v1 import search_pb2


@dataclass(frozen=True)
class LabelView:
    """What labels meant when a search took its candidates: the containers are replaced, never changed in place,
    when the collection is relabelled, so a result resolved after a relabel still names the right items."""

    id_of: IdTable
    payloads: dict[int, bytes]
    fields: dict[int, bytes]


@dataclass(frozen=True)
class SearchResult:
    labels: np.ndarray  # n x k int64, -1 where there are fewer than k hits
    scores: np.ndarray  # n x k float32 in the collection's metric
    view: LabelView | None = None
    """Resolve `labels` through this (ids_for, payloads_for, fields_for)."""


class SearchPath(Columns):
    """Search over the collection's rows (a part of Collection: see the module docstring)."""

    @property
    def exact_filter_max(self) -> int:
        """A filter matching at most this many items is answered by exact search over them (Collection's is its
        module's EXACT_FILTER_MAX)."""
        raise NotImplementedError

    def fields_for(self, labels: np.ndarray, view: LabelView | None = None) -> list[bytes]:
        with self._lock:
            fields = (view or self._view()).fields
            return [fields.get(label, b"") for label in labels.ravel().tolist()]

    # ---- filters ------------------------------------------------------------------------------------------

    def count_matching(self, flt: search_pb2.Filter) -> int:
        with self._lock:
            return int(np.count_nonzero(self._fields.mask(flt, self._next) & self._alive[: self._next]))

    def search(
        self, queries: np.ndarray, k: int, nprobe: int = 0, flt: search_pb2.Filter | None = None,
        explain: dict[str, Any] | None = None, shards: int = 1,
    ) -> SearchResult:
        """Top-k per query: IVF-PQ candidates and the exact buffer, re-ranked exactly, dead labels dropped.

        With a filter, only labels whose fields pass it, exactly: a filter matching at most
        `exact_filter_max` items
        is answered by exact search over just those; a broader one searches the IVF lists with a FAISS id selector
        (non-matching codes are skipped in the scan), probing more lists the more selective it is, and probes
        again, wider, for queries that found fewer than k matches while more exist. `shards`: how many shards the
        search reached, which sets this one's share of the re-ranking depth (`ann.depth`).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        ann.prefer_blas_from(queries.shape[1])
        if flt is not None and flt.WhichOneof("kind") is not None:
            return self._search_filtered(queries, k, nprobe, flt, explain, shards)
        with self._lock:
            found = self._candidates(queries, k, nprobe, explain, shards)
            view = self._view()
        return replace(self._rank(queries, k, found), view=view)

    def _view(self) -> LabelView:
        return LabelView(self._ids, self._payloads, self._fields.blobs)

    def try_search(self, queries: np.ndarray, k: int, nprobe: int = 0, shards: int = 1) -> SearchResult | None:
        """`search` without a filter, or None at once if a write or maintenance holds the collection (for a caller
        on an event loop, which must not wait for the lock)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        ann.prefer_blas_from(queries.shape[1])
        if not self._lock.acquire(blocking=False):
            return None
        try:
            found = self._candidates(queries, k, nprobe, shards=shards)
            view = self._view()
        finally:
            self._lock.release()
        return replace(self._rank(queries, k, found), view=view)

    def _candidates(
        self, queries: np.ndarray, k: int, nprobe: int, explain: dict[str, Any] | None = None, shards: int = 1,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, vector_rows.VectorRows] | None:
        """Under the lock: the IVF-PQ and fresh-buffer candidates (labels, valid, safe labels, the vectors), or None."""
        candidates = []
        trained = self._params is not None and self._ivf is not None and self._ivf.ntotal > 0
        if trained:
            candidates.append(ann.ivf_candidates(self._ivf, self._params, queries, k, nprobe, shards))
        start, stop = self._ivf_upto, self._next
        if stop > start:
            dead = (stop - start) - int(np.count_nonzero(self._alive[start:stop]))
            kb = min(stop - start, k + dead)
            _, found = faiss.knn(queries, self._vecs[start:stop], kb, metric=self.metric)
            candidates.append(np.where(found >= 0, found + start, -1))
        if explain is not None:
            explain.update(
                path="ivf" if trained else "flat", buffered=int(np.count_nonzero(self._alive[start:stop])),
                nprobe=min(nprobe or self._params.default_nprobe, self._params.nlist) if trained else 0,  # type: ignore[union-attr]
                refine_factor=refine_fit.factor(self._params, shards) if trained else 0,  # type: ignore[arg-type]
                refine_depth=candidates[0].shape[1] if trained else 0, shards_searched=shards,
                candidates=sum(c.shape[1] for c in candidates),
            )
        if not candidates:
            return None
        return (*ann.resolved(candidates, self._alive), self._vecs)  # rows below `next` never change; a resize makes a new array

    def _rank(
        self, queries: np.ndarray, k: int, found: tuple[np.ndarray, np.ndarray, np.ndarray, vector_rows.VectorRows] | None
    ) -> SearchResult:
        """Outside the lock: exact scores of the candidates, the top k."""
        if found is None:
            n = queries.shape[0]
            return SearchResult(np.full((n, k), -1, np.int64), np.zeros((n, k), np.float32))
        labels, valid, safe, vecs = found
        return SearchResult(*ann.rerank(labels, valid, self._exact_scores(queries, safe, vecs), k, self.inner_product))

    def _search_filtered(self, queries: np.ndarray, k: int, nprobe: int, flt: search_pb2.Filter,
                         explain: dict[str, Any] | None = None, shards: int = 1) -> SearchResult:
        n = queries.shape[0]
        with self._lock:
            upto = self._next
            view, vecs = self._view(), self._vecs
            mask = self._fields.mask(flt, upto) & self._alive[:upto]
            matching = int(np.count_nonzero(mask))
            if explain is not None:
                explain.update(matching=matching, path="exact over matches", candidates=matching, shards_searched=shards,
                               buffered=int(np.count_nonzero(self._alive[self._ivf_upto : upto])))
            if matching == 0:
                return SearchResult(np.full((n, k), -1, np.int64), np.zeros((n, k), np.float32))
            if matching <= self.exact_filter_max or self._ivf is None or self._ivf.ntotal == 0:
                subset = np.flatnonzero(mask)
            else:
                assert self._params is not None
                found = ann.selected(self._ivf, self._params, queries, k, nprobe, mask, matching, self._live,
                                     self._ivf_upto, self._vecs, self.metric, self.inner_product, explain, shards)
                return SearchResult(*found, view=view)
        return SearchResult(*ann.exact_subset(queries, k, subset, vecs, self.metric), view=view)

    def ids_for(self, labels: np.ndarray, view: LabelView | None = None) -> list[str]:
        table = (view or self._view()).id_of
        flat = labels.ravel().tolist()
        if min(flat, default=0) >= 0:
            return table.ids_of(flat)
        return [table.id_of(label) if label >= 0 else "" for label in flat]

    def payloads_for(self, labels: np.ndarray, view: LabelView | None = None) -> list[bytes]:
        with self._lock:
            payloads = (view or self._view()).payloads
            return [payloads.get(label, b"") for label in labels.ravel().tolist()]
