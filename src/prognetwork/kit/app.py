"""The app factory every service is built with.

It gives each service the same operational surface: `/health` (liveness, no dependency
calls; "degraded" with the dependencies' latest states), `/readiness` (what gates traffic —
kit.dependencies states the rule — reachable, schema migrated, not shutting down),
`/metrics`, `/docs`, request ids, JSON access logs, problem+json errors and a bounded request
body. A served process answers OPS_PATHS on its ops port only, and only them there
(kit/server.py); an app called directly (tests) answers every path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prognetwork.kit import credentials, db, dependencies, events, migrations, problems, tracing
from prognetwork.kit import logging as kit_logging
from prognetwork.kit.cache import TextRedis, create_redis
from prognetwork.kit.dependencies import Check, run_checks
from prognetwork.kit.metrics import ERRORS, REQUEST_DURATION, REQUESTS, UNMATCHED_ROUTE, watch_pools
from prognetwork.kit.service import ServiceSpec
from prognetwork.kit.settings import Settings

ACCESS_LOGGER = "prognetwork.access"
access_log = structlog.get_logger(ACCESS_LOGGER)
QUIET_PATHS = frozenset({"/health", "/readiness", "/metrics"})
OPS_PATHS = QUIET_PATHS | {"/docs", "/docs/oauth2-redirect", "/openapi.json"}
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass
class Lifecycle:
    """Where a process is in its life: the server sets `draining` on SIGTERM, the lifespan sets
    `stop` when background jobs must end."""

    draining: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class Connections:
    """What the kit opened for a service, from its spec's `needs`: typed, never None once declared."""

    def __init__(self, service: str, database: db.Database | None, redis: TextRedis | None) -> None:
        self.service = service
        self._database = database
        self._redis = redis

    @property
    def database(self) -> db.Database:
        if self._database is None:
            raise RuntimeError(f"{self.service} does not declare postgres in its ServiceSpec.needs")
        return self._database

    @property
    def redis(self) -> TextRedis:
        if self._redis is None:
            raise RuntimeError(f"{self.service} does not declare redis in its ServiceSpec.needs")
        return self._redis

    def checks(self) -> dict[str, Check]:
        """Every declared dependency's check; kit.dependencies.GATING says which gate readiness."""
        found: dict[str, Check] = {}
        if self._database is not None:
            found["postgres"] = self._database.schema_problem
        if self._redis is not None:
            redis = self._redis

            async def redis_answers() -> str | None:
                await redis.ping()
                return None

            found["redis"] = redis_answers
        return found


S = TypeVar("S", bound=Settings)
R = TypeVar("R")
# Builds a service's typed runtime from its settings and connections; whatever it opens, it
# closes when the context exits (the lifespan's end), never in a background job.
RuntimeFactory = Callable[[S, Connections], AbstractAsyncContextManager[R]]
# A background job (an async function: each run is a task): runs until `lifecycle.stop` is set.
Job = Callable[[R, Lifecycle], Coroutine[Any, Any, None]]


def create_service_app(
    spec: ServiceSpec,
    settings: S,
    routers: Iterable[APIRouter],
    *,
    runtime: RuntimeFactory[S, R],
    background: Iterable[Job[R]] = (),
    checks: Callable[[R], dict[str, Check]] | None = None,
) -> FastAPI:
    """A service's ASGI app: its routers, its runtime (on `app.state.runtime`) and jobs for the
    length of the lifespan, and the operational surface every service shares."""
    lifecycle = Lifecycle()
    jobs = list(background)
    probes: dict[str, Check] = {}  # what gates readiness (kit.dependencies says which)
    watched: dict[str, str] = {}  # every dependency's latest state, kept by dependencies.watch

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            database = redis = None
            if "postgres" in spec.needs:
                # With a secret store, credentials are read per connection and re-read when
                # refused (kit/credentials.py): a rotated password needs no restart.
                database = await stack.enter_async_context(
                    db.open_database(
                        settings.database_dsn,
                        settings.db_pool_size,
                        migrations.head_revision(),
                        credentials.postgres_connector(settings),
                    )
                )
                tracing.instrument_engine(database.engine)
            if "redis" in spec.needs:
                redis_url, redis_auth = credentials.redis_auth(settings)
                redis = create_redis(redis_url, spec.name, redis_auth)
                stack.push_async_callback(redis.aclose)
            watch_pools(spec.name, database.engine if database else None, redis)
            connections = Connections(spec.name, database, redis)
            app.state.connections = connections
            built = await stack.enter_async_context(runtime(settings, connections))
            app.state.runtime = built
            declared = connections.checks()
            probes.clear()
            probes.update({name: check for name, check in declared.items() if name in dependencies.GATING})
            probes.update(checks(built) if checks else {})
            lifecycle.stop.clear()
            tasks = [
                asyncio.create_task(job(built, lifecycle), name=getattr(job, "__name__", "job"))
                for job in jobs
            ]
            tasks.append(
                asyncio.create_task(
                    dependencies.watch(spec.name, declared, watched, lifecycle.stop), name="dependencies"
                )
            )
            if database is not None:  # every process that may append sequences the event log
                sequencer = events.Sequencer(credentials.listener_dsn(settings), database.engine)
                tasks.append(asyncio.create_task(sequencer.run(lifecycle.stop), name="event-sequencer"))
            try:
                yield
            finally:
                lifecycle.stop.set()
                if tasks:
                    _, pending = await asyncio.wait(tasks, timeout=settings.shutdown_timeout_seconds)
                    for task in pending:
                        task.cancel()

    app = FastAPI(title=f"ProgNetwork {spec.name}", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.lifecycle = lifecycle
    problems.install(app)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, Any]:
        # Liveness: always 200 while the process serves. The dependencies' states are the
        # background watcher's latest (no call made here), "degraded" when one is failing.
        degraded = any(state != "ok" for state in watched.values())
        return {
            "status": "degraded" if degraded else "ok",
            "service": spec.name,
            "dependencies": dict(watched),
        }

    @app.get("/readiness", include_in_schema=False)
    async def readiness() -> Response:
        states = await run_checks(probes)
        if lifecycle.draining:
            states["lifecycle"] = "shutting down"
        failing = {name: state for name, state in states.items() if state != "ok"}
        if failing:
            detail = "Not ready: " + "; ".join(f"{n}: {s}" for n, s in failing.items())
            return problems.problem_response(
                503, detail, kind="not-ready", checks=states, dependencies=dict(watched)
            )
        return JSONResponse(
            {"status": "ready", "service": spec.name, "checks": states, "dependencies": dict(watched)}
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    app.add_middleware(ObservabilityMiddleware, service=spec.name, max_body_bytes=settings.max_body_bytes)
    if tracing.enabled():
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, excluded_urls="/health,/readiness,/metrics", exclude_spans=["receive", "send"]
        )
    return app


async def write_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A request's write session: the service layer commits in `session.begin()` blocks; whatever
    it left uncommitted (an exception) is rolled back when the request ends."""
    async with request.app.state.connections.database.sessions() as session:
        yield session


async def read_session(request: Request) -> AsyncIterator[db.ReadSession]:
    """A request's read-only session (autocommit: no transaction round trips)."""
    async with request.app.state.connections.database.readers() as session:
        yield session


async def database(request: Request) -> db.Database:
    """The process's database, for hot reads straight through the driver (`Database.fetch_one`):
    nothing is opened per request until a read checks a connection out."""
    return request.app.state.connections.database


WriteSession = Annotated[AsyncSession, Depends(write_session)]
ReadOnlySession = Annotated[db.ReadSession, Depends(read_session)]
Reads = Annotated[db.Database, Depends(database)]


class ObservabilityMiddleware:
    """Request id, metrics, access log and body limit in one pure ASGI layer (no per-request tasks).

    It runs on every request of every service, so what can be done once is: the metric
    children of each (method, route, status) are looked up once and kept (their number is
    bounded as the series' is: methods the parser knows, routes of the table, statuses), and
    the access line is built only when its logger would write it.
    """

    def __init__(self, app: ASGIApp, service: str, max_body_bytes: int) -> None:
        self.app = app
        self.service = service
        self.max_body_bytes = max_body_bytes
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if answered:
                return  # the app's late answer to a request this layer already refused
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        received = 0

        async def limited_receive() -> Message:
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
            declared, chunked = _body_framing(scope)
            if declared is not None and declared > self.max_body_bytes:
                await _too_large(self.max_body_bytes)(scope, receive, send_with_id)
                return
            # A body framed by a Content-Length within the limit cannot outgrow it (the server
            # reads no further), and one without framing is empty: only a chunked body is counted.
            await self.app(scope, limited_receive if chunked else receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            method = scope["method"]
            key = (method, getattr(scope.get("route"), "path", UNMATCHED_ROUTE), status)
            children = self._children.get(key)
            if children is None:
                labels = (self.service, *key[:2], str(status))
                children = self._children[key] = (REQUEST_DURATION.labels(*labels), REQUESTS.labels(*labels))
            children[0].observe(elapsed)
            children[1].inc()
            quiet = scope["path"] in QUIET_PATHS
            # A probe's 503 (draining, dependency down) is a verdict, not a failed user request:
            # counting it would make every rollout look like an error spike.
            if status >= 500 and not quiet:
                ERRORS.labels(self.service, *key[:2], str(status)).inc()
            if not quiet and kit_logging.enabled(ACCESS_LOGGER, logging.INFO):
                access_log.info(
                    "request",
                    method=method,
                    path=scope["path"],
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.unbind_contextvars("request_id")


async def on_disconnect(receive: Receive, callback: Callable[[], object]) -> None:
    """Call `callback` when the client goes away (for long responses that only write)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    callback()


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if REQUEST_ID.match(candidate):
                return candidate
            break
    return new_request_id()


class _RequestIds:
    """Random request ids, 32 hex digits as a uuid4's, drawn from the OS 256 at a time rather
    than with one system call per request. No lock: services run one event loop, and a rare
    race between threads (tests) could at worst hand out one id twice, never fail."""

    def __init__(self) -> None:
        self._digits = ""
        self._at = 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._digits):
            self._digits = os.urandom(16 * 256).hex()
            at = 0
        self._at = at + 32
        return self._digits[at : at + 32]


new_request_id = _RequestIds()  # also the gateway's source of trace and span ids


def _body_framing(scope: Scope) -> tuple[int | None, bool]:
    """The request's declared Content-Length (None: none or unreadable) and whether it has a
    Transfer-Encoding (a body whose size is known only as it arrives)."""
    length = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                chunked = True  # not a length the server framed the body by: count as it comes
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked


def _too_large(limit: int) -> Response:
    return problems.problem_response(413, f"The request body exceeds {limit} bytes.", kind="body-too-large")


def configure_logging(service: str, settings: Settings) -> None:
    kit_logging.configure(service, settings.log_level, settings.log_format)
