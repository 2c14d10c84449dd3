"""The shard pool: one long-lived channel per shard, and concurrent fan-out with a deadline that never hangs."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from shardsearch import grpcserver
from shardsearch.errors import ShardSearchError, from_rpc_error
from shardsearch.metrics import LATENCY_BUCKETS
from shardsearch.v1 import shard_pb2_grpc

logger = logging.getLogger(__name__)


@dataclass
class Shard:
    name: str
    address: str
    channel: grpc.aio.Channel
    stub: shard_pb2_grpc.ShardServiceStub


@dataclass(frozen=True)
class Outcome:
    """One shard's answer to a fan-out: a response or an error."""

    shard: Shard
    response: Any = None
    error: ShardSearchError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class ShardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "shardsearch_coordinator_shard_request_duration_seconds", "Shard RPC latency seen by the coordinator.",
            ["shard", "method"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.errors = Counter(
            "shardsearch_coordinator_shard_errors", "Failed shard RPCs, by shard and gRPC status code.",
            ["shard", "code"], registry=registry,
        )


class ShardPool:
    def __init__(
        self, addresses: Sequence[tuple[str, str]], metrics: ShardMetrics,
        channel_factory: Callable[[str], grpc.aio.Channel] | None = None,
    ) -> None:
        connect = channel_factory or _insecure_channel
        self.shards = [
            Shard(name, address, channel := connect(address), shard_pb2_grpc.ShardServiceStub(channel))
            for name, address in addresses
        ]
        self.by_name = {shard.name: shard for shard in self.shards}
        self._metrics = metrics

    @property
    def names(self) -> list[str]:
        return [shard.name for shard in self.shards]

    async def call(self, shard: Shard, method: str, request: Any, timeout: float) -> Outcome:
        """Calls one shard; every failure (including the deadline) comes back as an Outcome, never raised."""
        start = time.perf_counter()
        try:
            response = await getattr(shard.stub, method)(request, timeout=max(timeout, 0.001))
            return Outcome(shard, response=response)
        except grpc.aio.AioRpcError as exc:
            self._metrics.errors.labels(shard.name, exc.code().name).inc()
            return Outcome(shard, error=from_rpc_error(exc, f"shard {shard.name} ({shard.address})"))
        finally:
            self._metrics.latency.labels(shard.name, method).observe(time.perf_counter() - start)

    async def fan_out(
        self, method: str, requests: Sequence[tuple[Shard, Any]], timeout: float
    ) -> list[Outcome]:
        """Sends each (shard, request) concurrently; returns outcomes in the same order."""
        return list(await asyncio.gather(*(self.call(s, method, r, timeout) for s, r in requests)))

    async def broadcast(self, method: str, request: Any, timeout: float) -> list[Outcome]:
        return await self.fan_out(method, [(shard, request) for shard in self.shards], timeout)

    async def close(self) -> None:
        await asyncio.gather(*(shard.channel.close() for shard in self.shards))



def _insecure_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=grpcserver.channel_options())
