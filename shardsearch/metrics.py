"""Prometheus metrics shared by both servers: per-RPC counters and latency, and the /metrics HTTP endpoint."""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> int:
    """Serves /metrics on host:port (0 = a free port) in a daemon thread; returns the bound port, -1 if off."""
    if port < 0:
        return -1
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
