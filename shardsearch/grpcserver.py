"""What every shardsearch server shares: a grpc.aio server with health checking, reflection and sane limits."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from shardsearch.metrics import serve_metrics

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
PENDING_HARD_LIMIT_FACTOR = 3


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Options for long-lived client channels (large batched messages, keepalive to detect dead peers)."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


@dataclass
class Server:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    services: tuple[str, ...]

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.services):
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)


async def start_server(
    address: str,
    register: Iterable[Callable[[grpc.aio.Server], None]],
    services: Iterable[str],
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    reuse_port: bool = False,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    serving: bool = True,
    max_concurrent_rpcs: int | None = None,
    max_pending_rpcs: int = 0,
) -> Server:
    """Binds `address` (port 0 picks a free port), registers the services, health and reflection, and starts.

    `reuse_port` lets several processes serve one port (SO_REUSEPORT; the kernel spreads connections over them).
    Off by default, so that port 0 means a port nobody else holds (tests run many servers side by side).
    With `credentials` the port speaks TLS only (see shardsearch.security); `interceptors` see every call.
    `max_pending_rpcs` bounds the calls waiting for the event loop (0: gRPC's own limits).
    """
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ]
    if max_pending_rpcs > 0:
        # Calls gRPC core holds until the event loop picks them up: past the soft limit it refuses new ones with a
        # growing probability (all of them at the hard limit), cheaply, before any Python runs. This bounds the
        # wait a call can have before its handler starts, which no handler-level limit can see.
        options += [
            ("grpc.server.max_pending_requests", max_pending_rpcs),
            ("grpc.server.max_pending_requests_hard_limit", PENDING_HARD_LIMIT_FACTOR * max_pending_rpcs),
        ]
    # Past max_concurrent_rpcs gRPC itself answers RESOURCE_EXHAUSTED: a backstop behind the batch queues' limits.
    server = grpc.aio.server(
        options=options, interceptors=list(interceptors) or None, maximum_concurrent_rpcs=max_concurrent_rpcs or None
    )
    for add in register:
        add(server)
    names = tuple(services)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    bound = Server(server, port, health_servicer, names)
    await bound.set_serving(serving)  # False: the caller says when (e.g. once a replica has caught up)
    return bound


def write_port_file(path: str, content: str) -> None:
    """Publishes the bound ports atomically (a launcher polls for the file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(content)
    os.replace(tmp, path)


def serve_metrics_safely(registry: CollectorRegistry, host: str, port: int) -> int:
    """Starts /metrics; a port clash is logged and metrics stay off rather than the server failing."""
    try:
        return serve_metrics(registry, host, port)
    except OSError as exc:
        logger.error("metrics endpoint on %s:%d could not start: %s", host, port, exc)
        return -1


async def wait_for_signal() -> None:
    """Returns on SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

