"""OpenTelemetry tracing for the coordinator and the shards, configured by the standard OTEL_* variables.

Off (no interceptor, no cost) unless `OTEL_TRACES_EXPORTER` names an exporter (`console`, `otlp`; a comma list) or
an `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. `OTEL_SERVICE_NAME` overrides the
service name (`shardsearch-coordinator`, `shardsearch-shard`); the OTLP exporter reads its own OTEL_EXPORTER_OTLP_*
settings (it needs `opentelemetry-exporter-otlp`; without it a warning is logged and that exporter is left out).

With tracing on, every gRPC call a server answers gets a server span (the W3C `traceparent` a caller sends makes it
a child of the caller's span) and every call the coordinator makes to a shard gets a client span whose context is
sent on, so one search is one trace: the coordinator's Search span, a child span per shard call, and each shard's
own span for it. Health checks are not traced. The coordinator searches its shards with unary calls while tracing
is on (a search over the long-lived SearchStream would be one span for the stream's whole life).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import grpc

logger = logging.getLogger(__name__)

UNTRACED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                     "grpc.reflection.v1.ServerReflection")


@dataclass(frozen=True)
class Tracing:
    server_interceptor: grpc.aio.ServerInterceptor
    client_interceptors: list[grpc.aio.ClientInterceptor]
    provider: Any

    def shutdown(self) -> None:
        self.provider.shutdown()  # flushes what the batch processors hold


def exporters() -> list[str]:
    named = os.environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not named and (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        named = "otlp"
    return [name.strip() for name in named.split(",") if name.strip() and name.strip() != "none"]


def setup(service: str) -> Tracing | None:
    """The tracing interceptors for a server named `service`, or None when tracing is off."""
    names = exporters()
    if not names:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError as exc:
        logger.warning("OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed (%s): tracing off; install "
                       "'shardsearch[tracing]'", exc)
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}))
    for name in names:
        if name == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            except ImportError:
                logger.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp; that exporter is off")
                continue
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            logger.warning("OTEL_TRACES_EXPORTER: unknown exporter %r (console, otlp, none); ignored", name)
    trace.set_tracer_provider(provider)
    traced = filters.negate(filters.any_of(*(filters.service_name(s) for s in UNTRACED_SERVICES)))
    logger.info("tracing on: %s spans as service %s", ", ".join(names), os.environ.get("OTEL_SERVICE_NAME", service))
    return Tracing(aio_server_interceptor(provider, filter_=traced), aio_client_interceptors(provider), provider)
