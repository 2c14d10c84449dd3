"""Builds and runs the coordinator: SearchService (plus health and reflection) and its Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from shardsearch import grpcserver, metrics, security, topology, tracing
from shardsearch.batching import BatchMetrics
from shardsearch.clock import HybridClock
from shardsearch.coordinator import cache
from shardsearch.coordinator.admin import AdminServicer
from shardsearch.coordinator.admission import AdaptiveLimit, AdmissionMetrics
from shardsearch.coordinator.catalog import Catalog
from shardsearch.coordinator.config import CoordinatorConfig
from shardsearch.coordinator.resharding import MoveMetrics, Resharder
from shardsearch.coordinator.router import Router
from shardsearch.coordinator.search import Searcher, SearchMetrics
from shardsearch.coordinator.servicer import SearchServicer
from shardsearch.coordinator.shards import Replication, ShardMetrics, ShardPool
from shardsearch.encoder_client import EncoderOptions, Encoders, InputLimits
from shardsearch.encoder_client import cache as embedding_cache
from shardsearch.metrics import RpcMetrics
from shardsearch.v1 import admin_pb2, admin_pb2_grpc, search_pb2, search_pb2_grpc, shard_pb2

logger = logging.getLogger(__name__)

SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name
ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


@dataclass
class RunningCoordinator:
    server: grpcserver.Server
    pool: ShardPool
    searcher: Searcher
    executor: ThreadPoolExecutor
    metrics_port: int
    background: asyncio.Task[None]
    encoders: Encoders
    router: Router
    resharder: Resharder
    poller: asyncio.Task[None]
    traced: tracing.Tracing | None = None

    async def stop(self, grace: float = 5.0) -> None:
        self.background.cancel()
        self.poller.cancel()
        await self.resharder.close()
        await self.server.stop(grace)
        await self.encoders.close()
        await self.searcher.close()
        await self.pool.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.traced is not None:
            self.traced.shutdown()


async def start(config: CoordinatorConfig, registry: CollectorRegistry | None = None) -> RunningCoordinator:
    registry = registry or CollectorRegistry()
    metrics.register_process_metrics(registry, "coordinator")
    addresses = config.shard_addresses()
    port_security = security.ServerSecurity.from_config(config, registry)  # read every file before starting
    shard_channels = security.client_factory_of(config, "shard_")
    logger.info("calls to the shards: %s", shard_channels.description)
    if config.refine_share:
        logger.warning("refine_share is deprecated and has no effect: each shard fits its re-ranking depth to the "
                       "number of shards a search reaches (an explicit index refine_factor is used as it is)")
    traced = tracing.setup("shardsearch-coordinator")
    if traced is not None:
        shard_channels = shard_channels.with_interceptors(traced.client_interceptors)
    clock = HybridClock()
    replication = Replication(write_quorum=config.write_quorum, hedge_delay_s=config.hedge_delay_ms / 1000)
    pool = ShardPool(
        addresses, ShardMetrics(registry), channel_factory=shard_channels, replication=replication, clock=clock.now,
        search_streams=config.search_streams and traced is None,  # a search over a stream is no span of its own
    )
    router = Router(pool, topology.bootstrap(addresses, config.vnodes), config.topology_poll_s)
    await router.refresh()  # a layout stored on the shards wins over the flags
    if router.layout.version:
        stored = [s.name for s in router.layout.topology.shards]
        if stored != pool_names(addresses):
            logger.warning("the shards' stored ring layout %d (%s) differs from the flags (%s); using the stored one "
                           "(change the ring with `shardsearch admin`)", router.layout.version, ", ".join(stored),
                           ", ".join(pool_names(addresses)))
    elif not await router.store_initial():
        logger.warning("ring layout from the flags, not stored yet (not every shard replica answered); retrying")
    catalog = Catalog(pool)
    executor = ThreadPoolExecutor(2, thread_name_prefix="coordinator")
    result_cache = cache.build(
        config.cache, cache.CacheMetrics(registry), config.redis_url, config.cache_ttl_s, config.cache_timeout_s,
        config.cache_retry_s, config.cache_max_bytes,
    )
    searcher = Searcher(
        pool, router, catalog, executor, SearchMetrics(registry), config.batching_config(),
        BatchMetrics(registry, "shardsearch_coordinator"), BatchMetrics(registry, "shardsearch_coordinator_cache_lookup"),
        result_cache,
    )
    if result_cache is not None:
        async def invalidate_again(collections: set[str]) -> None:
            for collection in sorted(collections):
                await result_cache.invalidate(collection)

        pool.on_resynced = invalidate_again
    encoders = await start_encoders(config, registry)
    servicer = SearchServicer(
        pool, router, catalog, searcher, executor, RpcMetrics(registry, "shardsearch_coordinator"),
        default_timeout=config.default_timeout_s, deadline_margin=config.deadline_margin_s, clock=clock.now,
        admission=AdaptiveLimit(
            config.search_latency_target_ms / 1000, config.max_concurrent_rpcs, AdmissionMetrics(registry)
        ),
        encoders=encoders,
    )
    resharder = Resharder(pool, router, catalog, MoveMetrics(registry),
                          unverified_token=bool(config.shard_token_file) and not config.shard_tls_ca_file)
    admin = AdminServicer(pool, catalog, resharder, servicer.metrics)
    server = await grpcserver.start_server(
        f"{config.host}:{config.port}",
        [lambda s: search_pb2_grpc.add_SearchServiceServicer_to_server(servicer, s),
         lambda s: admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, s)],
        [SERVICE_NAME, ADMIN_SERVICE_NAME],
        reuse_port=config.reuse_port,
        credentials=port_security.credentials,
        interceptors=(*([traced.server_interceptor] if traced else []), *port_security.interceptors),
        max_concurrent_rpcs=config.max_concurrent_rpcs, max_pending_rpcs=config.max_pending_rpcs,
    )
    metrics_port = grpcserver.serve_metrics_safely(registry, config.host, config.metrics_port)
    vectors = Gauge(
        "shardsearch_collection_vectors", "Live vectors per collection, summed over shards.", ["collection"],
        registry=registry,
    )
    background = asyncio.create_task(_refresh_counts(pool, catalog, vectors, config.stats_interval_s))
    logger.info(
        "coordinator serving gRPC on %s:%d (metrics %d) over %d shards: %s; result cache: %s; batching: %s",
        config.host, server.port, metrics_port, len(addresses),
        ", ".join(f"{n}={'|'.join(a)}" for n, a in addresses),
        cache.describe(result_cache), config.batching_config() if config.batching else "off",
    )
    if any(len(a) > 1 for _, a in addresses):
        logger.info("replicas: write quorum %s, hedge delay %s", config.write_quorum or "all",
                    f"{config.hedge_delay_ms} ms" if config.hedge_delay_ms > 0 else "off")
    if config.port_file:
        grpcserver.write_port_file(config.port_file, json.dumps({"grpc": server.port, "metrics": metrics_port}))
    poller = asyncio.create_task(router.poll())
    return RunningCoordinator(
        server, pool, searcher, executor, metrics_port, background, encoders, router, resharder, poller, traced
    )


async def start_encoders(config: CoordinatorConfig, registry: CollectorRegistry) -> Encoders:
    """The text and image encoders (Triton) if configured; waits up to encoder_wait_s for their models."""
    if not (config.text_model or config.image_model):
        if config.encoder_url:
            logger.warning("encoder_url is set but neither text_model nor image_model: no encoder")
        return Encoders({}, None, None)
    cache = embedding_cache.build(
        config.embedding_cache, embedding_cache.EmbeddingCacheMetrics(registry), config.redis_url,
        config.embedding_cache_ttl_s, config.embedding_cache_max_bytes, config.cache_timeout_s, config.cache_retry_s,
    )
    options = EncoderOptions(
        timeout_s=config.encoder_timeout_s, retries=config.encoder_retries,
        batch_max_size=config.encoder_batch_max_size,
        batch_max_queue_delay_us=config.encoder_batch_max_queue_delay_us,
        batch_max_in_flight=config.encoder_batch_max_in_flight, image_preprocess=config.image_preprocess,
        image_mean=parse_floats(config.image_mean, "image_mean"), image_std=parse_floats(config.image_std, "image_std"),
        limits=InputLimits(config.max_text_bytes, config.max_image_bytes, config.min_image_side,
                           config.max_image_pixels),
    )
    executor = ThreadPoolExecutor(2, thread_name_prefix="encoder")  # image decoding and resizing
    encoders = await Encoders.start(
        config.encoder_url, {"text": config.text_model, "image": config.image_model}, options, registry, cache,
        executor, config.encoder_wait_s, required=config.encoder_required,
    )
    logger.info("embedding cache: %s", cache.kind if cache else "off")
    return encoders


def pool_names(addresses: list[tuple[str, list[str]]]) -> list[str]:
    return [name for name, _ in addresses]


def parse_floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated numbers, got {text!r}") from None


async def _refresh_counts(pool: ShardPool, catalog: Catalog, gauge: Gauge, interval: float) -> None:
    """Keeps `shardsearch_collection_vectors` current; shard outages just leave the last value."""
    while True:
        with contextlib.suppress(Exception):
            for spec in await catalog.refresh(timeout=5.0):
                outcomes = await pool.broadcast("Stats", shard_pb2.ShardStatsRequest(collection=spec.name), 5.0)
                if all(o.ok for o in outcomes):
                    gauge.labels(spec.name).set(sum(o.response.info.vectors for o in outcomes))
        await asyncio.sleep(interval)


async def serve(config: CoordinatorConfig) -> None:
    running = await start(config)
    await grpcserver.wait_for_signal()
    logger.info("coordinator stopping")
    await running.stop()
