"""What a benchmark sends: query vectors and ground truth from files, requests serialized once, and loading a dataset.

Requests are serialized to bytes before the run (the channels pass bytes through untouched), so the hot loop never
builds or serializes a protobuf.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from shardsearch import codec
from shardsearch.v1 import search_pb2, search_pb2_grpc

logger = logging.getLogger(__name__)

UPSERT_BATCH = 1000
"""Items per Upsert while loading: well under the 10,000-item and 64 MiB limits even at dim 4096."""


@dataclass(frozen=True)
class Workload:
    """Queries (n x d float32) and, when known, the ids of each query's exact nearest neighbours (n x >= 10)."""

    queries: np.ndarray
    truth: np.ndarray | None = None


@dataclass(frozen=True)
class Request:
    """One call's serialized message and the query rows it carries, in order (for recall)."""

    payload: bytes
    queries: tuple[int, ...]


def _read_vecs(path: Path, dtype: str) -> np.ndarray:
    """Reads the TEXMEX .fvecs/.ivecs layout: every row is an int32 dimension followed by that many values."""
    raw = np.fromfile(path, dtype="<i4")
    if raw.size == 0:
        raise ValueError(f"{path} is empty")
    dim = int(raw[0])
    if dim <= 0 or raw.size % (dim + 1):
        raise ValueError(f"{path} is not a {dim}-d vecs file")
    rows = raw.reshape(-1, dim + 1)
    if (rows[:, 0] != dim).any():
        raise ValueError(f"{path} has rows of different dimensions")
    return np.ascontiguousarray(rows[:, 1:]).view(dtype)


def read_vectors(path: str | Path) -> np.ndarray:
    """An n x d float32 matrix from .npy (any numeric dtype, e.g. SIFT's uint8) or .fvecs."""
    path = Path(path)
    matrix = _read_vecs(path, "<f4") if path.suffix == ".fvecs" else np.load(path)
    if matrix.ndim != 2:
        raise ValueError(f"{path}: expected an n x d matrix, got shape {matrix.shape}")
    return np.ascontiguousarray(matrix, dtype=np.float32)


def read_ids(path: str | Path) -> np.ndarray:
    """An n x m integer matrix of neighbour ids from .npy or .ivecs."""
    path = Path(path)
    ids = _read_vecs(path, "<i4") if path.suffix == ".ivecs" else np.load(path)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{path}: expected an n x m integer matrix, got {ids.dtype} {ids.shape}")
    return ids


def read_workload(queries: str | Path, truth: str | Path | None = None) -> Workload:
    """Queries and optional ground truth, checked to match up (rows beyond the queries' count are ignored)."""
    vectors = read_vectors(queries)
    ids = read_ids(truth) if truth is not None else None
    if ids is not None and (len(ids) < len(vectors) or ids.shape[1] < 10):
        raise ValueError(f"ground truth {ids.shape} must have a row of >= 10 ids for each of {len(vectors)} queries")
    return Workload(vectors, ids)


def read_dataset(folder: str | Path) -> Workload:
    """A dataset folder as in shared/data: queries.npy and gt_top100.npy (base.npy is read only by `load`)."""
    folder = Path(folder)
    return read_workload(folder / "queries.npy", folder / "gt_top100.npy")


def search_request(queries: np.ndarray, rows: tuple[int, ...], **fields: Any) -> Request:
    """A SearchRequest for the one query in `rows`; `fields` are the SearchRequest fields every query shares."""
    (row,) = rows
    return Request(search_pb2.SearchRequest(vector_f32=codec.pack(queries[row]), **fields).SerializeToString(), rows)


def batch_request(queries: np.ndarray, rows: tuple[int, ...], **fields: Any) -> Request:
    """A BatchSearchRequest for the queries in `rows`, in that order."""
    message = search_pb2.BatchSearchRequest(vectors_f32=codec.pack(queries[list(rows)]), **fields)
    return Request(message.SerializeToString(), rows)


def stream_batch_request(queries: np.ndarray, rows: tuple[int, ...], **fields: Any) -> Request:
    """A StreamSearch message carrying the queries in `rows` (SearchRequest.vectors_f32), in that order."""
    message = search_pb2.SearchRequest(vectors_f32=codec.pack(queries[list(rows)]), **fields)
    return Request(message.SerializeToString(), rows)


def batches(n: int, size: int) -> list[tuple[int, ...]]:
    """Rows of `size`-query batches that walk n queries in order, the last one wrapping round to the start."""
    return [tuple((start + j) % n for j in range(size)) for start in range(0, n, size)]


async def load(stub: search_pb2_grpc.SearchServiceStub, collection: str, base: np.ndarray,
               train_threshold: int = 0) -> None:
    """Creates an L2 collection (an existing one is reused: upserts replace by id) and upserts row i as id str(i)."""
    try:
        await stub.CreateCollection(search_pb2.CreateCollectionRequest(
            name=collection, dim=base.shape[1], metric=search_pb2.METRIC_L2,
            index=search_pb2.IndexOptions(train_threshold=train_threshold),
        ))
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
        logger.info("collection %r exists: upserting into it", collection)
    started = time.perf_counter()
    for lo in range(0, len(base), UPSERT_BATCH):
        await stub.Upsert(search_pb2.UpsertRequest(collection=collection, items=[
            search_pb2.Item(id=str(i), vector_f32=codec.pack(base[i])) for i in range(lo, min(len(base), lo + UPSERT_BATCH))
        ]))
    logger.info("loaded %d vectors into %r in %.1fs", len(base), collection, time.perf_counter() - started)


async def wait_trained(stub: search_pb2_grpc.SearchServiceStub, collection: str, timeout: float) -> None:
    """Polls DescribeCollection until every shard serves from a trained index with nothing left to train.

    Fails at once for a shard that holds fewer vectors than its train_threshold: it searches exactly and never trains.
    """
    deadline = time.monotonic() + timeout
    while True:
        info = await stub.DescribeCollection(search_pb2.DescribeCollectionRequest(name=collection))
        if all(s.trained and not s.training and not s.error for s in info.shards):
            return
        for shard in info.shards:
            if not (shard.error or shard.trained or shard.training) and shard.vectors < shard.index.train_threshold:
                raise ValueError(
                    f"{shard.shard} holds {shard.vectors} vectors, below its train_threshold "
                    f"{shard.index.train_threshold}: it will not train (lower --train-threshold)"
                )
        if time.monotonic() > deadline:
            raise TimeoutError(f"{collection!r} not trained on every shard within {timeout:.0f}s")
        await asyncio.sleep(0.2)
