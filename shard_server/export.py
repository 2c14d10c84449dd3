"""ExportCollection: a shard's collections as a stream of versioned items and delete markers (what a peer copies when
it catches up or repairs, and what `shardsearch export` reads through the coordinator).

Allowed while catching up: a peer applying what this replica holds never loses anything (versions decide). A label
cursor that a relabel invalidates starts again from the beginning; items sent twice apply as no-ops.
"""

from __future__ import annotations

from typing import AsyncIterator, Callable

import numpy as np

from shardsearch import codec, topology
from shardsearch.errors import NotFound
from shardsearch.shard_server.core import ShardCore
from shardsearch.shard_server.index import Collection, Relabelled
from shardsearch.v1 import search_pb2, shard_pb2

EXPORT_CHUNK_ITEMS = 4096


async def export(core: ShardCore, request: shard_pb2.ShardExportRequest) -> AsyncIterator[shard_pb2.ShardExportChunk]:
    """One collection ("" = all): each opens with its definition, then its items, then its delete markers."""
    if request.collection:
        coll = core.get_collection(request.collection)
        if coll is None:
            raise NotFound(f"collection {request.collection!r} does not exist")
        colls = [coll]
    else:
        colls = sorted(core.collections(), key=lambda c: c.spec.name)
    limit = request.chunk_items or EXPORT_CHUNK_ITEMS
    select = topology.Selector(request.select).mask if request.HasField("select") else None
    for coll in colls:
        yield shard_pb2.ShardExportChunk(collection=coll.spec)
        async for chunk in _chunks(core, coll, limit, select):
            yield chunk


async def _chunks(
    core: ShardCore, coll: Collection, limit: int, select: Callable[[np.ndarray], np.ndarray] | None = None
) -> AsyncIterator[shard_pb2.ShardExportChunk]:
    name, after, generation = coll.spec.name, -1, coll.generation
    while True:
        try:
            ids, vectors, payloads, versions, after, fields = await core.run(
                coll.export_chunk, after, limit, select, generation)
        except Relabelled:  # labels moved under the cursor: all again (items sent twice apply as no-ops)
            after, generation = -1, coll.generation
            continue
        if ids:
            yield shard_pb2.ShardExportChunk(items=shard_pb2.ShardUpsertRequest(
                collection=name, ids=ids, vectors_f32=codec.pack(vectors),
                payloads=payloads if any(payloads) else (), versions=versions.tolist(),
                fields=[search_pb2.Fields.FromString(blob) for blob in fields] if any(fields) else (),
            ))
        if after < 0:
            break
    markers = await core.run(coll.delete_markers, select)
    for lo in range(0, len(markers), limit):
        part = markers[lo : lo + limit]
        yield shard_pb2.ShardExportChunk(deletes=shard_pb2.ShardDeleteRequest(
            collection=name, ids=[i for i, _ in part], versions=[v for _, v in part],
        ))
