"""The API gateway (port 8000): the one entry point for clients.

Paths in the route table go through the proxy; everything else (/health, /readiness,
/metrics, /docs) is the gateway's own operational surface. Every path is first brought to
its canonical form (proxy.normalise_path): an ambiguous one is refused with 400 before any
routing, and the route is matched on the same string the proxy forwards.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from prognetwork.gateway.proxy import Proxy, normalise_path
from prognetwork.kit import tracing
from prognetwork.kit.app import ObservabilityMiddleware, Runtime, create_service_app
from prognetwork.kit.problems import Problem, problem_response
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
        # Refusals get the same request id, metrics and access log as proxied requests.
        self.refused = tracing.asgi(
            ObservabilityMiddleware(_refuse_path, service=SERVICE, max_body_bytes=settings.max_body_bytes)
        )
        self.state = ops.state  # the server's graceful shutdown reaches the runtime through here

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            try:
                path = normalise_path(scope.get("raw_path") or scope["path"].encode())
            except Problem as problem:
                scope["prog.path_problem"] = problem
                await self.refused(scope, receive, send)
                return
            route = self.proxy.match(path)
            if route is not None:
                scope["route"] = route
                scope["prog.path"] = path  # what the proxy forwards: the very string matched
                await self.proxied(scope, receive, send)
                return
        await self.ops(scope, receive, send)


async def _refuse_path(scope: dict, receive: Any, send: Any) -> None:
    problem: Problem = scope["prog.path_problem"]
    raw = scope.get("raw_path") or scope["path"].encode()
    await problem_response(
        problem.status, problem.detail, kind=problem.kind, instance=raw.decode("latin-1")
    )(scope, receive, send)


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
