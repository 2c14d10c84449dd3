"""AdminService: the ring layout and its moves (coordinator/resharding.py) and retraining (coordinator/retraining.py)."""

from __future__ import annotations

from typing import Any

from coordinator import retraining
from coordinator.catalog import Catalog
from coordinator.resharding import Resharder
from coordinator.shards import ShardPool
from shardsearch.errors import rpc
from shardsearch.metrics import RpcMetrics
from shardsearch.v1 import admin_pb2_grpc

ADMIN_TIMEOUT_S = 30.0  # for an admin call whose caller set no deadline


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, pool: ShardPool, catalog: Catalog, resharder: Resharder, metrics: RpcMetrics) -> None:
        self._pool = pool
        self._catalog = catalog
        self._resharder = resharder
        self.metrics = metrics

    @staticmethod
    def _timeout(context: Any) -> float:
        remaining = context.time_remaining()
        return ADMIN_TIMEOUT_S if remaining is None else max(0.001, remaining)

    @rpc("GetTopology")
    async def GetTopology(self, request: Any, context: Any) -> Any:
        return self._resharder.describe()

    @rpc("AddShard")
    async def AddShard(self, request: Any, context: Any) -> Any:
        return await self._resharder.add_shard(request.shard, self._timeout(context))

    @rpc("RemoveShard")
    async def RemoveShard(self, request: Any, context: Any) -> Any:
        return await self._resharder.remove_shard(request.name, self._timeout(context))

    @rpc("ResumeMove")
    async def ResumeMove(self, request: Any, context: Any) -> Any:
        return await self._resharder.resume(self._timeout(context))

    @rpc("Retrain")
    async def Retrain(self, request: Any, context: Any) -> Any:
        return await retraining.retrain(self._pool, self._catalog, request, self._timeout(context))

    @rpc("GetRetrainStatus")
    async def GetRetrainStatus(self, request: Any, context: Any) -> Any:
        return await retraining.status(self._pool, self._catalog, request, self._timeout(context))
