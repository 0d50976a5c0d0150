"""The gateway's hot path: match a route, authenticate, rate-limit, forward, relay.

A plain ASGI callable over one pooled upstream client (gateway.upstream). Everything that can be computed
once (routes, timeouts, header sets, security headers, metric children) is computed at
start-up; a request allocates little beyond the header lists it must build.

Paths. The gateway never routes on the server's decoded `path`: `normalise_path` turns the
raw path into one canonical form, and both the route match and the upstream URL use that
same string, so they cannot disagree. A path is refused with 400 (problem+json, kind
`invalid-path`) when it is ambiguous:

- it does not start with '/', or has an empty segment ('//'; one trailing '/' is fine);
- a byte outside RFC 3986 `pchar` appears unencoded: a backslash, a control character, a
  space, quotes, non-ASCII bytes...;
- a '%' is not followed by two hex digits;
- it encodes '/' or '\\' (`%2F`, `%5C`), a control character (`%00`-`%1F`, `%7F`, C1), or
  '%' itself (`%25`: double encoding is never needed by our APIs and fools any upstream
  that decodes twice);
- its encoded bytes are not valid UTF-8 (overlong forms such as `%C0%AF`, surrogates...);
- a segment is made of dots only, once decoded and without `;parameters` or trailing
  spaces ('.', '..', '%2e%2E', '..;x', '...'), or its non-ASCII characters fold (NFKC)
  into '/', '\\', '%' or such a dot segment (fullwidth solidus, one-dot leader...).

Percent-encoded unreserved characters (ALPHA, DIGIT, '-', '.', '_', '~') are decoded, as
RFC 3986 section 6.2.2.2 says they are equivalent (`/%61pi/v1` is `/api/v1`); every other
encoding is kept, with upper-case hex.

Invariant: the upstream URL is built from parts, never by concatenating strings. Its
scheme, host and port are the route's upstream's, parsed once at start-up; its path is the
upstream's base path + the remainder, the normalised path after the route's strip prefix.
The strip prefix ends at a segment boundary, so the remainder is empty or starts with '/',
and it has no dot or empty segment, so the forwarded path always lies under the route's
`upstream_prefix`. The query string is passed on as sent: in a URL built from parts it
follows the '?' and cannot reach the authority or the path. The configuration cannot break
this either: the gateway does not start unless route prefixes and upstream base paths are
canonical and upstream URLs are http(s)://host[:port][/path] with nothing else.
"""

from __future__ import annotations

import asyncio
import re
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import aiohttp
import structlog
from prometheus_client import Counter, Histogram
from starlette.types import Receive, Scope, Send
from yarl import URL

from prognetwork.gateway.problems import INVALID_PATH, INVALID_QUERY, UPSTREAM_TIMEOUT, UPSTREAM_UNAVAILABLE
from prognetwork.gateway.ratelimit import Decision, RateLimiter, refusal
from prognetwork.gateway.settings import GatewaySettings
from prognetwork.gateway.upstream import (
    ConnectFailed,
    Disconnected,
    Origin,
    Response,
    Timeouts,
    UpstreamClient,
    UpstreamError,
)
from prognetwork.kit import tokens, tracing
from prognetwork.kit.app import new_request_id, on_disconnect
from prognetwork.kit.auth import bearer_token, invalid_token
from prognetwork.kit.jwks import Jwks
from prognetwork.kit.problems import Problem, problem_response
from prognetwork.kit.revocation import Revocations

log = structlog.get_logger("prognetwork.gateway")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Rebuilt by the gateway, so whatever a client sent under these names is dropped.
REBUILT = frozenset(
    {
        b"host",
        b"content-length",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
        b"expect",  # a 100-continue was the server's business with the client; the body is here
    }
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
    "gateway_upstream_duration_seconds",
    "Time until an upstream's response headers arrive.",
    ("upstream",),
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
UPSTREAM_RESPONSES = Counter(
    "gateway_upstream_responses",
    "Upstream answers by status (502/504 when none came).",
    ("upstream", "status"),
)
AUTH_FAILURES = Counter(
    "gateway_auth_failures", "Requests refused for a missing or invalid token.", ("reason",)
)
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
UPSTREAM_RETRIES = Counter(
    "gateway_upstream_retries",
    "Requests sent again on a fresh connection after the first got no answer (safe_to_send_again).",
    ("upstream",),
)
MAX_IDENTITIES = 10_000  # tokens whose identity headers are kept; all forgotten at once beyond it


class Identity(NamedTuple):
    subject: str  # the rate limit's subject
    headers: tuple[tuple[bytes, bytes], ...]  # x-prog-* for the upstream


# What may not appear unencoded in a query string sent on: it would end or break the request line.
_UNSAFE_QUERY = re.compile(rb"[\x00-\x20\x7f]")


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    path: str  # the route template used as the metrics label
    prefix: str
    prefix_slash: str
    upstream: str
    # The upstream URL in parts, parsed once: a request can change none of them.
    origin: Origin  # scheme, host (IDNA-encoded, IPv6 in brackets) and port
    base_path: str  # '' or '/…' without a trailing '/'
    strip: int  # characters of the normalised path dropped before it is appended to base_path
    upstream_prefix: str  # every path forwarded for this route is this or lies under it
    public: bool
    limit: str
    stream: bool
    # Streams have no read timeout (an event may be minutes away), but their head must come in time.
    timeouts: Timeouts
    latency: Any  # the pre-bound histogram child
    responses: dict[int, Any]  # UPSTREAM_RESPONSES children by status, bound on first use

    def count_response(self, status: int) -> None:
        child = self.responses.get(status)
        if child is None:
            child = self.responses[status] = UPSTREAM_RESPONSES.labels(self.upstream, str(status))
        child.inc()

    def matches(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix_slash)


def compile_routes(settings: GatewaySettings) -> list[CompiledRoute]:
    upstreams = {
        name: _upstream_parts(name, url)
        for name, url in settings.upstreams.items()
        if any(route.upstream == name for route in settings.routes)
    }
    compiled = []
    for route in settings.routes:
        prefix = route.prefix.rstrip("/") or "/"
        _require_canonical(prefix, f"route prefix {route.prefix!r}")
        strip_prefix = route.strip_prefix.rstrip("/")
        # Only a whole-segment strip keeps the remainder empty or starting with '/'.
        strip = (
            len(strip_prefix)
            if strip_prefix and (prefix == strip_prefix or prefix.startswith(strip_prefix + "/"))
            else 0
        )
        origin, base_path = upstreams[route.upstream]
        compiled.append(
            CompiledRoute(
                path=prefix if "." in prefix.rsplit("/", 1)[-1] else prefix.rstrip("/") + "/*",
                prefix=prefix,
                prefix_slash=prefix.rstrip("/") + "/",
                upstream=route.upstream,
                origin=origin,
                base_path=base_path,
                strip=strip,
                upstream_prefix=base_path + prefix[strip:] or "/",
                public=route.public,
                limit=route.limit,
                stream=route.stream,
                timeouts=Timeouts(
                    connect=settings.upstream_connect_timeout_seconds,
                    read=None if route.stream else settings.upstream_timeout_seconds,
                    head=settings.upstream_timeout_seconds if route.stream else None,
                ),
                latency=UPSTREAM_LATENCY.labels(route.upstream),
                responses={},
            )
        )
    return compiled


def _upstream_parts(name: str, url: str) -> tuple[Origin, str]:
    parsed = URL(url)
    if (
        parsed.scheme not in ("http", "https")
        or not parsed.raw_host
        or parsed.raw_user is not None
        or parsed.raw_password is not None
        or parsed.raw_query_string
        or parsed.raw_fragment
    ):
        raise ValueError(
            f"upstream {name!r} must be http(s)://host[:port][/path] without credentials, query or fragment: {url!r}"
        )
    base_path = parsed.raw_path.rstrip("/")
    if base_path:
        _require_canonical(base_path, f"the path of upstream {name!r}")
    host = parsed.host_subcomponent or parsed.raw_host
    return Origin(parsed.scheme, host, parsed.port or (443 if parsed.scheme == "https" else 80)), base_path


def _require_canonical(path: str, what: str) -> None:
    try:
        canonical = normalise_path(path.encode())
    except Problem as problem:
        raise ValueError(f"{what} is not a valid path: {problem.detail}") from None
    if canonical != path:
        raise ValueError(f"{what} must be written in canonical form: {canonical!r}")


# Path bytes taken as they are: RFC 3986 pchar (unreserved, sub-delims, ':' and '@'), the
# segment separator and the start of a percent-encoding.
UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
PATH_BYTES = UNRESERVED + b"!$&'()*+,;=:@/%"
_UNRESERVED = frozenset(UNRESERVED)
_HEX = frozenset(b"0123456789abcdefABCDEF")
# What NFKC folding must not produce from non-ASCII characters in a segment.
_FOLDS_TO_DELIMITER = ("/", "\\", "%")


def _invalid(detail: str) -> Problem:
    return INVALID_PATH(detail)


def normalise_path(raw: bytes) -> str:
    """The canonical form of a raw request path, or a 400 Problem saying what is ambiguous.

    The rules are in the module docstring. Route matching and `upstream_url` both take the
    result, so what was matched is exactly what is forwarded.
    """
    unexpected = raw.translate(None, PATH_BYTES)
    if unexpected:
        raise _invalid(_unexpected_detail(unexpected[0]))
    # All ASCII now; substring tests on str are several times faster than on bytes.
    path = raw.decode("ascii")
    if path[:1] != "/":
        raise _invalid("The path must start with '/'.")
    if "//" in path:
        raise _invalid("The path has an empty segment ('//'); send one '/' between segments.")
    if "%" not in path and "/." not in path:
        return path  # nothing to decode and no segment starting with a dot: already canonical
    return "/".join([_segment(segment) for segment in path.split("/")])


def upstream_url(route: CompiledRoute, path: str, query: bytes) -> URL:
    """Where a request goes: `path` is normalise_path's result and matched `route`.

    Scheme, host and port are the route's, fixed at start-up. The remainder, path[strip:],
    is empty or starts with '/' (the strip ends at a segment boundary of the matched prefix)
    and has no dot or empty segment (normalise_path), so base_path + remainder stays under
    route.upstream_prefix. The query is passed on as sent: it only ever follows the '?'.
    """
    origin = route.origin
    return URL.build(
        scheme=origin.scheme,
        host=origin.host,
        port=origin.port,
        path=route.base_path + path[route.strip :] or "/",
        query_string=query.decode("latin-1"),
        encoded=True,
    )


def upstream_target(route: CompiledRoute, path: str, query: bytes) -> bytes:
    """The request target sent to the route's origin: upstream_url's path and query, as bytes.

    The path is normalise_path's (only pchar and valid encodings); a query holding a byte that
    would end the request line (space, control characters) is refused with 400."""
    target = (route.base_path + path[route.strip :] or "/").encode("ascii")
    if not query:
        return target
    if _UNSAFE_QUERY.search(query) is not None:
        raise INVALID_QUERY("The query string contains a space or a control character; percent-encode it.")
    return target + b"?" + query


def _unexpected_detail(byte: int) -> str:
    if byte == 0x5C:
        return "The path contains a backslash; only '/' separates segments."
    if byte < 0x20 or byte == 0x7F:
        return f"The path contains a control character (0x{byte:02X})."
    if byte >= 0x80:
        return "The path contains raw non-ASCII bytes; percent-encode their UTF-8 form."
    return f"The path contains {chr(byte)!r}, which must be percent-encoded."


def _segment(segment: str) -> str:
    if "%" in segment:
        canonical, decoded = _decode_segment(segment.encode("ascii"))
    else:
        canonical = decoded = segment
    if _is_dot_segment(decoded):
        raise _invalid(
            f"The path has a dot segment ({canonical!r}); send the path without '.' or '..' segments."
        )
    return canonical


def _is_dot_segment(segment: str) -> bool:
    # Dots only, once ';parameters' and trailing spaces are dropped: '..;x' and '.. ' are '..'
    # to some servers, '...' to others.
    name = segment.partition(";")[0].rstrip(" ")
    return bool(name) and not name.strip(".")


def _decode_segment(segment: bytes) -> tuple[str, str]:
    """(canonical, decoded) forms of one segment holding percent-encodings."""
    canonical: list[str] = []
    decoded = bytearray()
    wide = False
    i, end = 0, len(segment)
    while i < end:
        byte = segment[i]
        if byte != 0x25:
            canonical.append(chr(byte))
            decoded.append(byte)
            i += 1
            continue
        digits = segment[i + 1 : i + 3]
        if len(digits) != 2 or digits[0] not in _HEX or digits[1] not in _HEX:
            raise _invalid("The path has a '%' that is not followed by two hex digits.")
        value = int(digits, 16)
        i += 3
        if value in _UNRESERVED:
            canonical.append(chr(value))  # %61 is 'a': RFC 3986 section 6.2.2.2
        elif value == 0x2F or value == 0x5C:
            raise _invalid(
                f"The path encodes a {'slash' if value == 0x2F else 'backslash'} (%{value:02X}); "
                "a segment cannot contain one."
            )
        elif value == 0x25:
            raise _invalid("The path encodes '%' (%25): double-encoded paths are not accepted.")
        elif value < 0x20 or value == 0x7F:
            raise _invalid(f"The path encodes a control character (%{value:02X}).")
        else:
            canonical.append(f"%{value:02X}")
            wide = wide or value >= 0x80
        decoded.append(value)
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid(
            "The path's percent-encoded bytes are not valid UTF-8 (overlong forms and surrogates are refused)."
        ) from None
    if wide:
        if any(unicodedata.category(char) == "Cc" for char in text):
            raise _invalid("The path encodes a control character.")
        folded = unicodedata.normalize("NFKC", text)
        if any(d in folded for d in _FOLDS_TO_DELIMITER) or _is_dot_segment(folded):
            raise _invalid(
                "The path has characters that are equivalent (NFKC) to '/', '\\', '%' or a dot segment."
            )
    return "".join(canonical), text


def match(routes: list[CompiledRoute], path: str) -> CompiledRoute | None:
    """The first route for `path`, which must be normalise_path's result (what is forwarded)."""
    for route in routes:
        if route.matches(path):
            return route
    return None


def safe_to_send_again(exc: BaseException, pooled: bool, method: str, idempotency_key: bool) -> bool:
    """Whether a request that got no answer may be sent once more.

    - The connection could not be opened: nothing was sent, whatever the method.
    - A pooled keep-alive connection broke before any answer: usually the upstream had closed
      it (a replica shutting down) and never read the request, but an upstream that died while
      handling it looks the same. So only a request that is safe to repeat: an idempotent method,
      or one carrying an
      Idempotency-Key, which the upstream deduplicates. Services close their connections
      themselves while they drain (`Connection: close`, kit.server), which keeps this rare.
    """
    if isinstance(exc, ConnectFailed):
        return True
    if not pooled or not isinstance(exc, Disconnected):
        return False
    return method in IDEMPOTENT_METHODS or idempotency_key


@dataclass(frozen=True, slots=True)
class Proxy:
    """Forwards a request on a matched route: authenticate, rate-limit, forward, relay."""

    upstreams: UpstreamClient
    limiter: RateLimiter
    revocations: Revocations
    jwks: Jwks
    session: aiohttp.ClientSession  # for the token issuer's key set only (kit.jwks)
    identities: dict[str, Identity] = field(default_factory=dict)  # by token, verified ones only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: CompiledRoute = scope["route"]
        try:
            await self._forward(route, scope, receive, send)
        except Problem as problem:
            await problem_response(
                problem.status,
                problem.detail,
                kind=problem.kind,
                title=problem.title,
                instance=scope["path"],
                headers=problem.headers,
                **problem.extensions,
            )(scope, receive, send)

    async def _forward(self, route: CompiledRoute, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        identity = None if route.public else await self._authenticate(headers, method)
        client = scope.get("client")
        client_ip = client[0] if client else "unknown"
        decision = await self.limiter.check(
            route.limit, identity.subject if identity else f"a:{client_ip}", method
        )
        if not decision.allowed:
            raise refusal(decision)

        body = await _read_body(receive)
        if body is None:
            return  # the client left before sending its request
        outgoing = _upstream_headers(headers, scope, client_ip, identity.headers if identity else ())
        # The path the gateway matched (normalise_path), never the server's decoded one.
        target = upstream_target(route, scope["prog.path"], scope["query_string"])

        started = time.perf_counter()
        try:
            upstream = await self._send(route, method, target, outgoing, body)
        except TimeoutError:
            route.count_response(504)
            raise UPSTREAM_TIMEOUT(f"The {route.upstream} service did not answer in time.") from None
        except (UpstreamError, OSError) as exc:
            route.count_response(502)
            log.warning(
                "upstream unreachable", upstream=route.upstream, error=type(exc).__name__, reason=str(exc)
            )
            raise UPSTREAM_UNAVAILABLE(f"The {route.upstream} service is unavailable.") from None
        route.latency.observe(time.perf_counter() - started)
        route.count_response(upstream.status)
        try:
            await _relay(upstream, route, decision, scope, receive, send)
        finally:
            upstream.release()

    async def _send(
        self,
        route: CompiledRoute,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> Response:
        """The upstream's response; sent once more, on a new connection, when the first attempt
        got no answer and sending it again is safe (`safe_to_send_again`)."""
        request = self.upstreams.request
        try:
            return await request(route.origin, method, target, headers, body, route.timeouts)
        except (ConnectFailed, Disconnected) as exc:
            keyed = any(name.lower() == b"idempotency-key" for name, _ in headers)
            if not safe_to_send_again(exc, isinstance(exc, Disconnected) and exc.pooled, method, keyed):
                raise
            UPSTREAM_RETRIES.labels(route.upstream).inc()
            log.info("retrying on a fresh connection", upstream=route.upstream, error=type(exc).__name__)
        return await request(route.origin, method, target, headers, body, route.timeouts, fresh=True)

    async def _authenticate(self, headers: list[tuple[bytes, bytes]], method: str) -> Identity:
        value = next((v for k, v in headers if k == b"authorization"), None)
        try:
            token = bearer_token(value.decode("latin-1") if value is not None else None)
        except Problem:
            AUTH_FAILURES.labels("missing").inc()
            raise
        try:
            claims = await self.jwks.verify(token, self.session)
        except tokens.InvalidToken as exc:
            AUTH_FAILURES.labels("invalid").inc()
            raise invalid_token(str(exc)) from None
        try:
            await self.revocations.ensure_active(claims, method)
        except Problem as problem:
            if problem.status == 401:
                AUTH_FAILURES.labels("revoked").inc()
            raise
        # A token's claims never change: what they say upstream is worked out once per token.
        identity = self.identities.get(token)
        if identity is None:
            if len(self.identities) >= MAX_IDENTITIES:
                self.identities.clear()
            identity = self.identities[token] = Identity(f"u:{claims['sub']}", identity_headers(claims))
        return identity


async def _read_body(receive: Receive) -> bytes | None:
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
    headers: list[tuple[bytes, bytes]],
    scope: Scope,
    client_ip: str,
    identity: tuple[tuple[bytes, bytes], ...],
) -> list[tuple[bytes, bytes]]:
    outgoing: list[tuple[bytes, bytes]] = []
    host = traceparent = None
    for header in headers:
        name = header[0]
        if name in DROP_REQUEST or name.startswith(IDENTITY_PREFIX):
            if name == b"host":
                host = header[1]
            continue
        if name in TRACE_HEADERS:
            if tracing.enabled():
                continue  # the upstream client's span injects this request's own context
            traceparent = header[1]
        outgoing.append(header)  # names as the server gave them: lower case
    # The client address as the server determined it (X-Forwarded-For is honoured only from
    # FORWARDED_ALLOW_IPS), never a chain a client could have written itself.
    outgoing.append((b"x-forwarded-for", client_ip.encode("latin-1")))
    outgoing.append((b"x-forwarded-proto", scope.get("scheme", "http").encode("latin-1")))
    if host:
        outgoing.append((b"x-forwarded-host", host))
    outgoing.append((b"x-request-id", scope.get("prog.request_id", "").encode("latin-1")))
    if traceparent is None and not tracing.enabled():
        # Start a W3C trace here, so every upstream log line can be joined to this request.
        # Random ids from the request-id pool: no system call per request.
        outgoing.append((b"traceparent", f"00-{new_request_id()}-{new_request_id()[:16]}-01".encode()))
    outgoing += identity
    return outgoing


def identity_headers(claims: dict[str, Any]) -> tuple[tuple[bytes, bytes], ...]:
    """The identity headers a verified token's claims give the upstream (only the gateway sets them)."""
    headers = [
        (b"x-prog-user-id", _claim(claims["sub"])),
        (b"x-prog-user-role", _claim(claims.get("role", "user"))),
        (b"x-prog-session-id", _claim(claims.get("sid", ""))),
    ]
    if claims.get("tid"):
        headers.append((b"x-prog-tenant-id", _claim(claims["tid"])))
    return tuple(headers)


def _claim(value: Any) -> bytes:
    """A verified token's claim as a header value; one that could end the header is refused."""
    encoded = str(value).encode()
    if b"\r" in encoded or b"\n" in encoded or b"\0" in encoded:
        raise invalid_token("The token carries a claim that cannot be passed on.")
    return encoded


def _rate_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    if decision.degraded:
        return []
    return [
        (b"ratelimit-limit", b"%d" % decision.limit),
        (b"ratelimit-remaining", b"%d" % decision.remaining),
        (b"ratelimit-reset", b"%d" % decision.reset_seconds),
    ]


async def _relay(
    upstream: Response,
    route: CompiledRoute,
    decision: Decision,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    response_headers = []
    event_stream = False
    for name, value in upstream.headers:
        name = name.lower()
        if name in DROP_RESPONSE:
            continue
        if name == b"content-type":
            event_stream = value.startswith(b"text/event-stream")
        response_headers.append((name, value))
    response_headers += SECURITY_HEADERS
    response_headers += _rate_headers(decision)
    streaming = route.stream or event_stream or upstream.content_length is None
    if not streaming or scope["method"] == "HEAD":
        try:
            body = await upstream.read()
        except TimeoutError:
            raise UPSTREAM_TIMEOUT(
                f"The {route.upstream} service did not finish its answer in time."
            ) from None
        except UpstreamError as exc:
            log.warning("upstream answer broken off", upstream=route.upstream, reason=str(exc))
            raise UPSTREAM_UNAVAILABLE(f"The {route.upstream} service's answer was cut short.") from None
        response_headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": upstream.status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": upstream.status, "headers": response_headers})
    # Unbuffered relay; a client that goes away closes the upstream stream too.
    watcher = asyncio.create_task(on_disconnect(receive, upstream.close))
    try:
        async for chunk in upstream.chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except (UpstreamError, OSError):
        if not watcher.done():
            raise
    finally:
        watcher.cancel()
