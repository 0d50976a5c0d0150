"""The app factory every service is built with.

It gives each service the same operational surface: `/health` (liveness, no dependency
calls), `/readiness` (dependencies reachable, schema migrated, not shutting down),
`/metrics`, `/docs`, request ids, JSON access logs, problem+json errors and a bounded request
body. A served process answers OPS_PATHS on its ops port only, and only them there
(kit/server.py); an app called directly (tests) answers every path.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from prognetwork.kit import db, migrations, problems, tracing
from prognetwork.kit import logging as kit_logging
from prognetwork.kit.cache import create_redis
from prognetwork.kit.metrics import ERRORS, REQUEST_DURATION, REQUESTS, UNMATCHED_ROUTE, watch_pools
from prognetwork.kit.settings import SERVICE_DEPENDENCIES, Settings

access_log = structlog.get_logger("prognetwork.access")
QUIET_PATHS = frozenset({"/health", "/readiness", "/metrics"})
OPS_PATHS = QUIET_PATHS | {"/docs", "/docs/oauth2-redirect", "/openapi.json"}
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
CHECK_TIMEOUT = 2.0


@dataclass
class Runtime:
    """What a running service holds: its settings and its connections."""

    service: str
    settings: Settings
    engine: AsyncEngine | None = None
    sessions: async_sessionmaker[AsyncSession] | None = None
    readers: async_sessionmaker[AsyncSession] | None = None
    redis: Redis | None = None
    draining: bool = False
    expected_revision: str | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        if self.engine is not None:
            await self.engine.dispose()


Background = Callable[[Runtime], Awaitable[None]]


def create_service_app(
    service: str,
    settings: Settings,
    routers: Iterable[APIRouter],
    *,
    startup: Iterable[Background] = (),
    background: Iterable[Background] = (),
    checks: dict[str, Callable[[], Awaitable[str]]] | None = None,
    title: str | None = None,
) -> FastAPI:
    """`startup` hooks run once connections exist; `background` jobs run until `runtime.stop`;
    `checks` are extra readiness checks ("ok" or what is wrong)."""
    needs = SERVICE_DEPENDENCIES.get(service, frozenset())
    runtime = Runtime(service=service, settings=settings)
    startup, background = list(startup), list(background)
    extra_checks = dict(checks or {})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if "postgres" in needs:
            runtime.engine = db.create_engine(settings.database_dsn, settings.db_pool_size)
            runtime.sessions = db.sessionmaker(runtime.engine)
            runtime.readers = db.reader_sessionmaker(runtime.engine)
            runtime.expected_revision = migrations.head_revision()
            tracing.instrument_engine(runtime.engine)
        if "redis" in needs:
            runtime.redis = create_redis(settings.redis_dsn)
        watch_pools(service, runtime.engine, runtime.redis)
        runtime.stop.clear()
        for hook in startup:
            await hook(runtime)
        tasks = [asyncio.create_task(job(runtime), name=getattr(job, "__name__", "job")) for job in background]
        try:
            yield
        finally:
            runtime.stop.set()
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=settings.shutdown_timeout_seconds)
                for task in pending:
                    task.cancel()
            await runtime.close()

    app = FastAPI(title=title or f"ProgNetwork {service}", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.runtime = runtime
    problems.install(app)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/readiness", include_in_schema=False)
    async def readiness() -> Response:
        checks = await check_dependencies(runtime, needs, extra_checks)
        if runtime.draining:
            checks["lifecycle"] = "shutting down"
        failing = {name: state for name, state in checks.items() if state != "ok"}
        if failing:
            detail = "Not ready: " + "; ".join(f"{n}: {s}" for n, s in failing.items())
            return problems.problem_response(503, detail, kind="not-ready", checks=checks)
        return JSONResponse({"status": "ready", "service": service, "checks": checks})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    app.add_middleware(ObservabilityMiddleware, service=service, max_body_bytes=settings.max_body_bytes)
    if tracing.enabled():
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, excluded_urls="/health,/readiness,/metrics", exclude_spans=["receive", "send"]
        )
    return app


async def check_dependencies(
    runtime: Runtime, needs: frozenset[str], extra: dict[str, Callable[[], Awaitable[str]]]
) -> dict[str, str]:
    async def postgres() -> str:
        assert runtime.engine is not None
        revision = await db.applied_revision(runtime.engine)
        if revision != runtime.expected_revision:
            return f"schema at {revision or 'nothing'}, expected {runtime.expected_revision} (run `prog migrate`)"
        return "ok"

    async def redis() -> str:
        assert runtime.redis is not None
        await runtime.redis.ping()
        return "ok"

    probes = {"postgres": postgres, "redis": redis, **extra}
    names = [n for n in ("postgres", "redis") if n in needs] + list(extra)

    async def run(name: str) -> str:
        try:
            with tracing.untraced():
                return await asyncio.wait_for(probes[name](), CHECK_TIMEOUT)
        except TimeoutError:
            return "unreachable (timed out)"
        except Exception as exc:  # any failure means "not ready"; say which
            return f"unreachable ({type(exc).__name__})"

    results = await asyncio.gather(*(run(n) for n in names))
    return dict(zip(names, results, strict=True))


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


async def db_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessions = request.app.state.runtime.sessions
    async with sessions() as session:
        yield session


async def db_reader(request: Request) -> AsyncIterator[AsyncSession]:
    """A read-only session (autocommit: no transaction round trips)."""
    async with request.app.state.runtime.readers() as session:
        yield session


class ObservabilityMiddleware:
    """Request id, metrics, access log and body limit in one pure ASGI layer (no per-request tasks)."""

    def __init__(self, app: Any, service: str, max_body_bytes: int) -> None:
        self.app = app
        self.service = service
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        scope["prog.request_id"] = request_id  # for layers that forward it (the gateway)
        status = 500
        answered = False  # set once this layer answered itself (body too large)
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if answered:
                return  # the app's late answer to a request this layer already refused
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        received = 0

        async def limited_receive() -> dict:
            # Streamed bodies have no Content-Length to check up front: count as they arrive,
            # answer 413 ourselves and tell the app the client is gone.
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes and not answered:
                    await _too_large(self.max_body_bytes)(scope, receive, send_with_id)
                    answered = True
                    return {"type": "http.disconnect"}
            return message

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                await _too_large(self.max_body_bytes)(scope, receive, send_with_id)
                return
            await self.app(scope, limited_receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            labels = (self.service, scope["method"], getattr(route, "path", UNMATCHED_ROUTE), str(status))
            REQUEST_DURATION.labels(*labels).observe(elapsed)
            REQUESTS.labels(*labels).inc()
            quiet = scope["path"] in QUIET_PATHS
            # A probe's 503 (draining, dependency down) is a verdict, not a failed user request:
            # counting it would make every rollout look like an error spike.
            if status >= 500 and not quiet:
                ERRORS.labels(*labels).inc()
            if not quiet:
                access_log.info(
                    "request", method=scope["method"], path=scope["path"], status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.unbind_contextvars("request_id")


async def on_disconnect(receive: Callable, callback: Callable[[], object]) -> None:
    """Call `callback` when the client goes away (for long responses that only write)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    callback()


def _request_id(scope: dict) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def _content_length(scope: dict) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int) -> Response:
    return problems.problem_response(413, f"The request body exceeds {limit} bytes.", kind="body-too-large")


def configure_logging(service: str, settings: Settings) -> None:
    kit_logging.configure(service, settings.log_level, settings.log_format)
