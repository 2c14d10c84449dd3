"""AdminService: the ring layout and its moves (coordinator/resharding.py) and retraining (coordinator/retraining.py)."""

from __future__ import annotations

import grpc

from shardsearch.coordinator import retraining
from shardsearch.coordinator.catalog import Catalog
from shardsearch.coordinator.resharding import Resharder
from shardsearch.coordinator.shards import ShardPool
from shardsearch.errors import rpc
from shardsearch.metrics import RpcMetrics
from shardsearch.v1 import admin_pb2, admin_pb2_grpc

Context = grpc.aio.ServicerContext
ADMIN_TIMEOUT_S = 30.0  # for an admin call whose caller set no deadline


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, pool: ShardPool, catalog: Catalog, resharder: Resharder, metrics: RpcMetrics) -> None:
        self._pool = pool
        self._catalog = catalog
        self._resharder = resharder
        self.metrics = metrics

    @staticmethod
    def _timeout(context: Context) -> float:
        remaining = context.time_remaining()
        return ADMIN_TIMEOUT_S if remaining is None else max(0.001, remaining)

    @rpc("GetTopology")
    async def GetTopology(self, request: admin_pb2.GetTopologyRequest, context: Context) -> admin_pb2.Topology:
        return self._resharder.describe()

    @rpc("AddShard")
    async def AddShard(self, request: admin_pb2.AddShardRequest, context: Context) -> admin_pb2.Topology:
        return await self._resharder.add_shard(request.shard, self._timeout(context))

    @rpc("RemoveShard")
    async def RemoveShard(self, request: admin_pb2.RemoveShardRequest, context: Context) -> admin_pb2.Topology:
        return await self._resharder.remove_shard(request.name, self._timeout(context))

    @rpc("ResumeMove")
    async def ResumeMove(self, request: admin_pb2.ResumeMoveRequest, context: Context) -> admin_pb2.Topology:
        return await self._resharder.resume(self._timeout(context))

    @rpc("Retrain")
    async def Retrain(self, request: admin_pb2.RetrainRequest, context: Context) -> admin_pb2.RetrainResponse:
        return await retraining.retrain(self._pool, self._catalog, request, self._timeout(context))

    @rpc("GetRetrainStatus")
    async def GetRetrainStatus(
        self, request: admin_pb2.GetRetrainStatusRequest, context: Context
    ) -> admin_pb2.RetrainResponse:
        return await retraining.status(self._pool, self._catalog, request, self._timeout(context))
