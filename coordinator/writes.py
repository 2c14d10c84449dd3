"""Writes and point reads: collections created and dropped on every shard, items upserted and deleted on their owning
shards (both owners during a move), items read by id. A write that any shard applied invalidates the collection's
cached answers before it is acknowledged."""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Sequence

import grpc
import numpy as np

from shardsearch import codec, validation
from shardsearch.coordinator.catalog import Catalog
from shardsearch.coordinator.embedding import Embedding
from shardsearch.coordinator.router import Router
from shardsearch.coordinator.search import Searcher
from shardsearch.coordinator.shards import Outcome, ShardPool
from shardsearch.errors import AlreadyExists, InvalidArgument, NotFound, ShardSearchError
from shardsearch.offload import Offload
from shardsearch.v1 import search_pb2, shard_pb2


class Writes:
    def __init__(
        self, pool: ShardPool, router: Router, catalog: Catalog, searcher: Searcher, run: Offload,
        limits: validation.Limits, clock: Callable[[], int], embedding: Embedding,
    ) -> None:
        self._pool = pool
        self._router = router
        self._catalog = catalog
        self._searcher = searcher
        self._run = run
        self._limits = limits
        self._clock = clock
        self._embedding = embedding

    async def _invalidate(self, collection: str, outcomes: Sequence[Outcome]) -> None:
        """After any shard applied a write (even if others failed), cached answers for the collection are dead."""
        cache = self._searcher.cache
        if cache is not None and any(o.ok for o in outcomes):
            await cache.invalidate(collection)

    def _raise_failure(self, collection: str, outcomes: Sequence[Outcome], what: str) -> None:
        failed = [o for o in outcomes if not o.ok]
        if not failed:
            return
        for outcome in failed:
            assert outcome.error is not None
            if outcome.error.code == grpc.StatusCode.NOT_FOUND:
                self._catalog.forget(collection)
                raise NotFound(f"collection {collection!r} does not exist")
        error = failed[0].error
        assert error is not None
        raise ShardSearchError(
            f"{what} reached {len(outcomes) - len(failed)} of {len(outcomes)} owning shards; {error} "
            "(retrying the whole call is safe)", error.code,
        )

    async def _on_every_shard(
        self, name: str, method: str, request: Any, timeout: float, benign: grpc.StatusCode, done: str
    ) -> bool:
        """Sends a collection-wide change to every replica of every shard; True if every one answered `benign` (the
        change was already there). Raises, saying on how many shards the change is, if some failed."""
        outcomes = await self._pool.write_broadcast(method, request, timeout, every_replica=True, benign=benign)
        await self._invalidate(name, outcomes)
        already = [o for o in outcomes if o.error is not None and o.error.code == benign]
        if len(already) == len(outcomes):
            return True
        failed = [o for o in outcomes if not o.ok and o not in already]
        if failed:
            error = failed[0].error
            assert error is not None
            raise ShardSearchError(
                f"collection {name!r} {done} {len(outcomes) - len(failed)} of {len(outcomes)} shards; {error} "
                f"(retry {method} to finish)", error.code,
            )
        return False

    async def _write_items(
        self, collection: str, method: str, version: int, deadline: float,
        route: Callable[[], Awaitable[list[tuple[Any, Any]]]],
    ) -> list[Outcome]:
        """A write of items to their owning shards under the routed-call rules; the cache is invalidated if any
        shard applied it, and it raises unless every owner did."""
        async def attempt(timeout: float) -> list[Outcome]:
            return await self._pool.write_fan_out(method, await route(), timeout, version=version)

        outcomes = await self._router.routed(attempt, deadline)
        await self._invalidate(collection, outcomes)
        self._raise_failure(collection, outcomes, method.lower())
        return outcomes

    # ---- collections ----------------------------------------------------------------------------------------

    async def create_collection(
        self, request: search_pb2.CreateCollectionRequest, timeout: float
    ) -> search_pb2.CreateCollectionResponse:
        spec = search_pb2.Collection(name=request.name, dim=request.dim, metric=request.metric, index=request.index)
        validation.check_collection(spec, self._limits)
        if await self._on_every_shard(spec.name, "CreateCollection", shard_pb2.ShardCreateCollectionRequest(
                collection=spec), timeout, grpc.StatusCode.ALREADY_EXISTS, "is on"):
            raise AlreadyExists(f"collection {spec.name!r} already exists")
        self._catalog.put(spec)
        return search_pb2.CreateCollectionResponse(collection=spec)

    async def drop_collection(
        self, request: search_pb2.DropCollectionRequest, timeout: float
    ) -> search_pb2.DropCollectionResponse:
        try:
            missing = await self._on_every_shard(request.name, "DropCollection", shard_pb2.ShardDropCollectionRequest(
                name=request.name), timeout, grpc.StatusCode.NOT_FOUND, "was dropped on")
        finally:  # after the shards answered (a search meanwhile may have read the definition back)
            self._catalog.forget(request.name)
        if missing:
            raise NotFound(f"collection {request.name!r} does not exist")
        return search_pb2.DropCollectionResponse()

    # ---- items ----------------------------------------------------------------------------------------------

    async def upsert(self, request: search_pb2.UpsertRequest, timeout: float) -> search_pb2.UpsertResponse:
        deadline = time.monotonic() + timeout
        spec = await self._catalog.get(request.collection, timeout)
        embedded = await self._embedding.embed_items(spec, request.items, timeout)
        version = self._clock()

        async def route() -> list[tuple[Any, Any]]:
            return await self._run(route_items, request, spec, self._router, self._limits, version, embedded)

        outcomes = await self._write_items(spec.name, "Upsert", version, deadline, route)
        return search_pb2.UpsertResponse(upserted=sum(o.response.upserted for o in outcomes))

    async def delete(self, request: search_pb2.DeleteRequest, timeout: float) -> search_pb2.DeleteResponse:
        spec = await self._catalog.get(request.collection, timeout)
        ids = list(request.ids)
        validation.check_ids(ids, "ids", self._limits)
        version = self._clock()
        deadline = time.monotonic() + timeout

        async def route() -> list[tuple[Any, Any]]:
            return [
                (shard, shard_pb2.ShardDeleteRequest(
                    collection=spec.name, ids=[ids[i] for i in rows], version=version,
                    topology_version=self._router.version,
                ))
                for shard, rows in self._router.write_groups(ids)
            ]

        outcomes = await self._write_items(spec.name, "Delete", version, deadline, route)
        return search_pb2.DeleteResponse(deleted=sum(o.response.deleted for o in outcomes))

    async def get(self, request: search_pb2.GetRequest, timeout: float) -> search_pb2.GetResponse:
        spec = await self._catalog.get(request.collection, timeout)
        ids = list(request.ids)
        validation.check_ids(ids, "ids", self._limits)
        outcomes = await self.read(spec, ids, timeout)
        found: dict[str, search_pb2.Item] = {}
        row = 4 * spec.dim
        for outcome in outcomes:
            r = outcome.response
            with_fields = len(r.fields) == len(r.ids)
            for i, item_id in enumerate(r.ids):
                found[item_id] = item = search_pb2.Item(
                    id=item_id, vector_f32=r.vectors_f32[i * row : (i + 1) * row], payload=r.payloads[i]
                )
                if with_fields:
                    item.fields.MergeFrom(r.fields[i].values)
        return search_pb2.GetResponse(items=[found[i] for i in dict.fromkeys(ids) if i in found])

    async def read(self, spec: search_pb2.Collection, ids: list[str], timeout: float) -> list[Outcome]:
        """Reads items by id from their owners (any replica); raises unless every owner answered."""

        async def attempt(timeout: float) -> list[Outcome]:
            routed = [
                (shard, shard_pb2.ShardGetRequest(collection=spec.name, ids=group, topology_version=self._router.version))
                for shard, group in self._router.read_groups(ids)
            ]
            return await self._pool.fan_out("Get", routed, timeout)

        outcomes = await self._router.routed(attempt, time.monotonic() + timeout)
        self._raise_failure(spec.name, outcomes, "get")
        return outcomes

    async def stored_vector(self, spec: search_pb2.Collection, item_id: str, timeout: float) -> np.ndarray:
        """The vector stored for `item_id`, from the shard that owns it (any of its replicas)."""
        outcome = (await self.read(spec, [item_id], timeout))[0]
        if not outcome.response.ids:
            raise NotFound(f"collection {spec.name!r} has no item {item_id!r}")
        return codec.unpack(outcome.response.vectors_f32, spec.dim)[0]

    async def stored_vectors(self, spec: search_pb2.Collection, ids: list[str], timeout: float) -> dict[str, np.ndarray]:
        """The vectors stored for `ids` (unique), by id; NotFound names the first ids no shard holds."""
        validation.check_ids(ids, "queries.id", self._limits)
        found: dict[str, np.ndarray] = {}
        for outcome in await self.read(spec, ids, timeout):
            stored = codec.unpack(outcome.response.vectors_f32, spec.dim)
            for row, item_id in enumerate(outcome.response.ids):
                found[item_id] = stored[row]
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"collection {spec.name!r} has no item {', '.join(map(repr, missing[:5]))}")
        return found


def route_items(
    request: search_pb2.UpsertRequest, spec: search_pb2.Collection, router: Router,
    limits: validation.Limits, version: int = 0, embedded: dict[int, np.ndarray] | None = None,
) -> list[tuple[Any, shard_pb2.ShardUpsertRequest]]:
    """Validates the items and splits them by owning shard (both owners during a move; runs in the executor: numpy
    and per-item work). `embedded` holds the vectors of items given as a text or an image, by row."""
    items = request.items
    if not items:
        raise InvalidArgument("items: at least one item is required")
    ids = [item.id for item in items]
    validation.check_ids(ids, "items", limits, unique=True)
    dim = spec.dim
    matrix = np.empty((len(items), dim), dtype=np.float32)
    embedded = embedded or {}
    for i, item in enumerate(items):
        if i in embedded:
            matrix[i] = embedded[i]
        elif item.text or item.image:
            raise InvalidArgument(f"items[{i}]: has a text or image that was not embedded")
        else:
            matrix[i] = codec.one_vector(item.vector, item.vector_f32, dim, f"items[{i}].vector")
    payloads = [item.payload for item in items]
    validation.check_payloads(payloads, "items", limits)
    has_payload = any(payloads)
    fields = item_fields(items, limits)
    routed = []
    for shard, rows in router.write_groups(ids):
        routed.append((shard, shard_pb2.ShardUpsertRequest(
            collection=spec.name, ids=[ids[i] for i in rows], vectors_f32=codec.pack(matrix[rows]),
            payloads=[payloads[i] for i in rows] if has_payload else (), version=version,
            fields=[fields[i] for i in rows] if fields and any(fields[i].values for i in rows) else (),
            topology_version=router.version,
        )))
    return routed


def item_fields(items: Sequence[search_pb2.Item], limits: validation.Limits) -> list[search_pb2.Fields]:
    """Each item's structured fields, validated; [] when no item has any (the shard requests then carry none)."""
    if not any(item.fields for item in items):
        return []
    fields = []
    for i, item in enumerate(items):
        one = search_pb2.Fields(values=item.fields)
        if item.fields:
            validation.check_fields(one, f"items[{i}].fields", limits)
        fields.append(one)
    return fields
