"""A bulk load through the coordinator's public API: connect, check (or create) the collection, then stream the source
in batches to `concurrency` writers over one grpc.aio channel, with a progress bar, and return the summary."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from shardsearch import security
from shardsearch.client import VECTOR_STORES, AsyncClient, Unavailable
from shardsearch.tools.ingest.sources import Record, Source, open_source
from shardsearch.tools.ingest.summary import IngestSummary
from shardsearch.tools.ingest.writer import RetryPolicy, RpcFailure, batches, with_retries, write_batch
from shardsearch.v1 import search_pb2, search_pb2_grpc

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
METRICS = {"l2": search_pb2.METRIC_L2, "ip": search_pb2.METRIC_INNER_PRODUCT}
LEARN_DIM_TRIES = 8
"""Texts or images tried, in order, to learn a new collection's dimension from the coordinator's encoder."""


class IngestError(Exception):
    """A fatal error: the run cannot start or go on (coordinator unreachable, collection missing or unusable)."""


@dataclass(frozen=True)
class IngestOptions(security.ClientSecurity):
    """Each field is the `shardsearch ingest` flag of the same name; checked on creation."""

    batch_size: int = 0
    """Items per Upsert; 0: 256 for vectors, 32 for texts and images (the coordinator embeds those)."""
    concurrency: int = 4
    """Upserts in flight at once."""
    timeout: float = 60.0
    """Deadline of each call, in seconds."""
    retries: int = 5
    """Retries of a call failing with UNAVAILABLE, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED."""
    backoff_s: float = 0.2
    overwrite: bool = False
    """Upsert every item; by default ids already stored are skipped (so a rerun resumes)."""
    create: bool = False
    """Create the collection if it does not exist."""
    dim: int = 0
    """With create: the dimension; 0: the vector file's, else the first item's vector's, else the length of the
    coordinator's embedding of the first text or image (an `Encode` call)."""
    metric: str = "l2"
    vector_store: str = "float32"
    """With create: how the shards keep the vectors (float32, float16 or sq8: search.proto's VectorStore)."""
    progress: bool | None = False
    """Show a progress bar on stderr; None: only when stderr is a terminal."""

    def __post_init__(self) -> None:
        if self.batch_size < 0 or self.concurrency < 1 or self.timeout <= 0 or self.retries < 0 or self.dim < 0:
            raise ValueError("batch_size and dim must be >= 0, concurrency >= 1, timeout > 0 and retries >= 0")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.vector_store not in VECTOR_STORES:
            raise ValueError(f"vector_store must be one of {', '.join(VECTOR_STORES)}, got {self.vector_store!r}")


async def ingest(address: str, collection: str, source: Source | str | Path, *, ids: str | Path | None = None,
                 **options: Any) -> IngestSummary:
    """Loads `source` (a Source, or a path: an image folder, a .npy/.fvecs file, else JSONL) into `collection`.

    Options are IngestOptions' fields. Raises IngestError (fatal: nothing more can be sent), SourceError (the source
    cannot be read) or SecurityConfigError; items that fail are counted in the summary, not raised.
    """
    opts = IngestOptions(**options)
    if not isinstance(source, Source):
        source = await asyncio.to_thread(open_source, source, ids)
    # No gRPC retries: the writers retry with their own policy, and count what they retried.
    client = AsyncClient(address, timeout=opts.timeout, retries=False, **opts.client_kwargs())
    try:
        try:
            await client.wait_ready(min(CONNECT_TIMEOUT_S, opts.timeout))
        except Unavailable:
            raise IngestError(f"could not connect to the coordinator at {address}") from None
        stub = search_pb2_grpc.SearchServiceStub(client.channel)
        await prepare_collection(stub, collection, source, opts)
        summary = await load(stub, collection, source, opts)
    finally:
        await client.close()
    summary.address = address
    return summary


async def _call(method: Any, request: Any, timeout: float) -> Any:
    """One unary call, its gRPC error mapped to RpcFailure (what the writer and retries understand)."""
    try:
        return await method(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        raise RpcFailure(exc.code(), exc.details() or "") from exc


async def prepare_collection(stub: search_pb2_grpc.SearchServiceStub, name: str, source: Source,
                             opts: IngestOptions) -> search_pb2.Collection:
    """The collection's definition, created first with `create`; IngestError if it is missing or of another dim."""
    policy = RetryPolicy(opts.retries, opts.backoff_s)
    describe = search_pb2.DescribeCollectionRequest(name=name)
    try:
        spec = (await with_retries(lambda: _call(stub.DescribeCollection, describe, opts.timeout), policy)).collection
    except RpcFailure as failure:
        if failure.code != grpc.StatusCode.NOT_FOUND:
            raise IngestError(f"cannot describe collection {name!r}: {failure.reason}") from None
        if not opts.create:
            raise IngestError(f"collection {name!r} does not exist (pass --create to create it)") from None
        spec = await _create(stub, name, source, opts, policy)
    want = opts.dim or source.dim
    if want and spec.dim != want:
        raise IngestError(f"collection {name!r} has dim {spec.dim}, but {'--dim' if opts.dim else source.path} "
                          f"says {want}")
    return spec


async def _create(stub: search_pb2_grpc.SearchServiceStub, name: str, source: Source, opts: IngestOptions,
                  policy: RetryPolicy) -> search_pb2.Collection:
    dim = opts.dim or source.dim or await learn_dim(stub, source, opts, policy)
    index = search_pb2.IndexOptions(vector_store=VECTOR_STORES[opts.vector_store])
    request = search_pb2.CreateCollectionRequest(name=name, dim=dim, metric=METRICS[opts.metric], index=index)
    try:
        spec = (await with_retries(lambda: _call(stub.CreateCollection, request, opts.timeout), policy)).collection
    except RpcFailure as failure:
        if failure.code != grpc.StatusCode.ALREADY_EXISTS:  # someone else just created it: use theirs
            raise IngestError(f"cannot create collection {name!r}: {failure.reason}") from None
        describe = search_pb2.DescribeCollectionRequest(name=name)
        return (await _call(stub.DescribeCollection, describe, opts.timeout)).collection
    logger.info("created collection %r (dim %d, %s)", name, dim, opts.metric)
    return spec


async def learn_dim(stub: search_pb2_grpc.SearchServiceStub, source: Source, opts: IngestOptions,
                    policy: RetryPolicy) -> int:
    """The dimension of a new collection without --dim: the first item's vector's, or the length of the coordinator's
    embedding of the first text or image (an `Encode` of it). An item the encoder refuses (INVALID_ARGUMENT: an
    undecodable image, say) is passed over for the next, up to LEARN_DIM_TRIES; any other failure is fatal, among
    them FAILED_PRECONDITION when the coordinator has no encoder for the kind."""
    items = await asyncio.to_thread(source.first_items, LEARN_DIM_TRIES)
    if not items:
        raise IngestError(f"--create: {source.path} has no readable item to learn the dimension from (pass --dim)")
    refused = ""
    for item in items:
        if item.vector or item.vector_f32:
            return len(item.vector) or len(item.vector_f32) // 4
        kind = "image" if item.image else "text"
        request = (search_pb2.EncodeRequest(images=[item.image]) if item.image
                   else search_pb2.EncodeRequest(texts=[item.text]))
        try:
            response = await with_retries(lambda: _call(stub.Encode, request, opts.timeout), policy)
        except RpcFailure as failure:
            if failure.code == grpc.StatusCode.INVALID_ARGUMENT:
                refused = f"{item.id}: {failure.reason}"
                continue
            raise IngestError(f"--create: cannot learn the dimension of the coordinator's {kind} embeddings "
                              f"(pass --dim): {failure.reason}") from None
        dim = len(response.embeddings[0].vector_f32) // 4 if response.embeddings else 0
        if not dim:
            raise IngestError(f"--create: the coordinator's Encode returned no {kind} embedding (pass --dim)")
        logger.info("learned dim %d from the coordinator's %s model (%s)", dim, kind,
                    response.image_model if item.image else response.text_model)
        return dim
    raise IngestError(f"--create: cannot learn the dimension: the coordinator refused the first {len(items)} items "
                      f"(last {refused}); pass --dim")


async def load(stub: search_pb2_grpc.SearchServiceStub, collection: str, source: Source,
               opts: IngestOptions) -> IngestSummary:
    """Streams the source: one producer reads batches in a worker thread, `concurrency` writers send them."""

    async def upsert(items: list[search_pb2.Item]) -> None:
        await _call(stub.Upsert, search_pb2.UpsertRequest(collection=collection, items=items), opts.timeout)

    async def existing(ids: list[str]) -> set[str]:
        response = await _call(stub.Get, search_pb2.GetRequest(collection=collection, ids=ids), opts.timeout)
        return {item.id for item in response.items}

    summary = IngestSummary(collection, str(source.path))
    policy = RetryPolicy(opts.retries, opts.backoff_s)
    queue: asyncio.Queue[list[Record] | None] = asyncio.Queue(maxsize=2 * opts.concurrency)
    bar = tqdm(total=source.total, unit="item", desc=collection, file=sys.stderr, dynamic_ncols=True,
               disable=None if opts.progress is None else not opts.progress)

    async def produce() -> None:
        pending = batches(source.records(), opts.batch_size or source.default_batch_size)
        while (batch := await asyncio.to_thread(next, pending, None)) is not None:
            await queue.put(batch)
        for _ in range(opts.concurrency):  # on an error the task group cancels the writers instead
            await queue.put(None)

    async def write() -> None:
        while (batch := await queue.get()) is not None:
            summary.add(await write_batch(batch, upsert, None if opts.overwrite else existing, policy))
            bar.set_postfix_str(f"skipped={summary.skipped}, failed={summary.failed}", refresh=False)
            bar.update(len(batch))

    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            for _ in range(opts.concurrency):
                group.create_task(write())
    except BaseExceptionGroup as errors:  # the first real error (a SourceError, say), not the group
        raise errors.exceptions[0] from None
    finally:
        bar.close()
        summary.elapsed_s = time.perf_counter() - started
    return summary
