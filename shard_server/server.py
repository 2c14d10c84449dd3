"""Builds and runs a shard server: gRPC (ShardService, health, reflection) plus Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from shardsearch import grpcserver, metrics, security, tracing
from shardsearch.batching import BatchMetrics
from shardsearch.shard_server import device
from shardsearch.shard_server.antientropy import AntiEntropy, AntiEntropyMetrics, StallWatch
from shardsearch.shard_server.config import ShardConfig
from shardsearch.shard_server.core import ShardCore
from shardsearch.shard_server.index import Collection
from shardsearch.shard_server.maintenance import Maintenance
from shardsearch.shard_server.metrics import ShardMetrics
from shardsearch.shard_server.queries import ShardQueries
from shardsearch.shard_server.replication import Replication, ReplicationMetrics
from shardsearch.shard_server.servicer import ShardServicer
from shardsearch.shard_server.storage import Storage
from shardsearch.shard_server.writes import Writer
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
    heartbeat: asyncio.Task[None] | None = None
    anti_entropy: AntiEntropy | None = None
    stall_watch: StallWatch | None = None
    traced: tracing.Tracing | None = None

    async def stop(self, grace: float = 5.0) -> None:
        if self.heartbeat is not None:
            self.heartbeat.cancel()
        if self.stall_watch is not None:
            await self.stall_watch.close()
        if self.anti_entropy is not None:
            await self.anti_entropy.close()
        if self.replication is not None:
            await self.replication.close()
        await self.server.stop(grace)
        await self.servicer.close()
        self.maintenance.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.traced is not None:
            self.traced.shutdown()


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
    core = ShardCore(
        executor, maintenance, ShardMetrics(registry), use_gpu=use_gpu, writer=writer, name=config.name,
        topology_path=storage.root / "topology.pb" if storage is not None else None,
        max_delete_markers=config.max_delete_markers,
    )
    queries = ShardQueries(core, config.batching_config(), BatchMetrics(registry, "shardsearch_shard"),
                           inline_search=config.inline_search)
    servicer = ShardServicer(core, queries)
    if storage is None:
        logger.warning("shard %s has no --data-dir: its data lives in memory only and is lost on restart", config.name)
    else:
        loop = asyncio.get_running_loop()
        stale = await loop.run_in_executor(executor, stale_reason, storage, config)  # walks and fsyncs the data dir
        await loop.run_in_executor(executor, core.recover, bool(config.peers), stale)
    core.catching_up = bool(config.peers)  # no read is served before the first catch-up
    port_security = security.ServerSecurity.from_config(config, registry)
    traced = tracing.setup("shardsearch-shard")
    server = await grpcserver.start_server(
        f"{config.host}:{config.port}",
        [lambda s: shard_pb2_grpc.add_ShardServiceServicer_to_server(servicer, s)],
        [SERVICE_NAME],
        credentials=port_security.credentials,
        interceptors=(*([traced.server_interceptor] if traced else []), *port_security.interceptors),
        max_concurrent_rpcs=config.max_concurrent_rpcs, max_pending_rpcs=config.max_pending_rpcs,
        serving=not config.peers,  # a replica is ready once it has caught up
    )
    metrics_port = grpcserver.serve_metrics_safely(registry, config.host, config.metrics_port)
    logger.info(
        "shard %s serving gRPC on %s:%d (metrics %d, omp_threads=%s); %s",
        config.name, config.host, server.port, metrics_port, config.omp_threads or "default", device.build(use_gpu),
    )
    replication = None
    anti_entropy = stall_watch = None
    if config.peers:
        peer_channels = security.client_factory_of(config, "peer_")
        logger.info("calls to the peers (%s): %s", ", ".join(config.peers), peer_channels.description)
        replication = Replication(
            core, config.peers, peer_channels, config.catch_up_wait_s, ReplicationMetrics(registry),
            server.set_serving,
        )
        replication.request("start-up")
        anti_entropy = AntiEntropy(core, config.peers, peer_channels, config.anti_entropy_s,
                                   AntiEntropyMetrics(registry))
        anti_entropy.start()
        stall_watch = StallWatch(config.stall_repair_s, anti_entropy.stalled)
        core.on_read = stall_watch.check
        stall_watch.start()
    if config.port_file:
        grpcserver.write_port_file(config.port_file, json.dumps({"grpc": server.port, "metrics": metrics_port}))
    heartbeat = asyncio.create_task(_heartbeat(storage, executor, config)) if storage is not None else None
    return RunningShard(server, servicer, executor, maintenance, metrics_port, replication, heartbeat, anti_entropy,
                        stall_watch, traced)


def stale_reason(storage: Storage, config: ShardConfig) -> str:
    """Why this data directory must not rejoin as it is ("" if it may): the shard was down longer than the delete
    markers are kept, so an item deleted meanwhile may have no marker left on any peer to keep it deleted here."""
    Collection.marker_retention_ns = int(config.delete_retention_s * 1e9)
    last = storage.last_alive()
    storage.mark_alive()
    if last is None or time.time() - last <= config.delete_retention_s:
        return ""
    reason = (f"this replica was last up {time.time() - last:.0f}s ago, longer than the delete-marker retention "
              f"({config.delete_retention_s:.0f}s, --delete-retention-s): items deleted meanwhile could come back")
    if not config.peers:
        logger.warning("%s; it has no peers, so it serves its own data (there is no newer copy to take)", reason)
        return ""
    return reason


async def _heartbeat(storage: Storage, executor: ThreadPoolExecutor, config: ShardConfig) -> None:
    """Keeps `alive` in the data directory current (see stale_reason)."""
    period = min(60.0, config.delete_retention_s / 10)
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(period)
        try:
            await loop.run_in_executor(executor, storage.mark_alive)
        except OSError as exc:
            logger.warning("could not record the heartbeat in %s: %s", storage.alive_path, exc.strerror or exc)



async def serve(config: ShardConfig) -> None:
    running = await start(config)
    await grpcserver.wait_for_signal()
    logger.info("shard %s stopping", config.name)
    await running.stop()
