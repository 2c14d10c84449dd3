"""The data-size rule for IVF-PQ parameters, and the FAISS factory string it implies.

For a shard holding n vectors of dimension d when it trains (every value can be fixed per collection):
- nlist = min(4 * sqrt(n), n / 39), at least 1, at most 65536: FAISS's guidance (4-16 sqrt(n) lists) bounded by
  k-means' need for ~39 training points per centroid.
- pq_m = the largest divisor of d that is <= d / 4 (so 128-d -> 32 sub-quantizers, 784-d -> 196).
- pq_nbits = 4 on CPU (8 on GPU, which has no fast-scan): fast-scan PQ (SIMD lookup tables), ~9x the CPU throughput of 8-bit PQ at better recall once refined.
- default_nprobe = nlist / 8 clamped to [16, 64] (and to nlist): on bigann10k this gives recall@10 0.98-0.99
  after refine (nprobe nlist/32 gave 0.86).
- refine_factor: k * 20 PQ candidates are re-ranked exactly with the stored float vectors until the index is
  trained; then each shard fits the factor to its data and to the number of shards a search reaches
  (shard_server/refine_fit.py), at most 20. On a clustered 200k x 128 set (Gaussian mixture, inner product) 10
  gave recall@10 0.76 and 20 gave 0.997: 4-bit PQ cannot order points that sit close together; real 384-d
  embeddings need 4-16, and a shard of four needs less than one index over all the items. An explicit
  refine_factor is used as it is.
- train_threshold = 10000: below it the shard answers exactly from the flat buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shardsearch.v1 import search_pb2

DEFAULT_TRAIN_THRESHOLD = 10_000
DEFAULT_REFINE_FACTOR = 20
MAX_NLIST = 65_536


@dataclass(frozen=True)
class IndexParams:
    nlist: int
    pq_m: int
    pq_nbits: int
    default_nprobe: int
    refine_factor: int
    refine_by_shards: tuple[int, ...] = ()
    """Fitted when the collection leaves refine_factor unset: the factor a search reaching 1, 2, 4, 8, 16, 32 or more
    shards uses (shard_server/refine_fit.py); refine_factor is then the first. Empty: refine_factor everywhere."""

    def factory(self) -> str:
        suffix = "x4fs" if self.pq_nbits == 4 else f"x{self.pq_nbits}"
        return f"IVF{self.nlist},PQ{self.pq_m}{suffix}"


def auto_pq_m(dim: int) -> int:
    target = max(1, dim // 4)
    return max(m for m in range(1, target + 1) if dim % m == 0)


def choose(dim: int, n: int, opts: search_pb2.IndexOptions, gpu: bool = False) -> IndexParams:
    """Effective parameters for a shard that trains on `n` vectors; explicit options win.

    On a GPU the default is 8-bit PQ: FAISS's GPU IVF-PQ has no 4-bit fast-scan.
    """
    nlist = opts.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39, MAX_NLIST))
    nprobe = opts.default_nprobe or min(nlist, max(16, min(64, nlist // 8)))
    return IndexParams(
        nlist=nlist,
        pq_m=opts.pq_m or auto_pq_m(dim),
        pq_nbits=opts.pq_nbits or (8 if gpu else 4),
        default_nprobe=nprobe,
        refine_factor=opts.refine_factor or DEFAULT_REFINE_FACTOR,
    )


def check_options(dim: int, opts: search_pb2.IndexOptions) -> None:
    """Raises ValueError (with the field name) for options no index could honour."""
    if opts.pq_m and dim % opts.pq_m:
        raise ValueError(f"index.pq_m: {opts.pq_m} does not divide dim {dim}")
    if opts.pq_nbits not in (0, 4, 8):
        raise ValueError(f"index.pq_nbits: {opts.pq_nbits}; use 4 (fast-scan) or 8")
    if opts.nlist > MAX_NLIST:
        raise ValueError(f"index.nlist: {opts.nlist} exceeds {MAX_NLIST}")
    if opts.vector_store not in search_pb2.VectorStore.values():
        raise ValueError(f"index.vector_store: {opts.vector_store} is none of "
                         f"{', '.join(search_pb2.VectorStore.keys())}")
    if opts.refine_factor > 100:
        raise ValueError(f"index.refine_factor: {opts.refine_factor} exceeds 100")
    # A shard trains on train_threshold vectors: k-means needs at least one per centroid, or FAISS throws and the
    # collection never leaves the flat buffer (the background training would fail again on every tick).
    threshold = opts.train_threshold or DEFAULT_TRAIN_THRESHOLD
    if opts.nlist > threshold:
        raise ValueError(f"index.nlist: {opts.nlist} lists need at least as many training vectors, "
                         f"but train_threshold is {threshold}")
    nbits = opts.pq_nbits or 8  # auto: 4 on CPU, 8 on GPU; be safe for both
    if threshold < 2**nbits:
        raise ValueError(f"index.train_threshold: {threshold} is below {2**nbits}, the fewest vectors "
                         f"{nbits}-bit PQ can train on" + ("" if opts.pq_nbits else " (pq_nbits 0 means 8 on GPU)"))
