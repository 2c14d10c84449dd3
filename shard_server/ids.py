"""Item ids by label, and labels by id, in compact arrays: about 25 bytes an item plus the id's UTF-8 length.

A Python list of str plus a dict of str -> int costs ~150 bytes an item beyond the id itself; at 50M items per pod
that is gigabytes. Here the ids live in one bytearray with an end offset per label, and the lookup is a sorted array
of (64-bit id hash, label) pairs searched with numpy, plus a dict of the ids written since its last rebuild (at most
RECENT_MAX). The hash is the ring hash the collection keeps per label anyway.

An id maps to its live label: the table never forgets a label, and a lookup skips labels that are dead and labels
whose id differs (a 64-bit hash collision), so deletes and overwrites need no change here. Dead labels leave the
sorted array when it is rebuilt; their id bytes stay until the collection is relabelled or restored from a snapshot.

Appends never change what an existing label maps to, so a reader holding the table may resolve labels it took under
the collection's lock after releasing it (searches do).
"""

from __future__ import annotations

import numpy as np

RECENT_MAX = 65_536  # ids looked up through a dict before the sorted array is rebuilt


class IdTable:
    def __init__(self, capacity: int = 1024) -> None:
        self._blob = bytearray()
        self._ends = np.zeros(capacity, dtype=np.int64)  # end offset in _blob of each label's id
        self._next = 0
        self._keys = np.zeros(0, dtype=np.uint64)  # sorted id hashes of labels below _merged
        self._labels = np.zeros(0, dtype=np.int64)
        self._merged = 0
        self._recent: dict[str, int] = {}  # id -> newest label at or above _merged

    def __len__(self) -> int:
        return self._next

    def id_of(self, label: int) -> str:
        end = int(self._ends[label])
        start = int(self._ends[label - 1]) if label else 0
        return self._blob[start:end].decode()

    def ids_of(self, labels: list[int]) -> list[str]:
        ends, blob = self._ends, self._blob
        out = []
        for label in labels:
            start = int(ends[label - 1]) if label else 0
            out.append(blob[start : int(ends[label])].decode())
        return out

    def append(self, ids: list[str], index: bool = True) -> None:
        """Gives the next len(ids) labels to these ids (`index`: findable at once; else after `rebuild`)."""
        encoded = [item_id.encode() for item_id in ids]
        stop = self._next + len(ids)
        if stop > len(self._ends):
            grown = np.zeros(max(stop, 2 * len(self._ends)), dtype=np.int64)
            grown[: self._next] = self._ends[: self._next]
            self._ends = grown  # a new array: readers of the old one still see their labels
        base = int(self._ends[self._next - 1]) if self._next else 0
        self._ends[self._next : stop] = base + np.cumsum([len(raw) for raw in encoded], dtype=np.int64)
        self._blob += b"".join(encoded)
        if index:
            recent = self._recent
            for offset, item_id in enumerate(ids):
                recent[item_id] = self._next + offset
        self._next = stop

    def find(self, ids: list[str], hashes: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """The live label of each id, -1 for none. `hashes` are the ids' hashes (as stored per label), `alive` the
        collection's live mask."""
        out = np.full(len(ids), -1, dtype=np.int64)
        recent, keys = self._recent, self._keys
        pos = np.searchsorted(keys, hashes) if len(keys) else None
        for i, item_id in enumerate(ids):
            label = recent.get(item_id)
            if label is not None and alive[label]:
                out[i] = label
                continue
            if pos is None:
                continue
            p, key = int(pos[i]), hashes[i]
            while p < len(keys) and keys[p] == key:  # more than one only on a 64-bit collision or for dead labels
                label = int(self._labels[p])
                if alive[label] and self.id_of(label) == item_id:
                    out[i] = label
                    break
                p += 1
        return out

    def get(self, item_id: str, item_hash: np.uint64, alive: np.ndarray) -> int | None:
        label = int(self.find([item_id], np.array([item_hash], dtype=np.uint64), alive)[0])
        return label if label >= 0 else None

    def settle(self, hashes: np.ndarray, alive: np.ndarray) -> None:
        """Rebuilds the sorted array once the dict has grown past RECENT_MAX (call after writes, under the lock).
        `hashes` and `alive` are the collection's per-label arrays."""
        if len(self._recent) <= RECENT_MAX:
            return
        self.rebuild(hashes, alive)

    def rebuild(self, hashes: np.ndarray, alive: np.ndarray) -> None:
        """The sorted array of every live label (the dict emptied)."""
        old = self._labels[alive[self._labels]] if len(self._labels) else self._labels
        new = self._merged + np.flatnonzero(alive[self._merged : self._next])
        labels = np.concatenate([old, new])
        keys = hashes[labels]
        order = np.argsort(keys, kind="stable")  # timsort: two sorted runs merge in one pass
        self._keys, self._labels = keys[order], labels[order]
        self._merged, self._recent = self._next, {}

    def nbytes(self) -> int:
        """Bytes held (arrays and blob; the dict's entries estimated at 100 bytes each)."""
        return (len(self._blob) + self._ends.nbytes + self._keys.nbytes + self._labels.nbytes
                + 100 * len(self._recent))


def saved(table: IdTable, upto: int) -> dict[str, np.ndarray]:
    """Labels below `upto` as two arrays for a snapshot: the id bytes and each label's end offset (one copy of the
    bytes, no Python object per id)."""
    ends = table._ends[:upto].copy()
    size = int(ends[-1]) if upto else 0
    return {"id_blob": np.frombuffer(bytes(table._blob[:size]), dtype=np.uint8), "id_ends": ends}


def restored(state: dict[str, np.ndarray], capacity: int, hashes: np.ndarray, alive: np.ndarray) -> IdTable:
    """The table `saved` wrote (sorted array built)."""
    table = IdTable(max(capacity, 1))
    ends = state["id_ends"]
    table._blob = bytearray(state["id_blob"].tobytes())
    table._ends[: len(ends)] = ends
    table._next = len(ends)
    table.rebuild(hashes, alive)
    return table


def from_labels(ids_by_label: list[str], capacity: int, hashes: np.ndarray, alive: np.ndarray) -> IdTable:
    """A table whose label i is ids_by_label[i] (restores and relabels), sorted array built."""
    table = IdTable(max(capacity, 1))
    table.append(ids_by_label, index=False)
    table.rebuild(hashes, alive)
    return table
