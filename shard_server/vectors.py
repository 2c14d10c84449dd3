"""The stored vectors of a collection's shard, by label: what the exact re-ranking, Get, retraining and resharding read.

Three encodings, chosen per collection (`IndexOptions.vector_store`), trading memory for precision:

- float32: 4 bytes a dimension, exactly what was written (the default);
- float16: 2 bytes, each value rounded to 11 significant bits (relative error <= 2^-11, about 0.05%);
- sq8: 1 byte, FAISS's 8-bit scalar quantizer with one range per dimension, fitted on the live vectors when the
  collection trains its first index (until then the rows are float32, so a small collection stays exact). Each value
  comes back within half a step, (max - min) / 510 of its dimension's range; values outside the fitted range are
  clipped to it. Anti-entropy checksums skip the vector bits of lossy stores (two replicas fit different ranges).

A `VectorRows` has a fixed capacity; growing makes a new one, and rows below the collection's `next` never change, so
a reader that took a reference under the collection's lock may read those rows after releasing it.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from shardsearch.v1 import search_pb2

FLOAT32, FLOAT16, SQ8 = "float32", "float16", "sq8"
KIND_OF = {
    search_pb2.VECTOR_STORE_UNSPECIFIED: FLOAT32, search_pb2.VECTOR_STORE_FLOAT32: FLOAT32,
    search_pb2.VECTOR_STORE_FLOAT16: FLOAT16, search_pb2.VECTOR_STORE_SQ8: SQ8,
}
SQ_RANGE_MARGIN = 0.01  # the fitted range is widened by this fraction on each side, for later writes
SCORE_CHUNK_BYTES = 2 << 20  # decoded candidates held at once while scoring (measured 512 KiB-8 MiB: sq8 is fastest with
# more, float16 with less; 2 MiB is near both)


class VectorRows:
    """`capacity` rows of `dim` values in one encoding. `rows[labels]` and `rows[a:b]` decode to float32."""

    def __init__(self, kind: str, dim: int, capacity: int, quantizer: faiss.ScalarQuantizer | None = None) -> None:
        self.kind, self.dim, self.quantizer = kind, dim, quantizer
        self.data = np.empty((capacity, self.width), dtype=self.dtype)
        # What decodes rows in FAISS (SIMD; numpy's float16 conversion is ~2x slower): the sq8 quantizer, or an
        # fp16 one (IEEE half, the bits numpy's float16 holds) for float16; None for float32 rows.
        self._decoder = quantizer if quantizer is not None else (
            faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16) if kind == FLOAT16 else None)

    # ---- encoding ---------------------------------------------------------------------------------------------

    @property
    def encoded(self) -> bool:
        """Whether rows hold something other than float32 (sq8 before its range is fitted holds float32)."""
        return self.kind == FLOAT16 or self.quantizer is not None

    @property
    def lossy(self) -> bool:
        """Whether this store's kind may give back other values than were written (even while still float32)."""
        return self.kind != FLOAT32

    @property
    def dtype(self) -> Any:
        if self.kind == FLOAT16:
            return np.float16
        return np.uint8 if self.quantizer is not None else np.float32

    @property
    def width(self) -> int:
        return int(self.quantizer.code_size) if self.quantizer is not None else self.dim

    @property
    def row_bytes(self) -> int:
        return self.width * np.dtype(self.dtype).itemsize

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.quantizer is not None:
            return self.quantizer.compute_codes(vectors)
        return vectors.astype(self.dtype, copy=False)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        if self._decoder is None:
            return codes
        codes = np.ascontiguousarray(codes)
        out = np.empty((len(codes), self.dim), dtype=np.float32)
        self._decoder.decode_c(faiss.swig_ptr(codes.view(np.uint8)), faiss.swig_ptr(out), len(codes))
        return out

    # ---- rows ---------------------------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return len(self.data)

    def put(self, start: int, vectors: np.ndarray) -> None:
        """Writes rows `start`.. (rows no reader holds yet)."""
        self.data[start : start + len(vectors)] = self.encode(vectors)

    def put_codes(self, labels: np.ndarray, codes: np.ndarray) -> None:
        self.data[labels] = codes

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.decode(self.data[index])

    def __len__(self) -> int:
        return len(self.data)

    def grown(self, capacity: int, upto: int) -> VectorRows:
        """A copy with room for `capacity` rows, holding rows below `upto`."""
        rows = VectorRows(self.kind, self.dim, capacity, self.quantizer)
        rows.data[:upto] = self.data[:upto]
        return rows

    def taken(self, labels: np.ndarray, capacity: int) -> VectorRows:
        """A new store whose row i is this one's row labels[i] (codes copied, never re-encoded)."""
        rows = VectorRows(self.kind, self.dim, capacity, self.quantizer)
        rows.data[: len(labels)] = self.data[labels]
        return rows

    # ---- sq8: fitting the range -------------------------------------------------------------------------------

    def wants_fit(self) -> bool:
        return self.kind == SQ8 and self.quantizer is None

    def fit(self, labels: np.ndarray, chunk: int = 65_536) -> faiss.ScalarQuantizer:
        """An 8-bit quantizer whose per-dimension range covers these rows (min and max over all of them, widened by
        SQ_RANGE_MARGIN), without changing this store."""
        low = np.full(self.dim, np.inf, dtype=np.float32)
        high = np.full(self.dim, -np.inf, dtype=np.float32)
        for lo in range(0, len(labels), chunk):
            part = self[labels[lo : lo + chunk]]
            low, high = np.minimum(low, part.min(axis=0)), np.maximum(high, part.max(axis=0))
        span = high - low  # a dimension constant in these rows still gets a range (a thousandth of the widest)
        span = np.maximum(span, max(float(span.max()) * 1e-3, 1e-6))
        low, span = low - SQ_RANGE_MARGIN * span, span * (1 + 2 * SQ_RANGE_MARGIN)
        return quantizer_from(self.dim, np.concatenate([low, span]))

    def quantized(self, quantizer: faiss.ScalarQuantizer, upto: int, chunk: int = 65_536) -> VectorRows:
        """A copy of rows below `upto` encoded by `quantizer` (same capacity)."""
        rows = VectorRows(self.kind, self.dim, self.capacity, quantizer)
        for lo in range(0, upto, chunk):
            hi = min(upto, lo + chunk)
            rows.data[lo:hi] = quantizer.compute_codes(np.ascontiguousarray(self.data[lo:hi]))
        return rows

    def quantizer_state(self) -> np.ndarray:
        """The fitted range (per dimension: min, then width) for a snapshot; empty when there is none."""
        if self.quantizer is None:
            return np.zeros(0, np.float32)
        return faiss.vector_to_array(self.quantizer.trained).astype(np.float32)

    # ---- scores -----------------------------------------------------------------------------------------------

    def scores(self, queries: np.ndarray, ids: np.ndarray, inner_product: bool) -> np.ndarray:
        """Exact scores of each query (n x dim float32) against its candidate rows `ids` (n x c), in FAISS (SIMD)."""
        n, c = ids.shape
        out = np.empty((n, c), dtype=np.float32)
        by_idx = faiss.fvec_inner_products_by_idx if inner_product else faiss.fvec_L2sqr_by_idx
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.data.dtype == np.float32:  # score the rows in place
            by_idx(faiss.swig_ptr(out), faiss.swig_ptr(queries), faiss.swig_ptr(self.data), faiss.swig_ptr(ids),
                   self.dim, n, c)
            return out
        # Decoded a chunk of queries' candidates at a time into buffers reused across chunks (decoding them all at
        # once into a fresh array cost 5x more, in page faults and cache misses, than the scoring itself).
        step = max(1, SCORE_CHUNK_BYTES // max(1, c * self.dim * 4))
        rows = min(n, step) * c
        codes = np.empty((rows,) + self.data.shape[1:], dtype=self.data.dtype)
        decoded = np.empty((rows, self.dim), dtype=np.float32)
        local = np.arange(rows, dtype=np.int64)
        assert self._decoder is not None
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            m = (hi - lo) * c
            np.take(self.data, ids[lo:hi].ravel(), axis=0, out=codes[:m])
            self._decoder.decode_c(faiss.swig_ptr(codes.view(np.uint8)), faiss.swig_ptr(decoded), m)
            by_idx(faiss.swig_ptr(out[lo:hi]), faiss.swig_ptr(np.ascontiguousarray(queries[lo:hi])),
                   faiss.swig_ptr(decoded), faiss.swig_ptr(local), self.dim, hi - lo, c)
        return out


def quantizer_from(dim: int, trained: np.ndarray) -> faiss.ScalarQuantizer:
    """An 8-bit scalar quantizer with this range (min per dimension, then width per dimension)."""
    quantizer = faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit)
    faiss.copy_array_to_vector(np.ascontiguousarray(trained, dtype=np.float32), quantizer.trained)
    return quantizer


def kind_of(options: search_pb2.IndexOptions) -> str:
    return KIND_OF[options.vector_store]
