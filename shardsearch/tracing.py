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

Inside a server, the dynamic batchers add their stages (`batch_spans`, `record`): a request that waited gets a
"<batcher> queue" span; the batch that answered it is a "<batcher> batch" span (attributes `batch.requests`,
`batch.rows`) whose children are the batch's own work, its shard calls at the coordinator and its "faiss" span at a
shard. One batch answers several requests, so it lives in the trace of the first of them and links to the others'
spans, and each of the others gets a "<batcher> batch" span of its own over the same time, linking back to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

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
    global _tracer
    _tracer = provider.get_tracer("shardsearch")
    traced = filters.negate(filters.any_of(*(filters.service_name(s) for s in UNTRACED_SERVICES)))
    logger.info("tracing on: %s spans as service %s", ", ".join(names), os.environ.get("OTEL_SERVICE_NAME", service))
    return Tracing(aio_server_interceptor(provider, filter_=traced), aio_client_interceptors(provider), provider)


# ---- stages inside a server ------------------------------------------------------------------------------------

_tracer: Any = None
"""The stage tracer, set by `setup`; None while tracing is off (every helper below is then a no-op)."""


def now_ns() -> int:
    """A span timestamp (epoch nanoseconds, what OpenTelemetry records)."""
    return time.time_ns()


def current() -> Any:
    """The calling request's span (to parent or link its batch to), or None while tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    return trace.get_current_span()


def record(name: str, start_ns: int, end_ns: int, parent: Any = None, links: Sequence[Any] = (),
           **attributes: Any) -> Any:
    """A span over [start_ns, end_ns] that has already happened, a child of `parent` (a span; default: the current
    one), linking to `links` (spans); returns it (None while tracing is off)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.set_span_in_context(parent) if parent is not None else None
    span = _tracer.start_span(name, context=context, links=_links(links), start_time=start_ns,
                              attributes=attributes)
    span.end(end_time=end_ns)
    return span


_OFF = contextlib.nullcontext()


def batch_span(name: str, requests: Sequence[Any], **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """The span of one batch, current while its work runs: a child of the first request's span (`requests`: their
    spans, from `current()`), linking to the rest. A shared no-op context while tracing is off."""
    if _tracer is None:
        return _OFF
    return _batch_span(name, requests, attributes)


@contextlib.contextmanager
def _batch_span(name: str, requests: Sequence[Any], attributes: dict[str, Any]) -> Iterator[Any]:
    from opentelemetry import trace

    first = next((r for r in requests if r is not None), None)
    context = trace.set_span_in_context(first) if first is not None else None
    others = [r for r in requests if r is not None and r is not first]
    with _tracer.start_as_current_span(name, context=context, links=_links(others), attributes=attributes) as span:
        yield span


def detach() -> None:
    """Makes the calling task belong to no trace (a long-lived task started inside some request's context)."""
    if _tracer is None:
        return
    from opentelemetry import context

    context.attach(context.Context())


def _links(spans: Sequence[Any]) -> list[Any]:
    from opentelemetry import trace

    return [trace.Link(span.get_span_context()) for span in spans if span is not None]
