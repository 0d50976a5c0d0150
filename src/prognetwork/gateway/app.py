"""The API gateway (port 8000): the one entry point for clients.

Paths in the route table go through the proxy; everything else (/health, /readiness,
/metrics, /docs) is the gateway's own operational surface.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from prognetwork.gateway.proxy import Proxy
from prognetwork.kit import tracing
from prognetwork.kit.app import ObservabilityMiddleware, Runtime, create_service_app
from prognetwork.kit.settings import Settings

SERVICE = "gateway"


class Gateway:
    """ASGI entry: route-table paths to the proxy, the rest to the operational app."""

    def __init__(self, ops: FastAPI, proxy: Proxy, settings: Settings) -> None:
        self.ops = ops
        self.proxy = proxy
        self.proxied = tracing.asgi(
            ObservabilityMiddleware(proxy, service=SERVICE, max_body_bytes=settings.max_body_bytes)
        )
        self.state = ops.state  # the server's graceful shutdown reaches the runtime through here

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            route = self.proxy.match(scope["path"])
            if route is not None:
                scope["route"] = route
                await self.proxied(scope, receive, send)
                return
        await self.ops(scope, receive, send)


def create_app(settings: Settings | None = None) -> Gateway:
    settings = settings or Settings()
    proxy = Proxy(settings)

    async def open_upstreams(runtime: Runtime) -> None:
        assert runtime.redis is not None
        await proxy.start(runtime.redis)

    async def keep_keys_fresh(runtime: Runtime) -> None:
        assert proxy.session is not None
        try:
            await proxy.jwks.keep_fresh(proxy.session, settings.jwks_refresh_seconds, runtime.stop)
        finally:
            await proxy.close()

    async def keys_loaded() -> str:
        return "ok" if proxy.jwks.loaded else "the user service's keys are not loaded yet"

    ops = create_service_app(
        SERVICE, settings, [], startup=[open_upstreams], background=[keep_keys_fresh], checks={"jwks": keys_loaded},
    )
    return Gateway(ops, proxy, settings)
