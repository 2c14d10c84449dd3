"""The approximate search pipeline, as pure functions over a collection's arrays: candidates from the IVF-PQ index
(optionally restricted to a filter's labels) and the exact fresh buffer, resolved against what is allowed (alive,
matching), scored exactly on the stored vectors and re-ranked to the top k. `Collection` calls them under or
outside its lock as its docstrings say; nothing here locks or keeps state."""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from shardsearch import index_params
from shardsearch.shard_server import device, refine_fit, retrain
from shardsearch.shard_server import vectors as vector_rows

MAX_FILTER_PROBE_BOOST = 16.0  # a filter matching a fraction f of the items probes min(1/f, this) times more lists

BLAS_FROM_QUERIES = 8
"""FAISS computes exact distances (the IVF coarse quantizer, flat and buffer search) with its own loop over query and
vector pairs below `distance_compute_blas_threshold`, compared with queries x dim of the call, and with BLAS (sgemm)
above it. FAISS 1.15's default, 128,000 (tuned on many-core machines), keeps batches of up to 333 384-d queries on the
loop. Measured here (2 cores, OpenBLAS, 1 and 2 OpenMP threads, d 32 to 384, 256 to 4,096 centroids), BLAS is faster
from about 8 queries a call at every d: 3x for the 100 of a BatchSearch (1,264 x 384-d centroids, one thread: 34 vs
10 us a query), while one query is 4x slower with it (40 vs 176 us)."""


def prefer_blas_from(dim: int) -> None:
    """Sets FAISS's switch to BLAS at BLAS_FROM_QUERIES queries of `dim` for the next call. The threshold is one
    process-wide integer and collections differ in dim: set before each search (a search of another collection
    running meanwhile then takes the other path for one call: slower, never different in what it finds)."""
    threshold = BLAS_FROM_QUERIES * dim
    if faiss.cvar.distance_compute_blas_threshold != threshold:
        faiss.cvar.distance_compute_blas_threshold = threshold


def depth(chosen: index_params.IndexParams, k: int, shards: int = 1) -> int:
    """PQ candidates one shard re-ranks per query when a search reaches `shards` shards: k x the factor fitted for
    that many shards (shard_server/refine_fit.py), or k x the collection's refine_factor when none was fitted. A
    fitted depth is at least min(k x 20, 20) candidates: the fit is made for k = 10, and a search for one neighbour
    keeps the 20 an unfitted index gives it (explain's refine_factor is then the fitted one, not depth / k)."""
    fitted = refine_fit.factor(chosen, shards)
    if not chosen.refine_by_shards:
        return k * fitted
    return max(k * fitted, min(k * index_params.DEFAULT_REFINE_FACTOR, 2 * retrain.RECALL_K))


def ivf_candidates(
    index: faiss.Index | None, chosen: index_params.IndexParams | None, queries: np.ndarray, k: int,
    nprobe: int = 0, shards: int = 1,
) -> np.ndarray:
    """Labels of the IVF-PQ candidates a search re-ranks (`depth` of them) at `nprobe` (0: the default)."""
    if index is None or chosen is None or index.ntotal == 0:
        return np.zeros((len(queries), 0), np.int64)
    kf = min(depth(chosen, k, shards), int(index.ntotal))
    probe = min(nprobe or chosen.default_nprobe, chosen.nlist)
    return index.search(queries, kf, params=faiss.SearchParametersIVF(nprobe=probe))[1]


def resolved(candidates: list[np.ndarray], allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate labels of each query side by side (FAISS's -1: none), whether each is a label `allowed` holds
    True for (alive, or alive and passing a filter), and the labels with 0 in place of the others (safe to index
    the stored vectors with: their scores are masked by `valid`)."""
    labels = np.concatenate(candidates, axis=1)
    valid = (labels >= 0) & (labels < len(allowed))
    safe = np.where(valid, labels, 0)
    valid &= allowed[safe]
    return labels, valid, safe


def rerank(labels: np.ndarray, valid: np.ndarray, scores: np.ndarray, k: int,
           inner_product: bool) -> tuple[np.ndarray, np.ndarray]:
    """The best k valid candidates of each query by exact score (ties keep candidate order), padded with -1."""
    order_key = -scores if inner_product else scores.copy()
    order_key[~valid] = np.inf
    if labels.shape[1] > k:
        top = np.argpartition(order_key, k - 1, axis=1)[:, :k]
    else:
        top = np.broadcast_to(np.arange(labels.shape[1]), labels.shape)
    top = np.take_along_axis(top, np.argsort(np.take_along_axis(order_key, top, axis=1), axis=1, kind="stable"), axis=1)
    out_labels = np.take_along_axis(labels, top, axis=1)
    out_scores = np.take_along_axis(scores, top, axis=1).astype(np.float32)
    out_labels[~np.take_along_axis(valid, top, axis=1)] = -1
    if out_labels.shape[1] < k:
        pad = k - out_labels.shape[1]
        out_labels = np.pad(out_labels, ((0, 0), (0, pad)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)))
    return out_labels, out_scores


def ranked(queries: np.ndarray, candidates: list[np.ndarray], allowed: np.ndarray, vecs: vector_rows.VectorRows,
           k: int, inner_product: bool) -> tuple[np.ndarray, np.ndarray]:
    """Candidates -> the allowed ones -> exact scores -> the top k (labels, scores)."""
    labels, valid, safe = resolved(candidates, allowed)
    return rerank(labels, valid, vecs.scores(queries, safe, inner_product), k, inner_product)


def exact_subset(queries: np.ndarray, k: int, labels: np.ndarray, vecs: Any,
                 metric: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among `labels` of `vecs` (labels, scores), padded with -1 when there are fewer than k."""
    kk = min(k, len(labels))
    scores, found = faiss.knn(queries, vecs[labels], kk, metric=metric)
    out_labels = np.where(found >= 0, labels[np.maximum(found, 0)], -1)
    if kk < k:
        out_labels = np.pad(out_labels, ((0, 0), (0, k - kk)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, k - kk)))
    return out_labels.astype(np.int64), scores.astype(np.float32)


def selected(
    index: faiss.Index, chosen: index_params.IndexParams, queries: np.ndarray, k: int, nprobe: int,
    mask: np.ndarray, matching: int, live: int, buffer_start: int, vecs: vector_rows.VectorRows, metric: int,
    inner_product: bool, explain: dict[str, Any] | None = None, shards: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """IVF search restricted to the labels in `mask` (a FAISS id selector skips the other codes in the scan), plus
    the matching labels of the fresh buffer (from `buffer_start`) exactly. It probes min(live / matching,
    MAX_FILTER_PROBE_BOOST) times more lists the more selective the filter is, and probes again, 4 times wider,
    for the queries that found fewer than k matches while more exist."""
    n = queries.shape[0]
    bits = np.packbits(mask, bitorder="little")  # bit i % 8 of byte i // 8 = label i, as IDSelectorBitmap reads
    selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))  # labels past the bitmap: not selected
    boost = min(live / matching, MAX_FILTER_PROBE_BOOST)
    probe = min(chosen.nlist, math.ceil((nprobe or chosen.default_nprobe) * boost))
    buffered = buffer_start + np.flatnonzero(mask[buffer_start:])
    kf = min(depth(chosen, k, shards), int(index.ntotal))
    if explain is not None:
        explain.update(path="ivf with selector", nprobe=probe, refine_factor=refine_fit.factor(chosen, shards),
                       refine_depth=kf, shards_searched=shards, candidates=kf + len(buffered))
    out_labels = np.full((n, k), -1, np.int64)
    out_scores = np.zeros((n, k), np.float32)
    todo = np.arange(n)
    while True:
        batch = queries[todo]
        _, found = index.search(batch, kf, params=faiss.SearchParametersIVF(nprobe=probe, sel=selector))
        candidates = [found]
        if len(buffered):
            _, near = faiss.knn(batch, vecs[buffered], min(len(buffered), k), metric=metric)
            candidates.append(np.where(near >= 0, buffered[np.maximum(near, 0)], -1))
        labels, scores = ranked(batch, candidates, mask, vecs, k, inner_product)
        out_labels[todo], out_scores[todo] = labels, scores
        short = np.flatnonzero((labels >= 0).sum(axis=1) < min(k, matching))
        if len(short) == 0 or probe >= chosen.nlist:
            return out_labels, out_scores
        todo, probe = todo[short], min(chosen.nlist, probe * 4)


MAX_TRAIN_SAMPLE = 200_000
ADD_CHUNK = 65_536


def build(
    dim: int, metric: int, vecs: Any, labels: np.ndarray, options: Any, use_gpu: bool = False,
) -> tuple[faiss.Index, index_params.IndexParams]:
    """A trained IVF-PQ index of `labels` (their rows of `vecs`) with the parameters the data-size rule chooses for
    `options`: trained on a seeded sample of at most MAX_TRAIN_SAMPLE rows, then every label added in chunks."""
    chosen = index_params.choose(dim, len(labels), options, gpu=use_gpu)
    rng = np.random.default_rng(len(labels))
    sample_size = min(len(labels), max(chosen.nlist * 64, 16_384), MAX_TRAIN_SAMPLE)
    sample = np.sort(rng.choice(labels, size=sample_size, replace=False))
    index = faiss.index_factory(dim, chosen.factory(), metric)
    index.train(vecs[sample])
    index = device.to_device(index, use_gpu)
    for lo in range(0, len(labels), ADD_CHUNK):
        chunk = labels[lo : lo + ADD_CHUNK]
        index.add_with_ids(vecs[chunk], chunk)
    return index, chosen
