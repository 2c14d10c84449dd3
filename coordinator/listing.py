"""Listing: the collections, one collection's shards, and a collection's ids page by page (shard after shard, each
in its hash order, behind a token that names the ring layout it was made under)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import grpc

from shardsearch import topology, validation
from shardsearch.coordinator.catalog import Catalog
from shardsearch.coordinator.router import Router
from shardsearch.coordinator.shards import ShardPool
from shardsearch.errors import InvalidArgument, NotFound
from shardsearch.v1 import search_pb2, shard_pb2

DEFAULT_PAGE_SIZE = 1000
PAGE_TOKEN_VERSION = 2  # 2: tokens name the ring layout's version (1 named the shard count)


class Listing:
    def __init__(self, pool: ShardPool, router: Router, catalog: Catalog, limits: validation.Limits) -> None:
        self._pool = pool
        self._router = router
        self._catalog = catalog
        self._limits = limits

    async def collections(self, timeout: float) -> search_pb2.ListCollectionsResponse:
        return search_pb2.ListCollectionsResponse(collections=await self._catalog.refresh(timeout))

    async def describe(
        self, request: search_pb2.DescribeCollectionRequest, timeout: float
    ) -> search_pb2.DescribeCollectionResponse:
        spec = await self._catalog.get(request.name, timeout)
        outcomes = await self._pool.broadcast("Stats", shard_pb2.ShardStatsRequest(collection=spec.name), timeout)
        shards = []
        for outcome in outcomes:
            info = search_pb2.ShardInfo()
            if outcome.ok:
                info.CopyFrom(outcome.response.info)
            else:
                info.error = str(outcome.error)
            info.shard = outcome.shard.name
            info.address = outcome.replica.address if outcome.replica is not None else outcome.shard.address
            shards.append(info)
        if all(o.error is not None and o.error.code == grpc.StatusCode.NOT_FOUND for o in outcomes):
            self._catalog.forget(spec.name)
            raise NotFound(f"collection {spec.name!r} does not exist")
        return search_pb2.DescribeCollectionResponse(
            collection=spec, shards=shards, total_vectors=sum(s.vectors for s in shards)
        )

    async def ids(self, request: search_pb2.ListIdsRequest, timeout: float) -> search_pb2.ListIdsResponse:
        spec = await self._catalog.get(request.collection, timeout)
        size = request.page_size or DEFAULT_PAGE_SIZE
        if size > self._limits.max_items:
            raise InvalidArgument(f"page_size: {size} exceeds {self._limits.max_items}")
        shards = self._router.list_shards()
        layout = self._router.version
        read_ring = self._router.layout.read_ring() if self._router.layout.moving else None
        cursor = PageCursor.decode(request.page_token, spec.name, layout)
        ids: list[str] = []
        while cursor.shard < len(shards) and len(ids) < size:
            outcome = await self._pool.call(shards[cursor.shard], "ListIds", shard_pb2.ShardListIdsRequest(
                collection=spec.name, after=cursor.after, resume=cursor.resume, limit=size - len(ids),
                topology_version=layout,
                select=topology.selection(read_ring, [shards[cursor.shard].name]) if read_ring else None,
            ), timeout)
            if outcome.error is not None:
                if outcome.error.code == grpc.StatusCode.ABORTED:
                    await self._router.refresh()
                    raise InvalidArgument("page_token: the cluster's shards changed since the listing began; "
                                          "start the listing again") from None
                raise outcome.error
            page = outcome.response
            ids.extend(page.ids)
            cursor = cursor.next(page.next_after, page.more)
        token = cursor.encode(spec.name, layout) if cursor.shard < len(shards) else ""
        return search_pb2.ListIdsResponse(ids=ids, next_page_token=token)


@dataclass(frozen=True)
class PageCursor:
    """Where a ListIds listing stands: shard index, and within it the hash order position (see ShardListIdsRequest).
    Its token names the collection and the ring layout's version, so a token is refused once either no longer
    matches (shards were added or removed meanwhile)."""

    shard: int = 0
    after: int = 0
    resume: bool = False

    def next(self, last: int, more: bool) -> "PageCursor":
        return PageCursor(self.shard, last, True) if more else PageCursor(self.shard + 1)

    def encode(self, collection: str, layout: int) -> str:
        raw = json.dumps([PAGE_TOKEN_VERSION, collection, layout, self.shard, self.after, self.resume])
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, collection: str, layout: int) -> "PageCursor":
        if not token:
            return cls()
        try:
            raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)), parse_constant=_no_constant)
            version, name, count, shard, after, resume = raw
            numbers = (version, count, shard, after)
            valid = all(type(n) is int for n in numbers) and type(resume) is bool and isinstance(name, str)
            cursor = cls(shard, after, resume)
            valid = valid and version == PAGE_TOKEN_VERSION and 0 <= shard and 0 <= after < 2**64
        except (ValueError, TypeError, binascii.Error, RecursionError):
            valid = False
        if not valid:
            raise InvalidArgument("page_token: not a token from ListIds; pass next_page_token as it was returned")
        if name != collection:
            raise InvalidArgument(f"page_token: it lists collection {name!r}, not {collection!r}")
        if count != layout:
            raise InvalidArgument(
                f"page_token: the cluster's shards changed since the listing began (ring layout {count}, now "
                f"{layout}); start the listing again"
            )
        return cursor


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a page token holds")

