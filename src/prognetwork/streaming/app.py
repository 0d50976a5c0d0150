"""The event streaming service (port 8001): the event log over HTTP.

`GET /v1/events/stream` (SSE with Last-Event-ID replay), `GET /v1/events` (polling) and
`POST /v1/events` (publishing). Reached through the gateway; verifies tokens itself too.
"""

from __future__ import annotations

import aiohttp
from fastapi import FastAPI

from prognetwork.kit.app import Runtime, create_service_app
from prognetwork.kit.events import wait_for
from prognetwork.kit.jwks import Jwks
from prognetwork.kit.revocation import Revocations
from prognetwork.kit.settings import Settings
from prognetwork.streaming import api
from prognetwork.streaming.hub import Hub

SERVICE = "streaming"
DRAIN_CHECK_SECONDS = 0.1


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    hub = Hub(
        settings.database_dsn, queue_limit=settings.stream_queue_limit, poll_seconds=settings.stream_poll_seconds,
        heartbeat_seconds=settings.stream_heartbeat_seconds,
    )
    jwks = Jwks(
        settings.upstreams["users"].rstrip("/") + "/.well-known/jwks.json", settings.jwt_issuer, settings.jwt_audience
    )

    async def open_http(runtime: Runtime) -> None:
        assert runtime.redis is not None
        app.state.http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        app.state.revocations = Revocations(runtime.redis)

    async def keep_keys_fresh(runtime: Runtime) -> None:
        try:
            await jwks.keep_fresh(app.state.http, settings.jwks_refresh_seconds, runtime.stop)
        finally:
            await app.state.http.close()

    async def tail_event_log(runtime: Runtime) -> None:
        await hub.run(runtime.stop)

    async def heartbeat(runtime: Runtime) -> None:
        await hub.beat(runtime.stop)

    async def end_streams_on_shutdown(runtime: Runtime) -> None:
        # Streams never finish by themselves, and the server waits for open responses before
        # it stops. So once the drain delay after SIGTERM has passed (readiness has been 503
        # all along), end every stream: clients reconnect to another replica with Last-Event-ID.
        while not runtime.draining and not runtime.stop.is_set():
            await wait_for(runtime.stop, DRAIN_CHECK_SECONDS)
        if not runtime.stop.is_set():
            await wait_for(runtime.stop, settings.drain_seconds)
        hub.close_all()

    async def keys_loaded() -> str:
        return "ok" if jwks.loaded else "the user service's keys are not loaded yet"

    async def tailing() -> str:
        return "ok" if hub.ready.is_set() else "not tailing the event log yet"

    app = create_service_app(
        SERVICE, settings, [api.router], startup=[open_http],
        background=[keep_keys_fresh, tail_event_log, heartbeat, end_streams_on_shutdown],
        checks={"jwks": keys_loaded, "event_log": tailing},
    )
    app.state.hub = hub
    app.state.jwks = jwks
    return app
