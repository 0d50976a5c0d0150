"""The edge of every process: bounded request heads (431), operational endpoints on their own
port, and client addresses taken from trusted proxies only. Real processes, raw sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import psutil
import pytest
import redis as redis_sync
import uvicorn

from prognetwork.kit.server import BoundedH11Protocol, BoundedHttpToolsProtocol, ServerConfig
from tests.helpers.http import http_status, http_text, request_json
from tests.helpers.polling import eventually
from tests.helpers.ports import free_port
from tests.helpers.processes import issuer_env, start_service

pytestmark = pytest.mark.e2e
MAX_HEADER_BYTES = 32 * 1024  # the defaults
MAX_HEADER_COUNT = 100
OPERATIONAL = ("/health", "/readiness", "/metrics", "/docs", "/openapi.json")


@pytest.fixture
def gateway(service_env, users, tmp_path):
    process = start_service("api-gateway", {**service_env, **issuer_env(users.url)}, tmp_path)
    yield process
    process.stop()


def send_and_read(port: int, *parts: bytes) -> bytes:
    """Send `parts` on one connection and read until the server closes it. The server may stop
    reading part-way (it refused the head): its answer is what counts, not our send."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
        try:
            for part in parts:
                conn.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Every HTTP/1.1 response in `raw` (Content-Length framed), in order."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = int(headers["content-length"])
        found.append((int(status_line.split(" ")[1]), headers, rest[:length]))
        raw = rest[length:]
    return found


def assert_refused_431(raw: bytes, detail: str) -> None:
    ((status, headers, body),) = responses(raw)  # one answer, then the server closed the connection
    assert status == 431, raw[:300]
    assert headers["content-type"] == "application/problem+json" and headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["status"] == 431 and problem["title"] == "Request Header Fields Too Large"
    assert problem["type"].endswith("/headers-too-large") and detail in problem["detail"], problem


def request_head(*headers: str, path: str = "/.well-known/jwks.json") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: edge.test\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode()


# --- 431 ----------------------------------------------------------------------------------------


def test_oversized_heads_are_refused_while_parsing_and_the_server_carries_on(gateway):
    process = psutil.Process(gateway.process.pid)
    # A first refusal, so whatever the refusal path allocates once is allocated before measuring.
    assert_refused_431(send_and_read(gateway.port, request_head("X-Big: " + "a" * (MAX_HEADER_BYTES + 1))),
                       f"exceed {MAX_HEADER_BYTES} bytes")
    before = process.memory_info().rss

    # 32 MiB in one header value: refused after the first 32 KiB, never buffered.
    big = 32 << 20
    chunk = b"a" * (1 << 20)
    raw = send_and_read(gateway.port, b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: edge.test\r\nX-Big: ",
                        *([chunk] * (big // len(chunk))), b"\r\n\r\n")
    assert_refused_431(raw, f"exceed {MAX_HEADER_BYTES} bytes")
    assert process.is_running() and gateway.process.poll() is None
    grown = process.memory_info().rss - before
    assert grown < 5 << 20, f"RSS grew by {grown / (1 << 20):.1f} MiB for a refused 32 MiB header"

    # Too many fields, each small.
    many = [f"X-Field-{i}: {i}" for i in range(MAX_HEADER_COUNT + 1)]
    assert_refused_431(send_and_read(gateway.port, request_head(*many)), f"more than {MAX_HEADER_COUNT} header fields")

    # The same server still serves, heads up to the limits included.
    assert http_status(f"{gateway.url}/.well-known/jwks.json") == 200
    near_limit = [f"X-Field-{i}: {'v' * 250}" for i in range(80)]  # 80 fields, ~21 KiB
    ((status, _, body),) = responses(send_and_read(gateway.port, request_head(*near_limit, "Connection: close")))
    assert status == 200 and json.loads(body)["keys"]


def test_a_kept_alive_connection_is_refused_only_at_the_oversized_request(gateway):
    """The count starts again for each request on a connection: a good request, then a bad one."""
    raw = send_and_read(gateway.port, request_head(),
                        request_head("X-Big: " + "b" * (MAX_HEADER_BYTES + 100)))
    (first, second) = responses(raw)
    assert first[0] == 200 and json.loads(first[2])["keys"]
    assert second[0] == 431 and second[1]["content-type"] == "application/problem+json"


def test_an_answer_sent_before_the_request_body_arrived_survives_the_rest_of_the_body(gateway):
    """A 413 for a declared length goes out at once; the client, still sending, must get to read
    it: the server ends its side and drains the body instead of resetting the connection."""
    declared = 4 << 20
    head = (f"POST /api/v1/auth/register HTTP/1.1\r\nHost: edge.test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\nConnection: close\r\n\r\n").encode()
    chunk = b"x" * (1 << 20)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as conn:
        conn.sendall(head + chunk)
        received = b""
        while b"\r\n\r\n" not in received:
            received += conn.recv(65536)
        assert received.startswith(b"HTTP/1.1 413 ")
        for _ in range(declared // len(chunk) - 1):
            conn.sendall(chunk)  # no reset: what still comes is read and dropped
        while data := conn.recv(65536):
            received += data
    ((status, headers, body),) = responses(received)
    assert status == 413 and json.loads(body)["type"].endswith("/body-too-large")


async def _tiny_app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("protocol", [BoundedHttpToolsProtocol, BoundedH11Protocol], ids=["httptools", "h11"])
def test_both_parsers_keep_the_limits(protocol):
    """httptools is what runs; h11 is uvicorn's fallback where httptools is missing."""
    port = free_port()
    # A keep-alive longer than the socket timeout below: only a refusal closes a connection.
    config = ServerConfig(_tiny_app, host="127.0.0.1", port=port, http=protocol, log_config=None, lifespan="off",
                          max_header_bytes=4096, max_header_count=20, timeout_keep_alive=60)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    try:
        eventually(lambda: server.started, timeout=10, what="the server to listen")
        assert_refused_431(send_and_read(port, request_head("X-Big: " + "c" * (4 << 20), path="/")), "exceed 4096 bytes")
        assert_refused_431(send_and_read(port, request_head(*(f"X-{i}: {i}" for i in range(21)), path="/")),
                           "more than 20 header fields")
        ((status, _, body),) = responses(send_and_read(port, request_head(
            *(f"X-{i}: {'d' * 100}" for i in range(18)), "Connection: close", path="/")))
        assert (status, body) == (200, b"ok")
        # Trailers after a chunked body are bounded too: the server ends the connection rather
        # than wait for 4 MiB of one trailer (send_and_read fails on its timeout otherwise).
        chunked = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: "
        send_and_read(port, chunked, *([b"e" * (1 << 20)] * 4), b"\r\n\r\n")
    finally:
        server.should_exit = True
        thread.join(10)


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout_and_only_then():
    port = free_port()
    config = ServerConfig(_tiny_app, host="127.0.0.1", port=port, http=BoundedHttpToolsProtocol, log_config=None,
                          lifespan="off", max_header_bytes=4096, max_header_count=20, timeout_keep_alive=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    try:
        eventually(lambda: server.started, timeout=10, what="the server to listen")
        with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
            for _ in range(3):  # kept alive between requests...
                conn.sendall(request_head(path="/"))
                assert conn.recv(65536).startswith(b"HTTP/1.1 200 ")
            # ...and closed by the server once idle for the timeout: recv sees the end, not a timeout.
            assert conn.recv(65536) == b""
    finally:
        server.should_exit = True
        thread.join(10)


# --- the ops port -----------------------------------------------------------------------------


def test_operational_endpoints_are_served_on_the_ops_port_only(gateway):
    for path in OPERATIONAL:
        status, problem = request_json("GET", gateway.url + path)
        assert status == 404 and problem == {"type": "about:blank", "title": "Not Found", "status": 404,
                                             "detail": f"No resource at {path}.", "instance": path}, (path, problem)
        assert http_status(gateway.ops_url + path) == 200, path
    assert "requests_total" in http_text(gateway.ops_url + "/metrics")
    assert "swagger-ui" in http_text(gateway.ops_url + "/docs")
    assert request_json("GET", gateway.ops_url + "/readiness")[1]["status"] == "ready"
    # And the API is not on the ops port: a route-table path is 404 there.
    assert http_status(gateway.url + "/.well-known/jwks.json") == 200
    status, problem = request_json("GET", gateway.ops_url + "/.well-known/jwks.json")
    assert status == 404 and problem["status"] == 404


# --- trusted proxies --------------------------------------------------------------------------


def rate_limited_gateway(service_env, users, tmp_path, redis_url, **env: str):
    limits = {"auth": {"requests": 100, "window_seconds": 60}, "default": {"requests": 100, "window_seconds": 60},
              "anonymous": {"requests": 3, "window_seconds": 60}}
    store = redis_sync.Redis.from_url(redis_url)
    for key in store.scan_iter("rl:*"):  # earlier tests' counts (this run's own Redis database)
        store.delete(key)
    return start_service("api-gateway", {**service_env, **issuer_env(users.url),
                                     "GATEWAY_RATE_LIMITS": json.dumps(limits), **env}, tmp_path)


def statuses_as(gateway, clients: list[str]) -> list[int]:
    return [request_json("GET", f"{gateway.url}/.well-known/jwks.json", headers={"X-Forwarded-For": ip})[0]
            for ip in clients]


def test_without_a_trusted_proxy_forwarded_for_is_not_an_identity(service_env, users, tmp_path, redis_url):
    gateway = rate_limited_gateway(service_env, users, tmp_path, redis_url)
    try:
        # Two "clients" on one connection's address share its budget of 3.
        assert statuses_as(gateway, ["198.51.100.1", "198.51.100.2", "198.51.100.1", "198.51.100.2"]) == \
            [200, 200, 200, 429]
    finally:
        gateway.stop()


def test_a_trusted_proxy_names_the_client(service_env, users, tmp_path, redis_url):
    gateway = rate_limited_gateway(service_env, users, tmp_path, redis_url, FORWARDED_ALLOW_IPS="127.0.0.1")
    try:
        # Each client has its own budget of 3.
        assert statuses_as(gateway, ["198.51.100.1", "198.51.100.2"] * 3) == [200] * 6
        assert statuses_as(gateway, ["198.51.100.1", "198.51.100.2"]) == [429, 429]
    finally:
        gateway.stop()
