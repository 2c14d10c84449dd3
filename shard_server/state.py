"""A collection's snapshot format: everything needed to rebuild it, as flat arrays `np.savez` stores without pickling.

Part of `Collection` (shard_server/index.py). Rows are kept as the store holds them (codes, and sq8 its range; dead
rows too), ids as one byte string plus end offsets with their hashes, the IVF index serialised: no Python object per
item on save or restore. Snapshots written by earlier versions (float32 vectors and id strings of the live labels, no
versions, no fields) still load.
"""

from __future__ import annotations

import time

import faiss
import numpy as np

from shardsearch import index_params
from shardsearch.ring import key_hashes as id_hashes
from shardsearch.shard_server import device
from shardsearch.shard_server import ids as id_table
from shardsearch.shard_server import vectors as vector_rows
from shardsearch.shard_server.columns import Columns
from shardsearch.shard_server.fields import FieldIndex


class SnapshotState(Columns):
    """Export and import of the whole collection (a part of Collection: see the module docstring)."""

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
            # its own key: a shard of an earlier version reading this snapshot (a peer's catch-up) still loads it
            "refine_by_shards": np.array(chosen.refine_by_shards if chosen is not None else (), dtype=np.int64),
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
                fitted = tuple(int(x) for x in state["refine_by_shards"]) if "refine_by_shards" in state else ()
                self._params = index_params.IndexParams(*(int(x) for x in state["params"]), refine_by_shards=fitted)
                self._ivf = device.to_device(faiss.deserialize_index(state["ivf"]), self.use_gpu)
                self._ivf_upto, self._trained_on = ivf_upto, trained_on
                self._ivf_dead = ivf_upto - int(np.count_nonzero(self._alive[:ivf_upto]))
                # Writes since training are not in snapshots: taken as the growth since (exact without overwrites).
                self._retrain.trained_upto = upto - max(0, len(labels) - trained_on)
                self._retrain.changed(self._ivf)
                # fitted at or before this size: refit from here; never fitted (an older snapshot): fit once now
                self._retrain.fit_size = int(self._ivf.ntotal) if fitted else 0


def _pack_strings(name: str, items: list[bytes]) -> dict[str, np.ndarray]:
    """Byte strings as one blob plus end offsets: arrays `np.savez` stores without pickling."""
    ends = np.cumsum([len(item) for item in items], dtype=np.int64) if items else np.zeros(0, np.int64)
    return {f"{name}_blob": np.frombuffer(b"".join(items), dtype=np.uint8), f"{name}_ends": ends}


def _unpack_strings(state: dict[str, np.ndarray], name: str) -> list[bytes]:
    blob = state[f"{name}_blob"].tobytes()
    starts = [0, *state[f"{name}_ends"].tolist()]
    return [blob[a:b] for a, b in zip(starts, starts[1:])]
