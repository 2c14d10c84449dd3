"""Builds and runs a shard server: gRPC (ShardService, health, reflection) plus Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from shard_server import device
from shard_server.config import ShardConfig
from shard_server.maintenance import Maintenance
from shard_server.replication import Replication, ReplicationMetrics
from shard_server.servicer import ShardMetrics, ShardServicer
from shard_server.storage import Storage
from shard_server.writes import Writer
from shardsearch import grpcserver, metrics, security
from shardsearch.batching import BatchMetrics
from shardsearch.v1 import shard_pb2, shard_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = shard_pb2.DESCRIPTOR.services_by_name["ShardService"].full_name


def set_faiss_threads(n: int) -> None:
    """Sets FAISS's OpenMP thread count for the calling thread (each thread has its own pool)."""
    if n > 0:
        import faiss

        faiss.omp_set_num_threads(n)


@dataclass
class RunningShard:
    server: grpcserver.Server
    servicer: ShardServicer
    executor: ThreadPoolExecutor
    maintenance: Maintenance
    metrics_port: int
    replication: Replication | None = None

    async def stop(self, grace: float = 5.0) -> None:
        if self.replication is not None:
            await self.replication.close()
        await self.server.stop(grace)
        await self.servicer.close()
        self.maintenance.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)


async def start(config: ShardConfig, registry: CollectorRegistry | None = None) -> RunningShard:
    config = config.with_topology()  # in a StatefulSet: name and peers from --peer-pattern and the pod ordinal
    registry = registry or CollectorRegistry()
    metrics.register_process_metrics(registry, "shard")
    init = lambda: set_faiss_threads(config.omp_threads)  # noqa: E731
    init()
    executor = ThreadPoolExecutor(config.search_threads, thread_name_prefix="faiss", initializer=init)
    maintenance = Maintenance(thread_init=init)
    use_gpu = config.use_gpu and device.gpu_available()
    storage = Storage(Path(config.data_dir)) if config.data_dir else None
    writer = Writer(executor, storage, config.snapshot_wal_bytes, registry)
    servicer = ShardServicer(
        executor, maintenance, ShardMetrics(registry), use_gpu=use_gpu, batching=config.batching_config(),
        batch_metrics=BatchMetrics(registry, "shardsearch_shard"), writer=writer, name=config.name,
        topology_path=storage.root / "topology.pb" if storage is not None else None,
        inline_search=config.inline_search,
    )
    if storage is None:
        logger.warning("shard %s has no --data-dir: its data lives in memory only and is lost on restart", config.name)
    else:
        await asyncio.get_running_loop().run_in_executor(executor, servicer.recover, bool(config.peers))
    servicer.catching_up = bool(config.peers)  # no read is served before the first catch-up
    port_security = security.ServerSecurity.from_config(config, registry)
    server = await grpcserver.start_server(
        f"{config.host}:{config.port}",
        [lambda s: shard_pb2_grpc.add_ShardServiceServicer_to_server(servicer, s)],
        [SERVICE_NAME],
        credentials=port_security.credentials,
        interceptors=port_security.interceptors,
        max_concurrent_rpcs=config.max_concurrent_rpcs, max_pending_rpcs=config.max_pending_rpcs,
        serving=not config.peers,  # a replica is ready once it has caught up
    )
    metrics_port = grpcserver.serve_metrics_safely(registry, config.host, config.metrics_port)
    logger.info(
        "shard %s serving gRPC on %s:%d (metrics %d, omp_threads=%s); %s",
        config.name, config.host, server.port, metrics_port, config.omp_threads or "default", device.build(use_gpu),
    )
    replication = None
    if config.peers:
        peer_channels = security.client_factory_of(config, "peer_")
        logger.info("calls to the peers (%s): %s", ", ".join(config.peers), peer_channels.description)
        replication = Replication(
            servicer, config.peers, peer_channels, config.catch_up_wait_s, ReplicationMetrics(registry),
            server.set_serving,
        )
        replication.request("start-up")
    if config.port_file:
        grpcserver.write_port_file(config.port_file, json.dumps({"grpc": server.port, "metrics": metrics_port}))
    return RunningShard(server, servicer, executor, maintenance, metrics_port, replication)



async def serve(config: ShardConfig) -> None:
    running = await start(config)
    await grpcserver.wait_for_signal()
    logger.info("shard %s stopping", config.name)
    await running.stop()
