"""OpenTelemetry tracing, configured by the standard OTEL_* variables.

Tracing is on when an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and `OTEL_SDK_DISABLED` is not true; otherwise nothing
is installed and the hot paths pay nothing. Spans come from the maintained instrumentations
(ASGI/FastAPI, SQLAlchemy, Redis, aiohttp client); the event log carries the W3C context of
the transaction that appended each event, so a consumer's work joins the same trace.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, propagate, trace
from structlog.typing import EventDict, WrappedLogger

_enabled = False
tracer = trace.get_tracer("prognetwork")


def enabled() -> bool:
    return _enabled


def wanted() -> bool:
    env = os.environ
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return bool(endpoint) and env.get("OTEL_SDK_DISABLED", "").lower() != "true"


def configure(service: str) -> bool:
    """Install the SDK and the client instrumentations for this process, if tracing is wanted."""
    global _enabled
    if _enabled or not wanted():
        return _enabled
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {
        "service.name": os.environ.get("OTEL_SERVICE_NAME", service),
        "service.namespace": "prognetwork",
    }
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    RedisInstrumentor().instrument()
    AioHttpClientInstrumentor().instrument()
    _enabled = True
    return True


def shutdown() -> None:
    """Flush spans still in the batch queue (called on graceful shutdown)."""
    if _enabled:
        provider = trace.get_tracer_provider()
        if hasattr(provider, "shutdown"):
            provider.shutdown()


def instrument_engine(engine: Any) -> None:
    if _enabled:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        # skip_dep_check: the instrumentation declares SQLAlchemy < 2.1, but the engine events it
        # hooks are unchanged in 2.1 (the trace test proves the spans arrive).
        SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine, skip_dep_check=True)


def asgi(app: Any) -> Any:
    """Server spans around an ASGI app (incoming `traceparent` continues the caller's trace)."""
    if not _enabled:
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(app, exclude_spans=["receive", "send"])


@contextmanager
def untraced() -> Iterator[None]:
    """No spans for what runs inside (readiness probes every few seconds are not worth a trace)."""
    if not _enabled:
        yield
        return
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


@contextmanager
def statement_span(statement: str) -> Iterator[None]:
    """A client span around a statement run on the driver directly (kit.db.Database.fetch_one),
    attributed as the SQLAlchemy instrumentation attributes the others; nothing when not tracing."""
    if not _enabled:
        yield
        return
    operation = statement.split(None, 1)[0].upper()
    attributes = {"db.system.name": "postgresql", "db.operation.name": operation, "db.query.text": statement}
    with tracer.start_as_current_span(operation, kind=trace.SpanKind.CLIENT, attributes=attributes):
        yield


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, to store with an event; None when not tracing."""
    if not _enabled:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def continued(name: str, traceparent: str | None, **attributes: Any) -> Iterator[None]:
    """A span that continues the trace stored with an event (a no-op when not tracing)."""
    if not _enabled:
        yield
        return
    parent = propagate.extract({"traceparent": traceparent}) if traceparent else context.get_current()
    with tracer.start_as_current_span(
        name, context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
    ):
        yield


def log_ids(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """structlog processor: trace_id and span_id of the current span, when there is one."""
    if _enabled:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            event["trace_id"] = format(span_context.trace_id, "032x")
            event["span_id"] = format(span_context.span_id, "016x")
    return event
