"""The API gateway (port 8000): the one entry point for clients.

Paths in the route table go through the proxy; everything else (/health, /readiness,
/metrics, /docs) is the gateway's own operational surface. Every path is first brought to
its canonical form (proxy.normalise_path): an ambiguous one is refused with 400 before any
routing, and the route is matched on the same string the proxy forwards.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from prognetwork.gateway import SPEC
from prognetwork.gateway.proxy import CompiledRoute, compile_routes, match, normalise_path
from prognetwork.gateway.runtime import Runtime, open_runtime
from prognetwork.gateway.settings import GatewaySettings
from prognetwork.kit import tracing
from prognetwork.kit.app import Check, Lifecycle, ObservabilityMiddleware, create_service_app
from prognetwork.kit.problems import Problem, problem_response


class Gateway:
    """ASGI entry: route-table paths to the proxy, the rest to the operational app."""

    def __init__(self, ops: FastAPI, routes: list[CompiledRoute], settings: GatewaySettings) -> None:
        self.ops = ops
        self.routes = routes
        self.proxied = tracing.asgi(
            ObservabilityMiddleware(self._proxy, service=SPEC.name, max_body_bytes=settings.max_body_bytes)
        )
        # Refusals get the same request id, metrics and access log as proxied requests.
        self.refused = tracing.asgi(
            ObservabilityMiddleware(_refuse_path, service=SPEC.name, max_body_bytes=settings.max_body_bytes)
        )
        self.state = ops.state  # the server's graceful shutdown reaches the lifecycle through here

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                path = normalise_path(scope.get("raw_path") or scope["path"].encode())
            except Problem as problem:
                scope["prog.path_problem"] = problem
                await self.refused(scope, receive, send)
                return
            route = match(self.routes, path)
            if route is not None:
                scope["route"] = route
                scope["prog.path"] = path  # what the proxy forwards: the very string matched
                await self.proxied(scope, receive, send)
                return
        await self.ops(scope, receive, send)

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = self.state.runtime  # built by the lifespan, before any request
        await runtime.proxy(scope, receive, send)


async def _refuse_path(scope: Scope, receive: Receive, send: Send) -> None:
    problem: Problem = scope["prog.path_problem"]
    raw = scope.get("raw_path") or scope["path"].encode()
    await problem_response(
        problem.status, problem.detail, kind=problem.kind, title=problem.title, instance=raw.decode("latin-1")
    )(scope, receive, send)


async def keep_keys_fresh(runtime: Runtime, lifecycle: Lifecycle) -> None:
    await runtime.proxy.jwks.keep_fresh(
        runtime.proxy.session, runtime.settings.jwks_refresh_seconds, lifecycle.stop
    )


async def follow_revocations(runtime: Runtime, lifecycle: Lifecycle) -> None:
    # Signed-out sessions from memory instead of a Redis round trip per request (kit.revocation).
    await runtime.proxy.revocations.follow(lifecycle.stop)


def readiness(runtime: Runtime) -> dict[str, Check]:
    async def keys_loaded() -> str | None:
        return None if runtime.proxy.jwks.loaded else "the token issuer's keys are not loaded yet"

    return {"jwks": keys_loaded}


def create_app(settings: GatewaySettings | None = None) -> Gateway:
    settings = settings or GatewaySettings()
    routes = compile_routes(settings)  # at start: a bad route table stops the gateway here
    ops = create_service_app(
        SPEC,
        settings,
        [],
        runtime=open_runtime,
        background=[keep_keys_fresh, follow_revocations],
        checks=readiness,
    )
    return Gateway(ops, routes, settings)
