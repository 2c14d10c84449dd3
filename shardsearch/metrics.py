"""Prometheus metrics shared by both servers: per-RPC counters and latency, and the /metrics HTTP endpoint."""

from __future__ import annotations

import platform

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from shardsearch import __version__

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RpcMetrics:
    """`<prefix>_requests_total{method,code}`, `<prefix>_request_duration_seconds{method}`, `<prefix>_inflight_requests`."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.registry = registry
        self.requests = Counter(
            f"{prefix}_requests", "RPCs handled, by method and gRPC status code.", ["method", "code"], registry=registry
        )
        self.latency = Histogram(
            f"{prefix}_request_duration_seconds", "RPC handling time.", ["method"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.inflight = Gauge(f"{prefix}_inflight_requests", "RPCs being handled right now.", registry=registry)

    def observe_request(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.requests.labels(method, code.name).inc()
        self.latency.labels(method).observe(seconds)


def register_process_metrics(registry: CollectorRegistry, component: str) -> None:
    """What the default registry has and a bare `CollectorRegistry()` leaves out (`process_resident_memory_bytes`,
    `process_cpu_seconds_total`, `python_gc_*`, `python_info`), plus `shardsearch_build_info{version,component}`."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Info("shardsearch_build", "The running shardsearch build.", registry=registry).info(
        {"version": __version__, "component": component, "python": platform.python_version()}
    )


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> int:
    """Serves /metrics on host:port (0 = a free port) in a daemon thread; returns the bound port, -1 if off."""
    if port < 0:
        return -1
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
