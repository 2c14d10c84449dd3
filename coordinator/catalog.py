"""Collection definitions as the coordinator knows them. The shards are the source of truth; this is a cache.

A miss asks the shards. A shard answering NOT_FOUND for a cached collection (dropped through another coordinator)
evicts it, so every coordinator converges without coordination.
"""

from __future__ import annotations

from shardsearch.coordinator.shards import ShardPool
from shardsearch.errors import NotFound, Unavailable
from shardsearch.v1 import search_pb2, shard_pb2


class Catalog:
    def __init__(self, pool: ShardPool) -> None:
        self._pool = pool
        self._specs: dict[str, search_pb2.Collection] = {}

    async def get(self, name: str, timeout: float) -> search_pb2.Collection:
        spec = self._specs.get(name)
        if spec is None:
            await self.refresh(timeout)
            spec = self._specs.get(name)
        if spec is None:
            raise NotFound(f"collection {name!r} does not exist")
        return spec

    async def refresh(self, timeout: float) -> list[search_pb2.Collection]:
        """Reloads the union of every reachable shard's collections."""
        outcomes = await self._pool.broadcast("ListCollections", shard_pb2.ShardListCollectionsRequest(), timeout)
        answered = [o for o in outcomes if o.ok]
        if not answered:
            raise Unavailable(f"no shard reachable to list collections: {outcomes[0].error}")
        specs: dict[str, search_pb2.Collection] = {}
        for outcome in answered:
            for spec in outcome.response.collections:
                specs.setdefault(spec.name, spec)
        self._specs = specs
        return sorted(specs.values(), key=lambda s: s.name)

    def put(self, spec: search_pb2.Collection) -> None:
        self._specs[spec.name] = spec

    def forget(self, name: str) -> None:
        self._specs.pop(name, None)
