"""The event streaming service's ASGI app: the SSE stream, polling and publishing, over one
tailer of the event log per process. Reached through the gateway; verifies tokens itself too."""

from __future__ import annotations

from fastapi import FastAPI

from prognetwork.kit.app import Check, Lifecycle, create_service_app
from prognetwork.kit.retry import wait_for
from prognetwork.streaming import SPEC, api
from prognetwork.streaming.runtime import Runtime, open_runtime
from prognetwork.streaming.settings import StreamingSettings

DRAIN_CHECK_SECONDS = 0.1


async def keep_keys_fresh(runtime: Runtime, lifecycle: Lifecycle) -> None:
    await runtime.jwks.keep_fresh(runtime.http, runtime.settings.jwks_refresh_seconds, lifecycle.stop)


async def tail_event_log(runtime: Runtime, lifecycle: Lifecycle) -> None:
    await runtime.hub.run(lifecycle.stop)


async def heartbeat(runtime: Runtime, lifecycle: Lifecycle) -> None:
    await runtime.hub.beat(lifecycle.stop)


async def end_streams_on_shutdown(runtime: Runtime, lifecycle: Lifecycle) -> None:
    # Streams never finish by themselves, and the server waits for open responses before it
    # stops. So once the drain delay after SIGTERM has passed (readiness has been 503 all
    # along), end every stream: clients reconnect to another replica with Last-Event-ID.
    while not lifecycle.draining and not lifecycle.stop.is_set():
        await wait_for(lifecycle.stop, DRAIN_CHECK_SECONDS)
    if not lifecycle.stop.is_set():
        await wait_for(lifecycle.stop, runtime.settings.drain_seconds)
    runtime.hub.close_all()


def readiness(runtime: Runtime) -> dict[str, Check]:
    async def keys_loaded() -> str | None:
        return None if runtime.jwks.loaded else "the token issuer's keys are not loaded yet"

    async def tailing() -> str | None:
        return None if runtime.hub.ready.is_set() else "not tailing the event log yet"

    return {"jwks": keys_loaded, "event_log": tailing}


async def follow_revocations(runtime: Runtime, lifecycle: Lifecycle) -> None:
    # Signed-out sessions answered from a followed copy (kit.revocation): no Redis round trip per
    # request, so neither a slow nor a hung Redis reaches the request path.
    await runtime.revocations.follow(lifecycle.stop)


def create_app(settings: StreamingSettings | None = None) -> FastAPI:
    settings = settings or StreamingSettings()
    return create_service_app(
        SPEC,
        settings,
        [api.router],
        runtime=open_runtime,
        checks=readiness,
        background=[keep_keys_fresh, follow_revocations, tail_event_log, heartbeat, end_streams_on_shutdown],
    )
