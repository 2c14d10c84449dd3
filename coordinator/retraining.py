"""Retraining through the coordinator: asks every shard (or the named ones) concurrently, and reports each one's state.

Each shard decides and runs its own retrains (shard_server/retrain.py); the coordinator only fans the request out. A
shard that cannot be reached gets an entry with `error` set rather than failing the call, so the other shards' states
still show.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shardsearch.coordinator.catalog import Catalog
from shardsearch.coordinator.shards import Outcome, Shard, ShardPool
from shardsearch.errors import InvalidArgument
from shardsearch.v1 import admin_pb2, shard_pb2


async def retrain(
    pool: ShardPool, catalog: Catalog, request: admin_pb2.RetrainRequest, timeout: float
) -> admin_pb2.RetrainResponse:
    """Starts a retrain where one is due (every named shard with `force`); returns each shard's state."""
    await catalog.get(request.collection, timeout)  # NOT_FOUND for an unknown collection
    shards = _pick(pool, list(request.shards))
    ask = shard_pb2.ShardRetrainRequest(collection=request.collection, force=request.force)
    return await _fan_out(pool, shards, "Retrain", ask, timeout)


async def status(
    pool: ShardPool, catalog: Catalog, request: admin_pb2.GetRetrainStatusRequest, timeout: float
) -> admin_pb2.RetrainResponse:
    await catalog.get(request.collection, timeout)
    ask = shard_pb2.ShardRetrainStatusRequest(collection=request.collection, measure=request.measure)
    return await _fan_out(pool, list(pool.shards), "RetrainStatus", ask, timeout)


def _pick(pool: ShardPool, names: list[str]) -> list[Shard]:
    """The named shards (every shard for none), from the pool as it is now (shards may join or leave)."""
    shards = list(pool.shards)
    if not names:
        return shards
    by_name = {shard.name: shard for shard in shards}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise InvalidArgument(f"shards: no shard named {', '.join(unknown)}; the shards are {', '.join(by_name)}")
    return [by_name[name] for name in dict.fromkeys(names)]


async def _fan_out(
    pool: ShardPool, shards: list[Shard], method: str, request: Any, timeout: float
) -> admin_pb2.RetrainResponse:
    outcomes = await asyncio.gather(*(pool.call(shard, method, request, timeout) for shard in shards))
    return admin_pb2.RetrainResponse(shards=[_entry(outcome) for outcome in outcomes])


def _entry(outcome: Outcome) -> admin_pb2.ShardRetrainStatus:
    if not outcome.ok:
        return admin_pb2.ShardRetrainStatus(shard=outcome.shard.name, error=str(outcome.error))
    return admin_pb2.ShardRetrainStatus(shard=outcome.shard.name, status=outcome.response.status)
