"""One collection's shard: raw vectors by label, a trained IVF-PQ index and an exact fresh buffer, searched together.

Labels are int64s handed out in write order and never reused: an overwrite kills the old label and appends a new
one, so a label's vector never changes. Labels below `ivf_upto` are in the trained index (if still alive); labels
from `ivf_upto` to `next` form the fresh buffer, searched exactly. Every search re-ranks its candidates exactly with
the stored float vectors and drops dead labels, so deletes and overwrites are exact whatever the index holds.

Every item carries a write version (the coordinator's hybrid clock). A write replaces an id's item only with a higher
version, and a delete leaves a marker with its version, so replicas that receive the same writes in any order, twice,
or from a peer while catching up, end in the same state (last writer wins per id).

All index access happens under one lock; training runs outside it on a snapshot and swaps the result in. A retrain
replaces a trained index only if its recall@10 on a held-out sample is no worse (shard_server/retrain.py says when
one is due and how the sample is measured).
Callers run these methods off the event loop (an executor or a batcher thread).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import faiss
import numpy as np

from shard_server import ann, device
from shard_server import ids as id_table
from shard_server import retrain as retraining
from shard_server import vectors as vector_rows
from shard_server.fields import FieldIndex
from shard_server.ids import IdTable
from shardsearch import index_params, topology
from shardsearch.ring import key_hashes
from shardsearch.v1 import admin_pb2, search_pb2

logger = logging.getLogger(__name__)

ABSORB_THRESHOLD = 2_048  # fresh vectors that get encoded into a trained index in one go (the buffer is brute force)
IDLE_ABSORB_S = 2.0  # a smaller buffer is absorbed once writes have paused this long
COMPACT_DEAD_FRACTION = 0.2  # remove dead codes from the IVF lists past this fraction
DELETE_MARKER_RETENTION_NS = 7 * 24 * 3600 * 10**9  # a replica down longer than this must be re-seeded
EXPORT_WINDOW = 65_536  # labels scanned per step of an export
CHECKSUM_CHUNK = 65_536  # items hashed per step of a checksum
EXACT_FILTER_MAX = 20_000  # a filter matching at most this many items is answered by exact search over them


RELABEL_MIN_DEAD = 4_096  # an untrained collection with more dead rows than this, and than live ones, is relabelled


class Relabelled(Exception):
    """A label cursor from before a relabel (see Collection.relabel)."""


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


class Collection:
    marker_retention_ns: int = DELETE_MARKER_RETENTION_NS
    """How long delete markers are kept (snapshots drop older ones); the shard sets it from --delete-retention-s."""

    def __init__(self, spec: search_pb2.Collection, use_gpu: bool = False) -> None:
        self.spec = spec
        self.dim = spec.dim
        self.inner_product = spec.metric == search_pb2.METRIC_INNER_PRODUCT
        self.metric = faiss.METRIC_INNER_PRODUCT if self.inner_product else faiss.METRIC_L2
        self.train_threshold = spec.index.train_threshold or index_params.DEFAULT_TRAIN_THRESHOLD
        self.use_gpu = use_gpu
        self._lock = threading.Lock()
        self._vecs = vector_rows.VectorRows(vector_rows.kind_of(spec.index), self.dim, 1024)
        self._alive = np.zeros(1024, dtype=bool)
        self._ver = np.zeros(1024, dtype=np.uint64)
        self._hash = np.zeros(1024, dtype=np.uint64)  # id_hash of each label's id: the order of ListIds
        self._deleted: dict[str, int] = {}  # delete markers: id -> version of the delete
        self._ids = IdTable()  # id by label, live label by id
        self._payloads: dict[int, bytes] = {}
        self._payload_bytes = 0  # the bytes of the payloads (for `memory`)
        self._fields = FieldIndex(len(self._alive))
        self._next = 0
        self._live = 0
        self._ivf: faiss.Index | None = None
        self._ivf_upto = 0
        self._ivf_dead = 0
        self._params: index_params.IndexParams | None = None
        self._trained_on = 0
        self._training = False
        self._retrain = retraining.Tracker()
        self._last_write = time.monotonic()
        self.generation = 0
        """Bumped by each relabel: label cursors (export_chunk) from an older generation start again."""
        self.keep: Callable[[np.ndarray], np.ndarray] | None = None
        """Which ids (by hash) this shard owns under the ring layout (None: all). Writes of other ids are dropped."""

    # ---- writes -------------------------------------------------------------------------------------------

    def upsert(
        self, ids: list[str], vectors: np.ndarray, payloads: list[bytes] | None = None,
        versions: np.ndarray | None = None, fields: Sequence[search_pb2.Fields] | None = None,
    ) -> int:
        """Stores each item unless the id already holds a newer (or the same) version; returns len(ids)."""
        n = len(ids)
        if versions is None:
            versions = np.zeros(n, dtype=np.uint64)
        hashes = id_hashes(ids)
        with self._lock:
            current = self._ids.find(ids, hashes, self._alive)
            # `_owned` under the lock: a new layout's purge and `keep` change together
            wanted = self._owned(hashes) & self._newer_mask(ids, versions, current)
            if len(ids) != len(set(ids)):  # one write per id (requests are checked; this guards replays)
                last = {item_id: i for i, item_id in enumerate(ids)}
                wanted &= np.fromiter((last[item_id] == i for i, item_id in enumerate(ids)), dtype=bool, count=n)
            if not wanted.all():
                keep = np.flatnonzero(wanted)
                ids = [ids[i] for i in keep.tolist()]
                vectors, versions, hashes, current = vectors[keep], versions[keep], hashes[keep], current[keep]
                payloads = [payloads[i] for i in keep.tolist()] if payloads else payloads
                fields = [fields[i] for i in keep.tolist()] if fields else fields
            count = len(ids)
            self._reserve(self._next + count)
            for old in current[current >= 0].tolist():
                self._kill(old)
            if self._deleted:
                for item_id in ids:
                    self._deleted.pop(item_id, None)
            start = self._next
            self._vecs.put(start, vectors)
            self._alive[start : start + count] = True
            self._ver[start : start + count] = versions
            self._hash[start : start + count] = hashes
            self._ids.append(ids)
            if payloads:
                for offset, payload in enumerate(payloads):
                    if payload:
                        self._payloads[start + offset] = payload
                        self._payload_bytes += len(payload)
            if fields:
                for offset, item_fields in enumerate(fields):
                    if item_fields.values:
                        self._fields.add(start + offset, item_fields)
            self._next += count
            self._live += count
            self._ids.settle(self._hash, self._alive)
            self._last_write = time.monotonic()
        return n

    def delete(self, ids: list[str], versions: np.ndarray | None = None) -> int:
        """Deletes each id unless it holds a newer version; versioned deletes leave a marker. Returns the number
        of live items removed."""
        deleted = 0
        if versions is None:
            versions = np.zeros(len(ids), dtype=np.uint64)
        hashes = id_hashes(ids)
        with self._lock:
            current = self._ids.find(ids, hashes, self._alive)
            wanted = self._owned(hashes) & self._newer_mask(ids, versions, current)
            for i in np.flatnonzero(wanted).tolist():
                label, version = int(current[i]), int(versions[i])
                if label >= 0 and self._alive[label]:
                    self._kill(label)
                    deleted += 1
                if version:
                    self._deleted[ids[i]] = max(version, self._deleted.get(ids[i], 0))
        return deleted

    def room_for_markers(self, count: int, limit: int) -> int:
        """Delete markers this collection holds after dropping the expired ones, if `count` more would pass
        `limit` (else 0: there is room)."""
        with self._lock:
            if len(self._deleted) + count <= limit:
                return 0
            horizon = time.time_ns() - self.marker_retention_ns
            self._deleted = {i: v for i, v in self._deleted.items() if v > horizon}
            return len(self._deleted) if len(self._deleted) + count > limit else 0

    def _owned(self, hashes: np.ndarray) -> np.ndarray:
        keep = self.keep
        return np.ones(len(hashes), dtype=bool) if keep is None else keep(hashes)

    def set_keep(self, keep: Callable[[np.ndarray], np.ndarray] | None) -> int:
        """Sets `keep` and drops the items (and delete markers) of ids it leaves out, leaving no marker: they live
        on at their new owner. Returns the number of items dropped."""
        with self._lock:
            self.keep = keep
            if keep is None:
                return 0
            labels = np.flatnonzero(self._alive[: self._next])
            foreign = labels[~keep(self._hash[labels])]
            for label in foreign.tolist():
                self._kill(label)
            if self._deleted:
                marked = list(self._deleted)
                for item_id, owned in zip(marked, keep(id_hashes(marked)).tolist()):
                    if not owned:
                        del self._deleted[item_id]
        return len(foreign)

    def newer(self, ids: list[str], versions: np.ndarray) -> np.ndarray:
        """Which of these (id, version) writes would change something here (a copy skips the rest)."""
        hashes = id_hashes(ids)
        with self._lock:
            return self._newer_mask(ids, versions, self._ids.find(ids, hashes, self._alive))

    def _newer_mask(self, ids: list[str], versions: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Whether each write with `versions` beats what its id holds (its live label `current`, else its delete
        marker); unversioned writes only beat unversioned. Under the lock."""
        held = np.where(current >= 0, self._ver[np.maximum(current, 0)], np.uint64(0))
        if self._deleted:
            for i in np.flatnonzero(current < 0).tolist():
                held[i] = self._deleted.get(ids[i], 0)
        versions = versions.astype(np.uint64, copy=False)
        return (versions > held) | ((versions == held) & (held == 0))

    def _kill(self, label: int) -> None:
        self._alive[label] = False
        self._live -= 1
        self._payload_bytes -= len(self._payloads.pop(label, b""))
        self._fields.drop(label)
        if label < self._ivf_upto:
            self._ivf_dead += 1

    def _reserve(self, size: int) -> None:
        capacity = len(self._alive)
        if size <= capacity:
            return
        while capacity < size:
            capacity *= 2
        vecs = self._vecs.grown(capacity, self._next)
        alive = np.zeros(capacity, dtype=bool)
        alive[: self._next] = self._alive[: self._next]
        ver = np.zeros(capacity, dtype=np.uint64)
        ver[: self._next] = self._ver[: self._next]
        hashes = np.zeros(capacity, dtype=np.uint64)
        hashes[: self._next] = self._hash[: self._next]
        self._vecs, self._alive, self._ver, self._hash = vecs, alive, ver, hashes
        self._fields.grow(capacity)

    # ---- reads --------------------------------------------------------------------------------------------

    def get(self, ids: list[str]) -> tuple[list[str], np.ndarray, list[bytes]]:
        hashes = id_hashes(ids)
        with self._lock:
            labels = self._ids.find(ids, hashes, self._alive)
            found = np.flatnonzero(labels >= 0)
            labels = labels[found]
            vectors = np.array(self._vecs[labels], dtype=np.float32)
            payloads = [self._payloads.get(label, b"") for label in labels.tolist()]
        return [ids[i] for i in found.tolist()], vectors, payloads

    def fields_of_ids(self, ids: list[str]) -> list[bytes]:
        """Serialised Fields of each id that exists (b"" for none), in the order `get` returns them."""
        hashes = id_hashes(ids)
        with self._lock:
            labels = self._ids.find(ids, hashes, self._alive)
            return [self._fields.get(label) for label in labels[labels >= 0].tolist()]

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

        With a filter, only labels whose fields pass it, exactly: a filter matching at most EXACT_FILTER_MAX items
        is answered by exact search over just those; a broader one searches the IVF lists with a FAISS id selector
        (non-matching codes are skipped in the scan), probing more lists the more selective it is, and probes
        again, wider, for queries that found fewer than k matches while more exist. `shards`: how many shards the
        search reached, which sets this one's share of the re-ranking depth (`ann.depth`).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
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
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
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
                refine_factor=self._params.refine_factor if trained else 0,  # type: ignore[union-attr]
                refine_depth=candidates[0].shape[1] if trained else 0, shards_searched=shards,
                candidates=sum(c.shape[1] for c in candidates),
            )
        if not candidates:
            return None
        return (*ann.resolved(candidates, self._alive), self._vecs)  # rows below `next` never change; a resize makes a new array

    def _rank(
        self, queries: np.ndarray, k: int, found: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None
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
            if matching <= EXACT_FILTER_MAX or self._ivf is None or self._ivf.ntotal == 0:
                subset = np.flatnonzero(mask)
            else:
                assert self._params is not None
                found = ann.selected(self._ivf, self._params, queries, k, nprobe, mask, matching, self._live,
                                     self._ivf_upto, self._vecs, self.metric, self.inner_product, explain, shards)
                return SearchResult(*found, view=view)
        return SearchResult(*ann.exact_subset(queries, k, subset, vecs, self.metric), view=view)

    def _exact_scores(self, queries: np.ndarray, labels: np.ndarray, vecs: vector_rows.VectorRows) -> np.ndarray:
        """Exact scores of each query against its candidate rows (of the stored vectors, as the store holds them)."""
        return vecs.scores(queries, labels, self.inner_product)

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

    # ---- maintenance: training, retraining, absorbing the buffer, compaction ---------------------------------

    def pending_work(self) -> str | None:
        """What the maintenance thread should do next ("train", "retrain", "absorb", "compact", "rebuild",
        "measure"), or None. O(1)."""
        if self._training:
            return None
        tracker = self._retrain
        if self._ivf is None:
            if self._live >= self.train_threshold and not tracker.held(self._next):
                return "train"
            dead = self._next - self._live
            return "relabel" if dead >= RELABEL_MIN_DEAD and dead > self._live else None
        if tracker.asked or (self._due_reasons() and not tracker.held(self._next)):
            return "retrain"
        buffered = self._next - self._ivf_upto
        if buffered >= ABSORB_THRESHOLD or (buffered and time.monotonic() - self._last_write >= IDLE_ABSORB_S):
            return "absorb"
        if self._ivf_dead > COMPACT_DEAD_FRACTION * max(1, self._ivf.ntotal) and self._ivf_dead >= 1000:
            return "compact" if device.can_remove(self._ivf) else "rebuild"
        return "measure" if tracker.measure_due() else None

    def maintain(self) -> None:
        """Runs pending work until there is none (call from a background thread)."""
        while (work := self.pending_work()) is not None:
            if work == "rebuild":  # a GPU index cannot remove ids: a new one drops the dead codes (no recall gate)
                self.retrain(gate=False)
            else:
                {"train": self.train, "retrain": self.retrain, "absorb": self.absorb, "compact": self.compact,
                 "measure": self.measure_recall, "relabel": self.relabel}[work]()

    def relabel(self) -> int:
        """Packs the live rows of an untrained collection into labels 0..live-1 and lets the dead ones go (each
        overwrite or delete leaves one; without this an id overwritten a million times costs a million rows of
        memory and of every exact search). Returns the rows reclaimed.

        New arrays and containers replace the old ones, which are never changed again: a search that took its
        candidates before resolves them through its LabelView, a FAISS scan outside the lock reads the old arrays,
        and an export resumes from the start when the generation changed. Trained collections keep their labels
        (their IVF index holds them)."""
        with self._lock:
            if self._ivf is not None or self._training:
                return 0
            upto = self._next
            live = np.flatnonzero(self._alive[:upto])
            n = len(live)
            capacity = 1024
            while capacity < n:
                capacity *= 2
            vecs = self._vecs.taken(live, capacity)
            alive = np.zeros(capacity, dtype=bool)
            alive[:n] = True
            ver = np.zeros(capacity, dtype=np.uint64)
            ver[:n] = self._ver[live]
            hashes = np.zeros(capacity, dtype=np.uint64)
            hashes[:n] = self._hash[live]
            old_labels = live.tolist()
            id_of = self._ids.ids_of(old_labels)
            payloads = {new: self._payloads[old] for new, old in enumerate(old_labels) if old in self._payloads}
            blobs = self._fields.blobs
            fields = {new: blobs[old] for new, old in enumerate(old_labels) if old in blobs}
            self._vecs, self._alive, self._ver, self._hash = vecs, alive, ver, hashes
            self._ids, self._payloads = id_table.from_labels(id_of, capacity, hashes, alive), payloads
            self._fields = FieldIndex.rebuilt(fields, capacity)
            self._payload_bytes = sum(map(len, payloads.values()))
            self._next, self._live = n, n
            self._ivf_upto = self._ivf_dead = 0
            self._retrain.hold_next = max(0, self._retrain.hold_next - (upto - n))
            self.generation += 1
        logger.info("collection %s: relabelled %d live rows, %d dead ones reclaimed", self.spec.name, n, upto - n)
        return upto - n

    def _due_reasons(self) -> list[str]:
        """Why a retrain is due (under the lock, or racing benignly from pending_work). O(1)."""
        if self._ivf is None:
            return []
        written = self._next - self._retrain.trained_upto
        return self._retrain.reasons(self._live, self._trained_on, written, self.train_threshold)

    def train(self) -> None:
        """Trains an index and swaps it in without the recall gate (the first index)."""
        self.retrain(gate=False)

    def retrain(
        self, gate: bool = True, options: search_pb2.IndexOptions | None = None
    ) -> admin_pb2.RetrainOutcome | None:
        """Builds a shadow index on a snapshot of the live vectors and swaps it in if its recall@10 on a held-out
        sample is no worse than the current index's (no gate for the first index, or with gate=False).

        Searches and writes go on meanwhile: the lock is held only to snapshot and to swap, and items written
        after the snapshot stay in the exact buffer. `options` replaces the collection's index options for this
        candidate only. Returns the outcome, or None when a retrain was already running.
        """
        with self._lock:
            if self._training:
                return None
            self._training = True
            tracker = self._retrain
            tracker.asked = False
            tracker.state = retraining.State.STATE_TRAINING
            upto = self._next
            alive = self._alive[:upto].copy()
            first = self._ivf is None
            gate = gate and not first
            vecs = self._vecs  # rows below `upto` never change: safe to read outside the lock
        labels = np.flatnonzero(alive).astype(np.int64)
        started = time.perf_counter()
        result = retraining.outcome(False, 0.0, 0.0, started, len(labels), "failed: interrupted")
        try:
            if vecs.wants_fit() and len(labels):
                vecs = self._quantize(vecs, labels, upto)
            result = self._shadow(vecs, labels, alive, upto, gate, options, started, first)
        except Exception as exc:  # kept for RetrainStatus; the current index stays
            logger.exception("collection %s: retraining failed", self.spec.name)
            result = retraining.outcome(False, 0.0, 0.0, started, len(labels), f"failed: {exc}")
        finally:
            with self._lock:
                tracker.state = retraining.State.STATE_IDLE
                tracker.last = result
                tracker.hold(self._next, len(labels))
                self._training = False
        return result

    def _quantize(self, vecs: vector_rows.VectorRows, labels: np.ndarray, upto: int) -> vector_rows.VectorRows:
        """Fits an sq8 store's range on the live rows and re-encodes them (outside the lock), then swaps the encoded
        store in with the rows written meanwhile; returns it."""
        quantizer = vecs.fit(labels)
        encoded = vecs.quantized(quantizer, upto)
        with self._lock:
            current, stop = self._vecs, self._next
            if encoded.capacity < current.capacity:
                encoded = encoded.grown(current.capacity, upto)
            encoded.data[upto:stop] = quantizer.compute_codes(np.ascontiguousarray(current.data[upto:stop]))
            self._vecs = encoded
        logger.info("collection %s: vectors stored as sq8 (%d bytes a row, was %d)", self.spec.name,
                    encoded.row_bytes, vecs.row_bytes)
        return encoded

    def _shadow(
        self, vecs: np.ndarray, labels: np.ndarray, alive: np.ndarray, upto: int, gate: bool,
        options: search_pb2.IndexOptions | None, started: float, first: bool = False,
    ) -> admin_pb2.RetrainOutcome:
        """Builds the candidate, evaluates it against the current index (if `gate`), and swaps it in if it passes."""
        opts = self.spec.index if options is None else options
        index, chosen = ann.build(self.dim, self.metric, vecs, labels, opts, self.use_gpu)
        tracker, before, after = self._retrain, 0.0, 0.0
        sample = None
        promote, reason = True, "trained the first index" if first else "rebuilt without the recall gate"
        if gate:
            with self._lock:
                tracker.state = retraining.State.STATE_EVALUATING
            sample = retraining.draw_sample(vecs, labels, self.metric, self._scorer(vecs), seed=upto)
            if sample is None:
                reason = "promoted: too few vectors to measure recall"
            else:
                before = self._sample_recall(sample, vecs, alive, upto)
                fixed = bool((self.spec.index if options is None else options).default_nprobe)
                chosen, after, note = self._fit_nprobe(sample, vecs, alive, upto, index, chosen, before, fixed)
                promote, reason = retraining.verdict(before, after, note)
        with self._lock:
            if promote:
                self._ivf, self._params, self._ivf_upto = index, chosen, upto
                self._ivf_dead = len(labels) - int(np.count_nonzero(self._alive[labels]))
                self._trained_on = len(labels)
                tracker.trained_upto = upto
                tracker.changed(index)
                tracker.next_check = time.monotonic() + retraining.RECALL_CHECK_INTERVAL_S
            if sample is not None:
                tracker.measured(after if promote else before, tracker.index_version)
        logger.info(
            "collection %s: %s %s on %d vectors in %.2fs: %s", self.spec.name, "trained" if promote else "rejected",
            chosen.factory(), len(labels), time.perf_counter() - started, reason,
        )
        return retraining.outcome(promote, before, after, started, len(labels), reason)

    def _fit_nprobe(
        self, sample: retraining.Sample, vecs: np.ndarray, alive: np.ndarray, upto: int, index: faiss.Index,
        chosen: index_params.IndexParams, before: float, fixed: bool,
    ) -> tuple[index_params.IndexParams, float, str]:
        """The candidate's recall on the sample at its default nprobe and, while that is below `before` (and the
        collection does not fix default_nprobe), at 1.5 times the nprobe, up to nlist: a shard that grew gets more,
        smaller lists, so the same nprobe covers less of it. Returns the parameters to promote with, their recall
        and a note on the nprobe for the outcome."""
        after = self._sample_recall(sample, vecs, alive, upto, (index, chosen))
        rule, at_rule = chosen.default_nprobe, after
        while after < before and not fixed and chosen.default_nprobe < chosen.nlist:
            chosen = replace(chosen, default_nprobe=min(chosen.nlist, math.ceil(1.5 * chosen.default_nprobe)))
            after = self._sample_recall(sample, vecs, alive, upto, (index, chosen))
        if chosen.default_nprobe == rule:
            return chosen, after, ""
        return chosen, after, f" at nprobe {chosen.default_nprobe} (nprobe {rule} gave {at_rule:.3f})"

    def _scorer(self, vecs: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        return lambda queries, labels: self._exact_scores(queries, np.ascontiguousarray(labels), vecs)

    def _sample_recall(
        self, sample: retraining.Sample, vecs: np.ndarray, alive: np.ndarray, upto: int,
        shadow: tuple[faiss.Index, index_params.IndexParams] | None = None,
    ) -> float:
        """recall@10 on the sample of a search path as `search` runs it (IVF-PQ candidates at the default nprobe
        plus the exact buffer, re-ranked exactly) over the snapshot's live items: the current index's, searched
        under the lock like any search, or a shadow's, which covers the whole snapshot."""
        queries, k = sample.queries, retraining.RECALL_K + 1  # one more: the query's own item is left out
        if shadow is None:
            with self._lock:
                start = min(self._ivf_upto, upto)
                found = ann.ivf_candidates(self._ivf, self._params, queries, k)
        else:
            start, found = upto, ann.ivf_candidates(*shadow, queries, k)
        candidates = [found]
        buffered = start + np.flatnonzero(alive[start:upto])
        if len(buffered):
            candidates.append(retraining.exact_search(queries, vecs, buffered, k, self.metric)[1])
        labels, valid, safe = ann.resolved(candidates, alive[:upto])
        valid &= labels != sample.labels[:, None]  # the sample's own items are held out
        found, scores = ann.rerank(labels, valid, self._exact_scores(queries, safe, vecs), retraining.RECALL_K,
                                   self.inner_product)
        return retraining.recall(sample, found, scores, self.inner_product)

    def measure_recall(self) -> float:
        """Estimates the current search path's recall@10 on a held-out sample (an exact search of the sample over
        the shard: the maintenance thread does it at most every RECALL_CHECK_INTERVAL_S). 0.0: nothing to measure."""
        with self._lock:
            if self._ivf is None:
                return 0.0
            upto, vecs, version = self._next, self._vecs, self._retrain.index_version
            alive = self._alive[:upto].copy()
        labels = np.flatnonzero(alive).astype(np.int64)
        sample = retraining.draw_sample(vecs, labels, self.metric, self._scorer(vecs), seed=upto)
        value = self._sample_recall(sample, vecs, alive, upto) if sample is not None else 0.0
        with self._lock:
            if sample is None:
                self._retrain.next_check = time.monotonic() + retraining.RECALL_CHECK_INTERVAL_S
            else:
                self._retrain.measured(value, version)
        return value

    def ask_retrain(self, force: bool) -> bool:
        """Asks the maintenance thread for a retrain where one is due (any time with `force`). False: none asked
        (one is running or asked already, or none is due). ValueError: too few vectors to train."""
        with self._lock:
            if self._training or self._retrain.asked:
                return False
            untrained = self._ivf is None
            if untrained and self._live < self.train_threshold:
                if not force:
                    return False
                raise ValueError(f"the collection holds {self._live} vectors on this shard; its first index is "
                                 f"trained at {self.train_threshold} (index.train_threshold)")
            if not (force or untrained or self._due_reasons()):
                return False
            self._retrain.asked = True
            return True

    def retrain_status(self) -> admin_pb2.RetrainStatus:
        """The retrain state for RetrainStatus. A retrain asked for but not yet started shows as TRAINING."""
        with self._lock:
            tracker = self._retrain
            reasons = self._due_reasons()
            if reasons and tracker.held(self._next):
                reasons.append(f"no automatic retrain until {tracker.hold_next - self._next} more writes or "
                               f"{(tracker.hold_until - time.monotonic()) / 60:.0f} min have passed (one just ran)")
            state = retraining.State.STATE_TRAINING if tracker.asked else tracker.state
            status = admin_pb2.RetrainStatus(
                state=state, due=bool(reasons), reasons=reasons, trained_on=self._trained_on,
                added_since_training=self._next - (tracker.trained_upto if self._ivf is not None else 0),
                list_imbalance=tracker.imbalance, estimated_recall=tracker.recall,
                estimated_at_unix_ms=tracker.recall_at_ms,
            )
            if tracker.last.finished_unix_ms:
                status.last.CopyFrom(tracker.last)
        return status

    def absorb(self) -> None:
        """Encodes the fresh buffer into the trained index (fast: no training)."""
        with self._lock:
            start, stop = self._ivf_upto, self._next
            labels = start + np.flatnonzero(self._alive[start:stop]).astype(np.int64)
            if self._ivf is not None and len(labels):
                self._ivf.add_with_ids(self._vecs[labels], labels)
                self._retrain.changed(self._ivf)
            self._ivf_upto = stop

    def compact(self) -> None:
        """Removes dead codes from the IVF lists (CPU indexes; GPU ones are rebuilt by training instead)."""
        with self._lock:
            if self._ivf is None:
                return
            dead = np.flatnonzero(~self._alive[: self._ivf_upto]).astype(np.int64)
            self._ivf.remove_ids(faiss.IDSelectorBatch(dead))
            self._ivf_dead = 0
            self._retrain.changed(self._ivf)

    # ---- snapshots ----------------------------------------------------------------------------------------

    def export_state(self) -> dict[str, np.ndarray]:
        """Everything needed to rebuild this collection, as arrays (for `np.savez`). Consistent with the writes
        applied so far: the caller must not apply writes concurrently. Dead items are left out (their rows and id bytes
        stay, as in memory, until a relabel)."""
        with self._lock:
            upto = self._next
            labels = np.flatnonzero(self._alive[:upto]).astype(np.int64)
            payloads = dict(self._payloads)
            fields = dict(self._fields.blobs)
            ivf = faiss.serialize_index(device.to_cpu(self._ivf)) if self._ivf is not None else np.zeros(0, np.uint8)
            chosen = self._params
            meta = np.array([upto, self._ivf_upto, self._trained_on], dtype=np.int64)
            vecs = self._vecs
            versions = self._ver[labels]
            horizon = time.time_ns() - self.marker_retention_ns
            self._deleted = {i: v for i, v in self._deleted.items() if v > horizon}
            deleted = list(self._deleted.items())
            id_state, hashes = id_table.saved(self._ids, upto), self._hash[:upto].copy()
        blobs = [payloads.get(label, b"") for label in labels.tolist()]
        field_blobs = [fields.get(label, b"") for label in labels.tolist()]
        params = np.array(
            [chosen.nlist, chosen.pq_m, chosen.pq_nbits, chosen.default_nprobe, chosen.refine_factor]
            if chosen is not None else [], dtype=np.int64,
        )
        # The rows below `upto` as the store holds them (codes, and sq8 its range; dead rows too), ids and hashes by
        # label: a view and three flat copies, no Python object per item, and a restart holds what a fresh load
        # holds. Rows below `upto` never change, so the view may be written out after the lock is released.
        return {
            "meta": meta, "labels": labels, "vector_rows": vecs.data[:upto], "vector_range": vecs.quantizer_state(),
            **id_state, "hashes": hashes, "params": params, "ivf": ivf,
            "versions": versions, "deleted_versions": np.array([v for _, v in deleted], dtype=np.uint64),
            **_pack_strings("payloads", blobs), **_pack_strings("fields", field_blobs),
            **_pack_strings("deleted_ids", [i.encode() for i, _ in deleted]),
        }

    def import_state(self, state: dict[str, np.ndarray]) -> None:
        """Restores what `export_state` saved (into a new, empty collection)."""
        upto, ivf_upto, trained_on = (int(x) for x in state["meta"])
        labels = state["labels"]
        payloads = _unpack_strings(state, "payloads")
        with self._lock:
            self._reserve(max(upto, 1))
            if "vector_rows" in state:
                ranges = state["vector_range"]
                quantizer = vector_rows.quantizer_from(self.dim, ranges) if len(ranges) else None
                self._vecs = vector_rows.VectorRows(self._vecs.kind, self.dim, self._vecs.capacity, quantizer)
                self._vecs.data[:upto] = state["vector_rows"]
            else:  # snapshots written before vector stores hold float32 vectors of the live labels
                self._vecs.data[labels] = self._vecs.encode(state["vectors"])
            self._alive[:] = False
            self._alive[labels] = True
            if "versions" in state:  # snapshots written before versions existed hold unversioned items
                self._ver[labels] = state["versions"]
                marked = _unpack_strings(state, "deleted_ids")
                self._deleted = {raw.decode(): int(v) for raw, v in zip(marked, state["deleted_versions"].tolist())}
            if "id_ends" in state:
                self._hash[:upto] = state["hashes"]
                self._ids = id_table.restored(state, len(self._alive), self._hash, self._alive)
            else:  # snapshots written before the id table hold the live labels' ids
                id_of: list[str] = [""] * upto
                for label, raw in zip(labels.tolist(), _unpack_strings(state, "ids")):
                    id_of[label] = raw.decode()
                self._hash[labels] = id_hashes([id_of[label] for label in labels.tolist()])
                self._ids = id_table.from_labels(id_of, len(self._alive), self._hash, self._alive)
            self._payloads = {label: blob for label, blob in zip(labels.tolist(), payloads) if blob}
            self._payload_bytes = sum(map(len, self._payloads.values()))
            if "fields_ends" in state:  # snapshots written before fields existed have none
                blobs = dict(zip(labels.tolist(), _unpack_strings(state, "fields")))
                self._fields = FieldIndex.rebuilt(blobs, len(self._alive))
            self._next, self._live = upto, len(labels)
            if len(state["ivf"]):
                self._params = index_params.IndexParams(*(int(x) for x in state["params"]))
                self._ivf = device.to_device(faiss.deserialize_index(state["ivf"]), self.use_gpu)
                self._ivf_upto, self._trained_on = ivf_upto, trained_on
                self._ivf_dead = ivf_upto - int(np.count_nonzero(self._alive[:ivf_upto]))
                # Writes since training are not in snapshots: taken as the growth since (exact without overwrites).
                self._retrain.trained_upto = upto - max(0, len(labels) - trained_on)
                self._retrain.changed(self._ivf)

    def export_chunk(
        self, after: int, limit: int, select: Callable[[np.ndarray], np.ndarray] | None = None,
        generation: int | None = None,
    ) -> tuple[list[str], np.ndarray, list[bytes], np.ndarray, int, list[bytes]]:
        """Up to `limit` live items with labels above `after` (only those whose id hash `select` picks), with
        versions, the last label looked at (for the next call; -1 when done) and serialised fields. Items written
        meanwhile get higher labels, so a scan sees them too. Raises Relabelled if `generation` (of the cursor) is
        no longer the collection's: start again from -1."""
        with self._lock:
            if generation is not None and generation != self.generation:
                raise Relabelled(f"collection {self.spec.name} was relabelled during the export")
            start, stop = after + 1, self._next
            picked: list[np.ndarray] = []
            found, last = 0, -1
            while start < stop:  # label windows, so a sparse selection does not rescan the rest every chunk
                end = min(stop, start + max(EXPORT_WINDOW, 4 * limit))
                alive = start + np.flatnonzero(self._alive[start:end])
                if select is not None and len(alive):
                    alive = alive[select(self._hash[alive])]
                if found + len(alive) >= limit:  # full: the next call goes on after the last item taken
                    picked.append(alive[: limit - found])
                    last = int(picked[-1][-1])
                    break
                picked.append(alive)
                found += len(alive)
                start = end
            labels = np.concatenate(picked) if picked else np.zeros(0, np.int64)
            ids = self._ids.ids_of(labels.tolist())
            payloads = [self._payloads.get(label, b"") for label in labels.tolist()]
            fields = [self._fields.get(label) for label in labels.tolist()]
            return ids, self._vecs[labels], payloads, self._ver[labels], last, fields

    def list_ids(
        self, after: int | None, limit: int, select: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> tuple[list[str], int, bool]:
        """Up to `limit` live ids in id_hash order, past `after` (a hash; None = from the start): (ids, the last
        one's hash, whether more follow). Replicas agree on the order, so a listing may hop between them. (Two
        ids with one 64-bit hash that straddle a page boundary would lose the second: odds ~n^2 / 2^65.)"""
        with self._lock:
            labels = np.flatnonzero(self._alive[: self._next])
            hashes = self._hash[labels]
            table = self._ids  # a relabel meanwhile makes a new table; these labels stay this one's
        if select is not None:
            picked = select(hashes)
            labels, hashes = labels[picked], hashes[picked]
        if after is not None:
            keep = hashes > np.uint64(after)
            labels, hashes = labels[keep], hashes[keep]
        more = len(labels) > limit
        if more:
            first = np.argpartition(hashes, limit - 1)[:limit]
            labels, hashes = labels[first], hashes[first]
        order = np.argsort(hashes, kind="stable")
        labels, hashes = labels[order], hashes[order]
        ids = table.ids_of(labels.tolist())
        return ids, int(hashes[-1]) if len(hashes) else 0, more

    def delete_markers(self, select: Callable[[np.ndarray], np.ndarray] | None = None) -> list[tuple[str, int]]:
        with self._lock:
            markers = list(self._deleted.items())
        if select is None or not markers:
            return markers
        picked = select(id_hashes([item_id for item_id, _ in markers]))
        return [marker for marker, keep in zip(markers, picked.tolist()) if keep]

    def checksum(self, select: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Count and checksum per bucket of the live items `select` picks (see shardsearch.topology)."""
        with self._lock:
            labels = np.flatnonzero(self._alive[: self._next])
            hashes = self._hash[labels]
            picked = select(hashes)
            labels, hashes = labels[picked], hashes[picked]
            versions = self._ver[labels]
            vecs = self._vecs  # rows below `next` never change: read outside the lock, a slice at a time
        items = np.empty(len(labels), dtype=np.uint64)
        for lo in range(0, len(labels), CHECKSUM_CHUNK):
            part = slice(lo, lo + CHECKSUM_CHUNK)
            # A lossy store's bits differ between replicas that fitted their ranges apart: (id, version) names the write.
            vectors = None if vecs.lossy else vecs[labels[part]]
            items[part] = topology.item_hashes(hashes[part], versions[part], vectors)
        return topology.checksums(hashes, items)

    # ---- introspection ------------------------------------------------------------------------------------

    def info(self) -> search_pb2.ShardInfo:
        with self._lock:
            buffered = int(np.count_nonzero(self._alive[self._ivf_upto : self._next]))
            chosen = self._params
            info = search_pb2.ShardInfo(
                vectors=self._live,
                indexed_vectors=self._live - buffered,
                buffered_vectors=buffered,
                trained=self._ivf is not None,
                training=self._training,
            )
        if chosen is None:
            info.index.CopyFrom(self.spec.index)
            info.index.train_threshold = self.train_threshold
            info.index_description = "Flat (exact; not trained yet)"
        else:
            info.index.CopyFrom(
                search_pb2.IndexOptions(
                    nlist=chosen.nlist, pq_m=chosen.pq_m, pq_nbits=chosen.pq_nbits,
                    train_threshold=self.train_threshold, default_nprobe=chosen.default_nprobe,
                    refine_factor=chosen.refine_factor,
                )
            )
            info.index_description = f"{chosen.factory()},Refine(Flat) + exact buffer on {device.name(self.use_gpu)}"
        if self._vecs.lossy:
            info.index.vector_store = self.spec.index.vector_store
            stored = "sq8" if self._vecs.encoded else "float32 until the first training fits the sq8 range"
            info.index_description += f"; vectors stored as {stored if self._vecs.kind == 'sq8' else 'float16'}"
        return info

    def memory(self) -> dict[str, int]:
        """Bytes this collection holds, by part (an estimate from sizes, for the memory gauge): "vectors" (rows
        written, dead ones included), "index" (IVF codes, their ids and the centroids), "ids" (the id strings and
        their lookup), "columns" (live flags, versions, id hashes and number fields), "payloads", "fields" and
        "markers" (delete markers). Python containers are counted at ~100 bytes an entry. O(1)."""
        with self._lock:
            rows, upto, ivf = self._vecs, self._next, self._ivf
            payloads, fields = (len(self._payloads), self._payload_bytes), (len(self._fields.blobs), self._fields.nbytes)
            markers, numbers = len(self._deleted), self._fields.columns
            ids = self._ids.nbytes()
        index = 0
        if ivf is not None:
            code_size, nlist = getattr(ivf, "code_size", 0), getattr(ivf, "nlist", 0)  # GPU indexes lack some
            index = int(ivf.ntotal) * (int(code_size) + 8) + int(nlist) * self.dim * 4
        return {
            "vectors": upto * rows.row_bytes, "index": index, "ids": ids, "columns": upto * (17 + 8 * numbers),
            "payloads": payloads[1] + 100 * payloads[0], "fields": fields[1] + 100 * fields[0], "markers": 100 * markers,
        }

    @property
    def live(self) -> int:
        return self._live


id_hashes = key_hashes  # each id's ring hash: the order of ListIds, and what ownership is decided by


def _pack_strings(name: str, items: list[bytes]) -> dict[str, np.ndarray]:
    """Byte strings as one blob plus end offsets: arrays `np.savez` stores without pickling."""
    ends = np.cumsum([len(item) for item in items], dtype=np.int64) if items else np.zeros(0, np.int64)
    return {f"{name}_blob": np.frombuffer(b"".join(items), dtype=np.uint8), f"{name}_ends": ends}


def _unpack_strings(state: dict[str, np.ndarray], name: str) -> list[bytes]:
    blob = state[f"{name}_blob"].tobytes()
    starts = [0, *state[f"{name}_ends"].tolist()]
    return [blob[a:b] for a, b in zip(starts, starts[1:])]
