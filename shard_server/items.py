"""A collection's items: writes with versions and delete markers, ownership under the ring layout, and reads by id.

Part of `Collection` (shard_server/index.py), which owns the lock and the columns these methods use: `_vecs` (the
stored rows), `_alive`, `_ver`, `_hash` (by label), `_ids`, `_payloads`, `_fields`, `_deleted` (delete markers by id),
`_next`, `_live` and the IVF bookkeeping `_ivf_upto`, `_ivf_dead`. Last writer wins per id: a write replaces an item
only with a higher version, so replicas that get the same writes in any order end in the same state.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from shardsearch.ring import key_hashes as id_hashes
from shardsearch.shard_server.columns import Columns
from shardsearch.v1 import search_pb2


class ItemStore(Columns):
    """Writes and reads by id (a part of Collection: see the module docstring)."""

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
