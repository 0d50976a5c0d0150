"""The gateway's hot path: match a route, authenticate, rate-limit, forward, relay.

A plain ASGI callable over one pooled aiohttp session. Everything that can be computed
once (routes, timeouts, header sets, security headers, metric children) is computed at
start-up; a request allocates little beyond the header lists it must build.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis
from yarl import URL

from prognetwork.gateway.ratelimit import Decision, RateLimiter
from prognetwork.kit import tokens, tracing
from prognetwork.kit.app import on_disconnect
from prognetwork.kit.jwks import Jwks
from prognetwork.kit.problems import Problem, problem_response
from prognetwork.kit.settings import Settings

log = structlog.get_logger("prognetwork.gateway")

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
     b"transfer-encoding", b"upgrade"}
)
# Rebuilt by the gateway, so whatever a client sent under these names is dropped.
REBUILT = frozenset(
    {b"host", b"content-length", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id"}
)
DROP_REQUEST = HOP_BY_HOP | REBUILT
DROP_RESPONSE = HOP_BY_HOP | {b"content-length", b"date", b"server", b"x-request-id"}
IDENTITY_PREFIX = b"x-prog-"  # identity headers only the gateway may set
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})

UPSTREAM_LATENCY = Histogram(
    "gateway_upstream_duration_seconds", "Time until an upstream's response headers arrive.", ("upstream",),
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
UPSTREAM_RESPONSES = Counter(
    "gateway_upstream_responses", "Upstream answers by status (502/504 when none came).", ("upstream", "status")
)
AUTH_FAILURES = Counter("gateway_auth_failures", "Requests refused for a missing or invalid token.", ("reason",))


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    path: str  # the route template used as the metrics label
    prefix: str
    prefix_slash: str
    upstream: str
    base_url: str
    public: bool
    limit: str
    stream: bool
    strip: int
    timeout: aiohttp.ClientTimeout
    first_byte_seconds: float  # streams have no read timeout, but their headers must come in time
    latency: Any  # the pre-bound histogram child

    def matches(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix_slash)


def compile_routes(settings: Settings) -> list[CompiledRoute]:
    upstreams = settings.upstreams
    compiled = []
    for route in settings.routes:
        prefix = route.prefix.rstrip("/") or "/"
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.upstream_connect_timeout_seconds,
            sock_read=None if route.stream else settings.upstream_timeout_seconds,
        )
        compiled.append(CompiledRoute(
            path=prefix if "." in prefix.rsplit("/", 1)[-1] else prefix + "/*",
            prefix=prefix, prefix_slash=prefix + "/", upstream=route.upstream,
            base_url=upstreams[route.upstream].rstrip("/"), public=route.public, limit=route.limit,
            stream=route.stream, strip=len(route.strip_prefix) if prefix.startswith(route.strip_prefix) else 0,
            timeout=timeout, first_byte_seconds=settings.upstream_timeout_seconds,
            latency=UPSTREAM_LATENCY.labels(route.upstream),
        ))
    return compiled


class Proxy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.routes = compile_routes(settings)
        self.jwks = Jwks(
            settings.upstreams["users"].rstrip("/") + "/.well-known/jwks.json",
            settings.jwt_issuer, settings.jwt_audience,
        )
        self.session: aiohttp.ClientSession | None = None
        self.limiter: RateLimiter | None = None

    def match(self, path: str) -> CompiledRoute | None:
        for route in self.routes:
            if route.matches(path):
                return route
        return None

    async def start(self, redis: Redis) -> None:
        connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=30, ttl_dns_cache=30, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )
        self.limiter = RateLimiter(redis, self.settings.gateway_rate_limits)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        route: CompiledRoute = scope["route"]
        try:
            await self._forward(route, scope, receive, send)
        except Problem as problem:
            await problem_response(
                problem.status, problem.detail, kind=problem.kind, instance=scope["path"],
                headers=problem.headers, **problem.extensions,
            )(scope, receive, send)

    async def _forward(self, route: CompiledRoute, scope: dict, receive: Any, send: Any) -> None:
        assert self.session is not None and self.limiter is not None
        method: str = scope["method"]
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        claims = None if route.public else await self._authenticate(headers)
        client = scope.get("client")
        client_ip = client[0] if client else "unknown"
        decision = await self.limiter.check(
            route.limit, f"u:{claims['sub']}" if claims else f"a:{client_ip}", method
        )
        if not decision.allowed:
            raise _refused(decision, route)

        body = await _read_body(receive)
        if body is None:
            return  # the client left before sending its request
        outgoing = _upstream_headers(headers, scope, client_ip, claims)
        query = scope["query_string"]
        raw_path = scope.get("raw_path") or scope["path"].encode()
        target = route.base_url + raw_path.decode("latin-1")[route.strip:]
        if query:
            target += "?" + query.decode("latin-1")

        started = time.perf_counter()
        try:
            pending = self.session.request(
                method, URL(target, encoded=True), headers=outgoing, data=body or None,
                timeout=route.timeout, allow_redirects=False,
            )
            upstream = await (asyncio.wait_for(pending, route.first_byte_seconds) if route.stream else pending)
        except TimeoutError:
            UPSTREAM_RESPONSES.labels(route.upstream, "504").inc()
            raise Problem(504, f"The {route.upstream} service did not answer in time.", kind="upstream-timeout") from None
        except (aiohttp.ClientError, OSError) as exc:
            UPSTREAM_RESPONSES.labels(route.upstream, "502").inc()
            log.warning("upstream unreachable", upstream=route.upstream, error=type(exc).__name__)
            raise Problem(502, f"The {route.upstream} service is unavailable.", kind="upstream-unavailable") from None
        route.latency.observe(time.perf_counter() - started)
        UPSTREAM_RESPONSES.labels(route.upstream, str(upstream.status)).inc()
        try:
            await _relay(upstream, route, decision, scope, receive, send)
        finally:
            upstream.release()

    async def _authenticate(self, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        value = next((v for k, v in headers if k == b"authorization"), None)
        if value is None or not value[:7].lower() == b"bearer ":
            AUTH_FAILURES.labels("missing").inc()
            raise Problem(
                401, "Send an access token: Authorization: Bearer <token>.", kind="unauthenticated",
                headers={"WWW-Authenticate": 'Bearer realm="prognetwork"'},
            )
        assert self.session is not None
        try:
            return await self.jwks.verify(value[7:].strip().decode("latin-1"), self.session)
        except tokens.InvalidToken as exc:
            AUTH_FAILURES.labels("invalid").inc()
            raise Problem(
                401, f"The access token is not valid: {exc}.", kind="invalid-token",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            ) from None


async def _read_body(receive: Any) -> bytes | None:
    # The body limit is enforced by the observability middleware around this app.
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    body = message.get("body", b"")
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
    return body


def _upstream_headers(
    headers: list[tuple[bytes, bytes]], scope: dict, client_ip: str, claims: dict[str, Any] | None
) -> list[tuple[str, str]]:
    outgoing: list[tuple[str, str]] = []
    host = traceparent = None
    for name, value in headers:
        if name in DROP_REQUEST or name.startswith(IDENTITY_PREFIX):
            if name == b"host":
                host = value.decode("latin-1")
            continue
        if name in TRACE_HEADERS:
            if tracing.enabled():
                continue  # the client instrumentation injects this request's own span context
            traceparent = value
        outgoing.append((name.decode("latin-1"), value.decode("latin-1")))
    # The client address as the server determined it (X-Forwarded-For is honoured only from
    # FORWARDED_ALLOW_IPS), never a chain a client could have written itself.
    outgoing.append(("X-Forwarded-For", client_ip))
    outgoing.append(("X-Forwarded-Proto", scope.get("scheme", "http")))
    if host:
        outgoing.append(("X-Forwarded-Host", host))
    outgoing.append(("X-Request-ID", scope.get("prog.request_id", "")))
    if traceparent is None and not tracing.enabled():
        # Start a W3C trace here, so every upstream log line can be joined to this request.
        outgoing.append(("traceparent", f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"))
    if claims is not None:
        outgoing.append(("X-Prog-User-Id", claims["sub"]))
        outgoing.append(("X-Prog-User-Role", str(claims.get("role", "user"))))
        outgoing.append(("X-Prog-Session-Id", str(claims.get("sid", ""))))
        if claims.get("tid"):
            outgoing.append(("X-Prog-Tenant-Id", str(claims["tid"])))
    return outgoing


def _rate_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    if decision.degraded:
        return []
    return [
        (b"ratelimit-limit", str(decision.limit).encode()),
        (b"ratelimit-remaining", str(decision.remaining).encode()),
        (b"ratelimit-reset", str(decision.reset_seconds).encode()),
    ]


def _refused(decision: Decision, route: CompiledRoute) -> Problem:
    if decision.degraded:
        return Problem(
            503, "Rate limiting is unavailable, so writes are paused; retry shortly.", kind="rate-limiter-unavailable",
            headers={"Retry-After": "1"},
        )
    return Problem(
        429, f"Too many requests; retry in {decision.reset_seconds} seconds.", kind="rate-limited",
        headers={
            "Retry-After": str(decision.reset_seconds), "RateLimit-Limit": str(decision.limit),
            "RateLimit-Remaining": "0", "RateLimit-Reset": str(decision.reset_seconds),
        },
    )


async def _relay(
    upstream: aiohttp.ClientResponse, route: CompiledRoute, decision: Decision, scope: dict, receive: Any, send: Any
) -> None:
    response_headers = [(k.lower(), v) for k, v in upstream.raw_headers if k.lower() not in DROP_RESPONSE]
    response_headers += SECURITY_HEADERS
    response_headers += _rate_headers(decision)
    content_type = upstream.headers.get("Content-Type", "")
    streaming = route.stream or content_type.startswith("text/event-stream") or upstream.content_length is None
    if not streaming or scope["method"] == "HEAD":
        body = await upstream.read()
        response_headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": upstream.status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": upstream.status, "headers": response_headers})
    # Unbuffered relay; a client that goes away closes the upstream stream too.
    watcher = asyncio.create_task(on_disconnect(receive, upstream.close))
    try:
        async for chunk in upstream.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except (aiohttp.ClientError, OSError):
        if not watcher.done():
            raise
    finally:
        watcher.cancel()


