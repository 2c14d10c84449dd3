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
import time

import faiss
import numpy as np

from shardsearch.ring import key_hashes
from shardsearch.shard_server import device, refine_fit
from shardsearch.shard_server import ids as id_table
from shardsearch.shard_server.fields import FieldIndex
from shardsearch.shard_server.items import ItemStore
from shardsearch.shard_server.scans import Relabelled, Scans
from shardsearch.shard_server.searching import LabelView, SearchPath, SearchResult
from shardsearch.shard_server.state import SnapshotState
from shardsearch.shard_server.training import Training
from shardsearch.v1 import search_pb2

__all__ = ["Collection", "LabelView", "Relabelled", "SearchResult", "id_hashes"]

logger = logging.getLogger(__name__)

ABSORB_THRESHOLD = 2_048  # fresh vectors that get encoded into a trained index in one go (the buffer is brute force)
IDLE_ABSORB_S = 2.0  # a smaller buffer is absorbed once writes have paused this long
COMPACT_DEAD_FRACTION = 0.2  # remove dead codes from the IVF lists past this fraction
EXACT_FILTER_MAX = 20_000  # a filter matching at most this many items is answered by exact search over them
RELABEL_MIN_DEAD = 4_096  # an untrained collection with more dead rows than this, and than live ones, is relabelled


class Collection(ItemStore, SearchPath, Training, SnapshotState, Scans):
    """A lock-owning facade over the parts of a collection, one job each, all over the state in columns.py (the
    definition, the lock, the columns by label): items.py (writes and reads by id), searching.py (the ANN pipeline
    and filtered search), training.py (training behind the recall gate), state.py (the snapshot format) and
    scans.py (exports, listings, checksums). Here: maintenance (what the background thread does next, absorbing,
    compaction, relabelling) and introspection."""

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
        return "measure" if tracker.measure_due() or self._refit_due() else None

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
            if chosen.refine_by_shards:
                info.index_description += f"; {refine_fit.describe(chosen.refine_by_shards)}"
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
    def exact_filter_max(self) -> int:
        return EXACT_FILTER_MAX  # read at each search, so the module's value may be changed (as tests do)

    @property
    def live(self) -> int:
        return self._live


id_hashes = key_hashes  # each id's ring hash: the order of ListIds, and what ownership is decided by

