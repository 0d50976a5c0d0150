"""What the gateway forwards and relays of headers: a client cannot speak for the gateway upstream,
and an upstream's hop-by-hop and server-identifying headers never reach the client."""

from __future__ import annotations

import re

import pytest

from prognetwork.gateway.proxy import (
    SECURITY_HEADERS,
    _relay,
    _upstream_headers,
    compile_routes,
    identity_headers,
    match,
)
from prognetwork.gateway.ratelimit import Decision
from prognetwork.gateway.settings import GatewaySettings
from prognetwork.gateway.upstream import BadResponse

TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01")
CLAIMS = {"sub": "5b0c8a52-0d7e-4a43-9a57-3c6f0d3b8e01", "role": "admin", "sid": "session-1",
          "tid": "0f3e2a9c-5d1b-4f6a-8e7c-2b4d6f8a0c1e"}


def scope(**extra) -> dict:
    return {"type": "http", "method": "GET", "scheme": "https", "prog.request_id": "req-123", **extra}


def forwarded(headers: list[tuple[bytes, bytes]], claims: dict | None = None, client_ip: str = "203.0.113.7",
              **scope_extra) -> list[tuple[str, str]]:
    identity = identity_headers(claims) if claims is not None else ()
    out = _upstream_headers(headers, scope(**scope_extra), client_ip, identity)
    assert all(isinstance(name, bytes) and isinstance(value, bytes) for name, value in out)
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in out]


def names(headers: list[tuple[str, str]]) -> list[str]:
    return [name.lower() for name, _ in headers]


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


# --- request headers -------------------------------------------------------------------------


def test_hop_by_hop_headers_stop_at_the_gateway():
    hop_by_hop = [b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
                  b"transfer-encoding", b"upgrade"]
    sent = [(name, b"x") for name in hop_by_hop] + [(b"accept", b"application/json")]
    assert not set(names(forwarded(sent))) & {n.decode() for n in hop_by_hop}
    assert values(forwarded(sent), "accept") == ["application/json"]


def test_end_to_end_headers_pass_unchanged_and_in_order():
    sent = [(b"authorization", b"Bearer abc"), (b"accept", b"text/html"), (b"cookie", b"a=1"),
            (b"x-custom", b"caf\xe9"), (b"accept", b"*/*")]
    out = forwarded(sent)
    kept = [(name, value) for name, value in out if name in {"authorization", "accept", "cookie", "x-custom"}]
    assert kept == [("authorization", "Bearer abc"), ("accept", "text/html"), ("cookie", "a=1"),
                    ("x-custom", "caf\xe9"), ("accept", "*/*")]


def test_identity_headers_a_client_sends_are_dropped_and_the_gateway_sets_them_from_the_token():
    spoofed = [(b"x-prog-user-id", b"someone-else"), (b"x-prog-user-role", b"admin"),
               (b"x-prog-tenant-id", b"other-tenant"), (b"x-prog-anything-new", b"1")]
    out = forwarded(spoofed, CLAIMS)
    identity = [(name, value) for name, value in out if name.lower().startswith("x-prog-")]
    assert identity == [("x-prog-user-id", CLAIMS["sub"]), ("x-prog-user-role", "admin"),
                        ("x-prog-session-id", "session-1"), ("x-prog-tenant-id", CLAIMS["tid"])]


def test_a_public_route_forwards_no_identity_at_all():
    out = forwarded([(b"x-prog-user-id", b"someone"), (b"x-prog-user-role", b"admin")], claims=None)
    assert [name for name in names(out) if name.startswith("x-prog-")] == []


def test_a_token_without_tenant_or_role_gets_the_user_role_and_no_tenant_header():
    out = forwarded([], {"sub": "u-1"})
    assert values(out, "x-prog-user-role") == ["user"]
    assert values(out, "x-prog-session-id") == [""]
    assert values(out, "x-prog-tenant-id") == []


def test_forwarding_headers_are_rebuilt_from_what_the_server_saw_never_copied_from_the_client():
    sent = [(b"host", b"api.example.com"), (b"x-forwarded-for", b"1.2.3.4, 10.0.0.1"),
            (b"x-forwarded-proto", b"http"), (b"x-forwarded-host", b"evil.example"),
            (b"x-request-id", b"client-chosen"), (b"content-length", b"999")]
    out = forwarded(sent, client_ip="198.51.100.9")
    assert values(out, "x-forwarded-for") == ["198.51.100.9"]
    assert values(out, "x-forwarded-proto") == ["https"]
    assert values(out, "x-forwarded-host") == ["api.example.com"]
    assert values(out, "x-request-id") == ["req-123"]
    # The upstream's own Host and the body's real length are the HTTP client's to set.
    assert values(out, "host") == [] and values(out, "content-length") == []


def test_without_a_host_header_no_forwarded_host_is_invented():
    assert values(forwarded([(b"accept", b"*/*")]), "x-forwarded-host") == []


def test_a_clients_trace_context_is_carried_upstream_as_sent():
    parent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    out = forwarded([(b"traceparent", parent), (b"tracestate", b"vendor=1")])
    assert values(out, "traceparent") == [parent.decode()]
    assert values(out, "tracestate") == ["vendor=1"]


def test_a_request_without_trace_context_starts_a_new_trace():
    first, second = (values(forwarded([]), "traceparent") for _ in range(2))
    assert len(first) == 1 and TRACEPARENT.fullmatch(first[0])
    assert first[0].split("-")[1] != second[0].split("-")[1]  # a trace of its own per request


# --- response headers ------------------------------------------------------------------------


class UpstreamAnswer:
    """The parts of gateway.upstream.Response that a buffered relay reads: status, head, body."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = [(name.encode(), value.encode()) for name, value in headers]
        self.content_length = len(body)
        self._body = body

    async def read(self) -> bytes:
        return self._body


async def relayed(headers: list[tuple[str, str]], decision: Decision, body: bytes = b'{"ok": true}'):
    """The response the client gets for an upstream answer on the (non-streaming) users route."""
    route = match(compile_routes(GatewaySettings(PROG_ENV="development")), "/api/v1/users/me")
    assert route is not None and not route.stream
    sent: list[dict] = []

    async def receive() -> dict:
        raise AssertionError("a buffered relay does not read from the client")

    async def send(message: dict) -> None:
        sent.append(message)

    await _relay(UpstreamAnswer(200, headers, body), route, decision, scope(), receive, send)
    start, *bodies = sent
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert b"".join(m["body"] for m in bodies) == body
    return [(name.decode(), value.decode()) for name, value in start["headers"]]


ALLOWED = Decision(True, limit=1200, remaining=1199, reset_seconds=60)


async def test_hop_by_hop_and_server_identifying_response_headers_are_dropped():
    upstream = [("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"),
                ("Upgrade", "h2c"), ("Server", "uvicorn"), ("Date", "Tue, 01 Jan 2030 00:00:00 GMT"),
                ("X-Request-ID", "upstream-id"), ("Content-Type", "application/json")]
    out = await relayed(upstream, ALLOWED)
    dropped = {"connection", "keep-alive", "transfer-encoding", "upgrade", "server", "date", "x-request-id"}
    assert not dropped & set(names(out))
    assert values(out, "content-type") == ["application/json"]


async def test_the_relayed_length_is_the_bodys_own_not_the_upstreams_claim():
    out = await relayed([("Content-Length", "9999")], ALLOWED, body=b"12345")
    assert values(out, "content-length") == ["5"]


async def test_end_to_end_response_headers_are_kept_including_repeated_ones():
    upstream = [("Cache-Control", "no-store"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Upstream", "users")]
    out = await relayed(upstream, ALLOWED)
    assert values(out, "set-cookie") == ["a=1", "b=2"]
    assert values(out, "cache-control") == ["no-store"] and values(out, "x-upstream") == ["users"]


async def test_every_relayed_response_carries_the_security_headers():
    out = await relayed([], ALLOWED)
    for name, value in SECURITY_HEADERS:
        assert values(out, name.decode()) == [value.decode()]


@pytest.mark.parametrize(("decision", "expected"), [
    (ALLOWED, {"ratelimit-limit": ["1200"], "ratelimit-remaining": ["1199"], "ratelimit-reset": ["60"]}),
    # Decided without Redis: there is no count to report.
    (Decision(True, degraded=True), {"ratelimit-limit": [], "ratelimit-remaining": [], "ratelimit-reset": []}),
])
async def test_rate_limit_headers_report_the_window_unless_the_limiter_was_down(decision, expected):
    out = await relayed([], decision)
    assert {name: values(out, name) for name in expected} == expected


def test_the_gateway_lets_go_of_idle_upstream_connections_before_the_upstream_does():
    """A pooled connection the upstream closes as a request goes out is a 502 or a retry;
    closing idle ones first leaves only a replica's shutdown to race with (kit/server.py)."""
    from prognetwork.gateway.upstream import KEEPALIVE_SECONDS
    from prognetwork.kit.server import KEEP_ALIVE_SECONDS

    assert KEEPALIVE_SECONDS < KEEP_ALIVE_SECONDS


def test_a_claim_that_would_end_its_header_is_refused_not_forwarded():
    from prognetwork.kit.problems import Problem

    with pytest.raises(Problem) as refused:
        forwarded([], {**CLAIMS, "role": "admin\r\nx-prog-user-role: owner"})
    assert refused.value.status == 401


class BrokenAnswer(UpstreamAnswer):
    def __init__(self, failure: BaseException) -> None:
        super().__init__(200, [("Content-Length", "10")], b"")
        self.failure = failure

    async def read(self) -> bytes:
        raise self.failure


@pytest.mark.parametrize(("failure", "status"), [(TimeoutError(), 504), (BadResponse("cut short"), 502)])
async def test_a_body_that_never_arrives_whole_is_a_504_or_502_not_a_500(failure, status):
    from prognetwork.kit.problems import Problem

    route = match(compile_routes(GatewaySettings(PROG_ENV="development")), "/api/v1/users/me")

    async def nothing(*_):
        raise AssertionError("nothing is sent before the body is whole")

    with pytest.raises(Problem) as answered:
        await _relay(BrokenAnswer(failure), route, ALLOWED, scope(), nothing, nothing)
    assert answered.value.status == status
