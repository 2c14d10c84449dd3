"""The state a collection's parts share: its definition, the lock, and the columns by label.

`Collection` (shard_server/index.py) is these columns plus its parts (items.py, searching.py, training.py, state.py,
scans.py), each a class over `Columns`. Labels are int64s handed out in write order and never reused; the arrays
below are indexed by label and grown by `_reserve` (a resize makes new arrays, so rows below `_next` never change and
may be read outside the lock). Everything else is read and changed under `_lock`.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import faiss
import numpy as np

from shardsearch import index_params
from shardsearch.shard_server import retrain as retraining
from shardsearch.shard_server import vectors as vector_rows
from shardsearch.shard_server.fields import FieldIndex
from shardsearch.shard_server.ids import IdTable
from shardsearch.v1 import search_pb2

DELETE_MARKER_RETENTION_NS = 7 * 24 * 3600 * 10**9  # a replica down longer than this must be re-seeded


class Columns:
    """A collection's definition, lock and columns (see the module docstring); `Collection.__init__` is this."""

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

    def _reserve(self, size: int) -> None:
        """Under the lock: grows the columns (new arrays, doubling) to hold `size` labels."""
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

    def _exact_scores(self, queries: np.ndarray, labels: np.ndarray, vecs: vector_rows.VectorRows) -> np.ndarray:
        """Exact scores of each query against its candidate rows (of the stored vectors, as the store holds them)."""
        return vecs.scores(queries, labels, self.inner_product)
