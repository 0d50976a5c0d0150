"""Hostile request paths against a real gateway: refused, or relayed to the intended upstream, never elsewhere.

Every upstream is a recording stub, and a canary listens on its own port: each authority the
corpus tries to smuggle in points at the canary, which must never see a connection.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass

import pytest

from prognetwork.users.keys import load_key
from tests.helpers.processes import start_service
from tests.helpers.stub_upstream import StubUpstream
from tests.helpers.tokens import mint

pytestmark = pytest.mark.e2e
UNLIMITED = {group: {"requests": 10**6, "window_seconds": 60} for group in ("auth", "anonymous", "default")}


class Canary:
    """A plain TCP listener that records every connection it accepts."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)  # lets the accept loop notice close()
        self.port = self.listener.getsockname()[1]
        self.connections: list[tuple[str, int]] = []
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(peer)
            with conn:
                # Answer like an upstream would, so a leak would also show in the relayed answer.
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\ncanary")

    def close(self) -> None:
        self.closed.set()
        self.thread.join(5)
        self.listener.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def problem(self) -> dict:
        assert self.headers.get("content-type") == "application/problem+json", (self.status, self.headers, self.body)
        return json.loads(self.body)


def send_raw(port: int, target: bytes, token: str | None) -> Answer:
    """One GET with `target` as the exact bytes of the request line (http.client would rewrite it)."""
    authorization = b"Authorization: Bearer " + token.encode() + b"\r\n" if token else b""
    request = b"GET " + target + b" HTTP/1.1\r\nHost: gateway.test\r\n" + authorization + b"Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body)


@pytest.fixture
def canary():
    listener = Canary()
    yield listener
    listener.close()


@pytest.fixture
def upstreams(signing_key):
    stubs = {
        "user-service": StubUpstream("user-service", jwks={"keys": [load_key(signing_key).jwk]}),
        "event-streaming": StubUpstream("event-streaming"),
        "notification-service": StubUpstream("notification-service"),
    }
    yield stubs
    for stub in stubs.values():
        stub.close()


@pytest.fixture
def gateway(service_env, upstreams, tmp_path):
    env = {**service_env, "GATEWAY_RATE_LIMITS": json.dumps(UNLIMITED),
           **{f"{name.upper().replace('-', '_')}_URL": stub.url for name, stub in upstreams.items()},
           "JWKS_URL": upstreams["user-service"].url + "/.well-known/jwks.json"}
    process = start_service("api-gateway", env, tmp_path)
    yield process
    process.stop()


REFUSED = "refused"  # 400 invalid-path from the gateway
UNROUTED = "unrouted"  # the gateway's own 404: no route, so no upstream


@dataclass(frozen=True)
class Relayed:
    upstream: str
    path: str  # exactly what that upstream must receive
    public: bool = False  # answered without a token too


def corpus(canary: str) -> dict[bytes, object]:
    """Raw path → REFUSED, UNROUTED or where it is relayed."""
    cases: dict[str, object] = {
        # the reported open proxy, and its malformed variants that used to be plain-text 500s
        f"/api%2fv1%2fauth%2flogin%2f@{canary}/anything": REFUSED,
        "/api%2Fv1%2Fevents": REFUSED,
        "/%61pi/v1/auth/login": Relayed("user-service", "/v1/auth/login", public=True),
        "/%61pi/v1/events/echo": Relayed("event-streaming", "/v1/events/echo"),
        f"/api/v1/auth/login%2f@{canary}": REFUSED,
        f"/api/v1/auth/login%2F@{canary}/x": REFUSED,
        f"/api/v1/auth/login/@{canary}/anything": Relayed("user-service", f"/v1/auth/login/@{canary}/anything", public=True),
        f"/api/v1/auth/login:1@{canary}/x": Relayed("user-service", f"/v1/auth/login:1@{canary}/x"),  # /api/v1/auth
        f"/api/v1/events/echo%40{canary}": Relayed("event-streaming", f"/v1/events/echo%40{canary}"),
        f"/api/v1/events/echo%3f@{canary}": Relayed("event-streaming", f"/v1/events/echo%3F@{canary}"),
        f"/api/v1/events/echo%23@{canary}": Relayed("event-streaming", f"/v1/events/echo%23@{canary}"),
        f"/api/v1/events/echo?next=//{canary}/&u=http://{canary}@x": Relayed("event-streaming", "/v1/events/echo"),
        f"/api/v1/events/echo?p=%2F..%2F%00%zz#@{canary}": Relayed("event-streaming", "/v1/events/echo"),
        # empty segments: '//host' is an authority to anyone who re-parses the path
        f"//{canary}/api/v1/auth/login": REFUSED,
        f"/api/v1/auth/login//{canary}/x": REFUSED,
        "/api/v1/users//me": REFUSED,
        # climbing out of the prefix, plain and encoded
        "/api/v1/users/../../metrics": REFUSED,
        "/api/v1/users/..%2f..%2fmetrics": REFUSED,
        "/api/v1/users/..%2F..%2Fmetrics": REFUSED,
        "/api/v1/users/%2e%2e/%2E%2E/metrics": REFUSED,
        "/api/v1/users/.%2e/metrics": REFUSED,
        "/api/v1/users/./me": REFUSED,
        "/api/v1/users/..;/..;/metrics": REFUSED,
        "/api/v1/dev/%2e%2e/%2e%2e/v1/users/me": REFUSED,
        # backslashes, double encoding, overlong UTF-8, controls, look-alikes
        f"/api/v1/users/%5c%5c{canary}": REFUSED,
        f"/api/v1/users/%5C..%5C{canary}": REFUSED,
        "/api/v1/events/%252f..%252f": REFUSED,
        "/api/v1/events/%252e%252e/x": REFUSED,
        "/api/v1/users/%c0%af": REFUSED,
        "/api/v1/users/%e0%80%af": REFUSED,
        "/api/v1/users/%c0%ae%c0%ae/metrics": REFUSED,
        "/api/v1/users/me%00": REFUSED,
        "/api/v1/users/me%0d%0aX-Injected:%201": REFUSED,
        "/api/v1/users/%ef%bc%8f..": REFUSED,
        "/api/v1/users/%zz": REFUSED,
        # mixed case: only the encodings are case-insensitive
        "/api/v1/events/%65cho": Relayed("event-streaming", "/v1/events/echo"),
        "/api/v1/events/%45cho": Relayed("event-streaming", "/v1/events/Echo"),
        "/API/v1/events/echo": UNROUTED,
        "/api/V1/events/echo": UNROUTED,
        # ordinary requests still work
        "/api/v1/events/caf%c3%a9": Relayed("event-streaming", "/v1/events/caf%C3%A9"),
        "/.well-known/jwks.json": Relayed("user-service", "/.well-known/jwks.json", public=True),
        "/api/v1/users/me": Relayed("user-service", "/v1/users/me"),
        "/api/v1/dev/outbox": Relayed("notification-service", "/v1/dev/outbox", public=True),
        "/api/v2/nothing": UNROUTED,
    }
    return {raw.encode(): expected for raw, expected in cases.items()}


def test_hostile_paths_reach_only_the_intended_upstream_under_the_route_prefix(gateway, upstreams, canary, signing_key):
    prefixes = {"user-service": ("/v1/", "/.well-known/jwks.json"), "event-streaming": ("/v1/events/",),
                "notification-service": ("/v1/dev/",)}
    for token in (None, mint(signing_key, "path-tester")):  # anonymous first, as the reported attack was
        for raw, expected in corpus(f"127.0.0.1:{canary.port}").items():
            seen_before = {name: len(stub.state.paths) for name, stub in upstreams.items()}
            answer = send_raw(gateway.port, raw, token)
            case = (raw.decode("latin-1"), "with a token" if token else "anonymous")
            assert answer.status < 500 and answer.body != b"canary", (case, answer)
            reached = {name: stub.state.paths[seen_before[name]:] for name, stub in upstreams.items()}
            if isinstance(expected, Relayed) and (token or expected.public):
                assert answer.headers.get("x-stub") == expected.upstream, (case, answer)
                assert reached == {n: [expected.path] if n == expected.upstream else [] for n in upstreams}, case
                assert expected.path.startswith(prefixes[expected.upstream]), case
                continue
            assert not any(reached.values()), (case, reached)
            problem = answer.problem
            if expected == REFUSED:
                assert answer.status == 400 and problem["type"].endswith("/invalid-path") and problem["detail"], case
            elif expected == UNROUTED:
                assert answer.status == 404 and problem["status"] == 404, (case, answer)
            else:
                assert answer.status == 401 and problem["type"].endswith("/unauthenticated"), (case, answer)
    assert canary.connections == [], "the gateway connected to an authority taken from a request"
    # The query string went on byte for byte (the fragment never leaves the client's request line).
    queries = {r["query"] for r in upstreams["event-streaming"].state.requests}
    assert f"next=//127.0.0.1:{canary.port}/&u=http://127.0.0.1:{canary.port}@x" in queries
    assert "p=%2F..%2F%00%zz" in queries


def test_odd_request_targets_never_reach_another_authority(gateway, upstreams, canary, signing_key):
    token = mint(signing_key, "path-tester")
    authority = f"127.0.0.1:{canary.port}"
    cases: dict[bytes, object] = {
        f"/api/v1/users\\{authority}".encode(): REFUSED,
        b"/api/v1/users/a|b": REFUSED,
        b"*": REFUSED,
        # absolute form: the authority in the target is ignored, only its path is routed
        f"http://{authority}/api/v1/users/me".encode(): Relayed("user-service", "/v1/users/me"),
        # refused by the HTTP server itself, before the gateway sees a path
        "/api/v1/users/café".encode(): "server",
        f"@{authority}/x".encode(): "server",
        b"/api/v1/users/me\x00": "server",
    }
    for raw, expected in cases.items():
        answer = send_raw(gateway.port, raw, token)
        case = raw.decode("latin-1")
        assert answer.status < 500 and answer.body != b"canary", (case, answer)
        if isinstance(expected, Relayed):
            assert answer.headers.get("x-stub") == expected.upstream, (case, answer)
            assert upstreams[expected.upstream].state.paths[-1] == expected.path, case
        elif expected == REFUSED:
            assert answer.status == 400 and answer.problem["type"].endswith("/invalid-path"), (case, answer)
        else:
            assert answer.status == 400 and "x-stub" not in answer.headers, (case, answer)
    assert canary.connections == []
