"""Scans over a collection's live items: export chunks by label, id listings by hash, delete markers, checksums.

Part of `Collection` (shard_server/index.py). Each scan holds the lock only to take labels (and, for exports, the
items of one chunk); rows below `_next` never change, so checksums read vectors outside it a slice at a time.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from shardsearch import topology
from shardsearch.ring import key_hashes as id_hashes
from shardsearch.shard_server.columns import Columns

EXPORT_WINDOW = 65_536  # labels scanned per step of an export
CHECKSUM_CHUNK = 65_536  # items hashed per step of a checksum


class Relabelled(Exception):
    """A label cursor from before a relabel (see Collection.relabel)."""


class Scans(Columns):
    """Scans (a part of Collection: see the module docstring)."""

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
