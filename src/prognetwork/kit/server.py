"""Run one service in this process: its API and its operational endpoints on two ports, request
heads bounded while they are parsed, and a graceful shutdown that load balancers can follow.

Two ports, one server: uvicorn listens on the API socket and the ops socket. The ops port
answers only the operational paths (kit.app.OPS_PATHS: /health, /readiness, /metrics, /docs,
/openapi.json), for probes and Prometheus; the API port answers everything else and 404s those.
Which port a request came in on is the local address of its connection (`scope["server"]`),
which no client can choose. An app called without a listener (tests) answers every path.

Request heads: the request line and headers together may hold MAX_HEADER_BYTES, in at most
MAX_HEADER_COUNT fields. The protocol counts while it parses, so a larger head is never
buffered: the client gets 431 problem+json and the connection closes. httptools (the parser
uvicorn picks) has no limit of its own; h11, the fallback where httptools is missing, gets the
same limits.

Responses: the head of a response is held until its first body bytes and written with them,
so a short answer leaves in one write (one system call, one TCP segment) instead of two; a
head whose body does not follow at once (a stream waiting for its first event) is written at
the end of the event loop's turn.

On SIGTERM: readiness answers 503 at once; the listeners keep serving for the drain delay
(so the orchestrator removes the pod from its endpoints before connections are refused), every
answer closing its connection (so pooled clients stop reusing them);
then uvicorn stops accepting, lets in-flight requests finish within the shutdown timeout,
runs the app's shutdown, and the process exits 0. SIGINT (Ctrl-C) skips the drain delay;
a second one forces the exit.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import sys
import threading
import urllib.parse
from types import FrameType
from typing import Any, Protocol, cast

import h11
import structlog
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn._types import HTTPScope
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.h11_impl import RequestResponseCycle as H11Cycle
from uvicorn.server import ServerState

from prognetwork.kit import problems
from prognetwork.kit.app import OPS_PATHS
from prognetwork.kit.settings import Settings

try:
    import httptools
    from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, service_unavailable
    from uvicorn.protocols.http.httptools_impl import (
        HEADER_RE,
        HEADER_VALUE_RE,
        STATUS_LINE,
        HttpToolsProtocol,
    )
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle as HttpToolsCycle
    from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
except ImportError:  # pragma: no cover - uvicorn[standard] brings it; h11 below otherwise
    HAS_HTTPTOOLS = False
else:
    HAS_HTTPTOOLS = True

log = structlog.get_logger("prognetwork.server")
access_log = structlog.get_logger("prognetwork.access")

# After a 431 the connection stays open this long at most, reading and dropping what the client
# still sends: closing with unread data would reset the connection, and the reset can destroy
# the answer before the client has read it.
REFUSED_LINGER_SECONDS = 5.0
STARTUP_FAILURE = 3  # uvicorn's exit status when it cannot start
# How long an idle client connection stays open. Clients that pool connections to us (the
# gateway: gateway/upstream.py KEEPALIVE_SECONDS) close theirs sooner, so they never reuse one
# this side is closing.
KEEP_ALIVE_SECONDS = 30
YOUNG_GC_THRESHOLD = 20_000  # allocations between collections of the young generation (Python: 700)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Any, drain_seconds: float) -> None:
        super().__init__(config)
        self.lifecycle = app.state.lifecycle
        self.drain_seconds = drain_seconds
        self._drain_timer: threading.Timer | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # What exists now (modules, the app, its runtime) lives as long as the process. Frozen,
        # the cyclic collector stops walking it: unfrozen, every full collection visited
        # hundreds of thousands of objects — tens of milliseconds during which no request moved,
        # which set the gateway's p99. And a request allocates dozens of containers that
        # reference counting frees; the young generation is collected every YOUNG_GC_THRESHOLD
        # allocations instead of 700, each time walking the requests in flight, which cost a
        # steady share of every request.
        gc.collect()
        gc.freeze()
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)
        loop = asyncio.get_running_loop()
        log.info(
            "serving",
            event_loop=f"{type(loop).__module__}.{type(loop).__qualname__}",
            frozen=gc.get_freeze_count(),
        )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Unlike uvicorn's own handler, the signal is not re-raised after shutdown: a
        # requested stop is a clean exit (status 0), not a death by signal.
        if self.should_exit or self._drain_timer is not None:
            if sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            return
        self.lifecycle.draining = True
        # Answers from now on close their connections, those in flight included (kit.server's
        # protocol reads this): pooled clients such as the gateway stop reusing them, so none
        # of their requests meets a connection closed under it when the drain ends.
        self.server_state.draining = True  # type: ignore[attr-defined]
        for connection in list(self.server_state.connections):
            cycle = getattr(connection, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False
        delay = self.drain_seconds if sig == signal.SIGTERM else 0.0
        log.info("shutdown requested; draining", signal=signal.Signals(sig).name, drain_seconds=delay)
        if delay <= 0:
            self.should_exit = True
            return
        self._drain_timer = threading.Timer(delay, self._finish_drain)
        self._drain_timer.daemon = True
        self._drain_timer.start()

    def _finish_drain(self) -> None:
        self.should_exit = True


# --- two ports ------------------------------------------------------------------------------


class PortSplit:
    """ASGI: operational paths on the ops port only, everything else on the API port only."""

    def __init__(self, app: ASGIApp, api_port: int, ops_port: int) -> None:
        self.app = app
        self.api_port = api_port
        self.ops_port = ops_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            server = scope.get("server")
            # Fails closed: a connection whose local port is unknown counts as the API port.
            on_ops_port = server[1] == self.ops_port if server else False
            path = scope["path"]
            operational = path in OPS_PATHS or path.rstrip("/") in OPS_PATHS
            if operational != on_ops_port:
                await _not_here(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _not_here(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    path = scope["path"]
    # The same answer as for any unknown path: nothing tells a caller the path exists elsewhere.
    access_log.info("request", method=scope["method"], path=path, status=404, duration_ms=0.0)
    await problems.problem_response(404, f"No resource at {path}.", instance=path)(scope, receive, send)


# --- bounded request heads ------------------------------------------------------------------


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration plus the request-head limits, and a protocol that keeps them."""

    def __init__(self, app: Any, *, max_header_bytes: int, max_header_count: int, **kwargs: Any) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_header_count = max_header_count
        kwargs.setdefault("http", BoundedHttpToolsProtocol if HAS_HTTPTOOLS else BoundedH11Protocol)
        super().__init__(app, h11_max_incomplete_event_size=max_header_bytes, **kwargs)
        self.head_refusals = {
            "bytes": _problem_body(f"The request line and headers exceed {max_header_bytes} bytes."),
            "count": _problem_body(f"The request has more than {max_header_count} header fields."),
        }


def _problem_body(detail: str) -> bytes:
    return bytes(problems.problem_response(431, detail, kind="headers-too-large").body)


class _HeadLimitExceeded(Exception):
    """Raised in a parser callback: stops httptools before it buffers any more of the head."""


class _Cycle(Protocol):
    """A request's response cycle, in either protocol (each has its own class)."""

    response_complete: bool


class _RefusesHeads:
    """The answer both protocols give a head past the limits: 431 problem+json, then no more
    requests on that connection. Requests that came before it on the connection (pipelined) are
    answered first, so the refusal waits for their responses.

    A protocol using it calls `_after_response` from on_response_complete and `_stop_lingering`
    from connection_lost."""

    # The uvicorn protocol's attributes this uses; both protocols type these alike.
    client: tuple[str, int] | None
    server_state: ServerState
    transport: asyncio.Transport
    flow: FlowControl
    loop: asyncio.AbstractEventLoop
    # Typed differently by the two protocols: each subclass declares them again with its own types.
    config: ServerConfig
    cycle: _Cycle | None  # None until the first request
    _refused: str | None  # which limit: "bytes" or "count"
    _answered: bool
    _linger: asyncio.TimerHandle | None

    def _init_refusal(self) -> None:
        """Each protocol's __init__ calls this: nothing refused yet on a new connection."""
        self._refused = None
        self._answered = False
        self._linger = None

    def _refuse_head(self, limit: str) -> None:
        if self._refused:
            return
        self._refused = limit
        client = self.client[0] if self.client else None
        log.warning("request head refused", limit=limit, client=client)
        self._answer_refusal()

    def _answer_refusal(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return  # _after_response comes back here
        self._answered = True
        body = self.config.head_refusals[self._refused or "bytes"]
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: ", problems.MEDIA_TYPE.encode(), b"\r\n"]
        head += [b"content-length: ", str(len(body)).encode(), b"\r\n", b"connection: close\r\n\r\n", body]
        transport = self.transport
        transport.write(b"".join(head))
        if transport.can_write_eof():
            transport.write_eof()
        self.flow.resume_reading()
        self._linger = self.loop.call_later(REFUSED_LINGER_SECONDS, transport.close)

    def _after_response(self) -> None:
        """A refusal that waited for the responses before it is answered once they are sent."""
        if self._refused and not self._answered and not self.transport.is_closing():
            self._answer_refusal()

    def _stop_lingering(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    def _close_after_answer(self) -> None:
        """Close after an answer sent while the client was still sending its request body (a 413,
        say, to a client that asked for Connection: close). Closing at once with its bytes still
        arriving would reset the connection, and the reset can destroy the answer before the
        client reads it: so the answer is ended with a FIN and what still comes is read and
        dropped, for REFUSED_LINGER_SECONDS at most, as after a 431."""
        transport = self.transport
        if self._linger is not None or transport.is_closing() or not transport.can_write_eof():
            transport.close()
            return
        self._refused = self._refused or "answered"  # from now on, data is dropped unread
        self._answered = True
        transport.write_eof()
        self.flow.resume_reading()
        self._linger = self.loop.call_later(REFUSED_LINGER_SECONDS, transport.close)


if HAS_HTTPTOOLS:

    class BoundedHttpToolsProtocol(_RefusesHeads, HttpToolsProtocol):
        """uvicorn's httptools protocol, counting the head as it arrives.

        httptools hands a header to Python only once it is complete, having buffered it itself,
        so counting there would come too late: bytes are counted before they reach the parser,
        and no more than the room left in the head is fed to it while a head is being read.
        The parser callbacks count exactly too, for a head that begins inside the same chunk as
        the end of the previous request (pipelining), and count the fields. After the head, a
        chunked body's trailers are buffered the same way: whole reads that yield no body bytes
        (framing, trailers) are counted against the same limit.
        """

        config: ServerConfig  # uvicorn hands the protocol the config it was given: ours
        cycle: HttpToolsCycle

        def __init__(self, config: ServerConfig, *args: Any, **kwargs: Any) -> None:
            super().__init__(config, *args, **kwargs)
            self._in_head = True  # the next bytes belong to a request head
            self._head_fed = 0  # bytes fed to the parser since this head began
            self._head_size = 0  # URL and header lines seen by the callbacks
            self._fields = 0
            self._exceeded: str | None = None
            self._body_seen = False  # the last read gave the body something
            self._not_body = 0  # bytes of consecutive reads in the body that were no body
            self._idle_since: float | None = None  # when the last answer left a keep-alive idle
            self._init_refusal()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # lingering after a 431: dropped unread
            self._idle_since = None  # not idle: the keep-alive timeout starts again after the answer
            rest = memoryview(data)
            while rest:
                if self._in_head:
                    room = self.config.max_header_bytes - self._head_fed
                    if room <= 0:
                        self._refuse_head("bytes")
                        return
                    piece, rest = rest[:room], rest[room:]
                    self._head_fed += len(piece)
                else:
                    piece, rest = rest, rest[len(rest) :]
                    self._body_seen = False
                in_body = not self._in_head
                try:
                    self.parser.feed_data(piece)
                except httptools.HttpParserError:
                    if self._exceeded and self._in_head:
                        self._refuse_head(self._exceeded)
                        return
                    if self._exceeded:
                        # Trailers (they count too) past the limits, after a body the app is still
                        # reading: no answer fits there, so the connection ends and the app sees
                        # the client gone.
                        log.warning("request trailers refused", limit=self._exceeded)
                        self.transport.close()
                        return
                    msg = "Invalid HTTP request received."
                    self.logger.warning(msg)
                    self.send_400_response(msg)
                    return
                except httptools.HttpParserUpgrade:
                    if self._should_upgrade():
                        self.handle_websocket_upgrade()
                    else:
                        self._unsupported_upgrade_warning()
                    return
                if in_body and not self._in_head and not self._body_seen:
                    self._not_body += len(piece)
                    if self._not_body > self.config.max_header_bytes:
                        log.warning("request trailers refused", limit="bytes")
                        self.transport.close()
                        return

        # The parser callbacks below run for every request of every service. Each is uvicorn's
        # own (httptools_impl, the version the lock pins) with the head counting merged in,
        # rather than a call up to it: one Python call per callback instead of two.

        def on_message_begin(self) -> None:
            self._head_size = 0
            self._fields = 0
            self.url = b""
            self.expect_100_continue = False
            self.headers = []
            self.scope = cast(
                "HTTPScope",
                {
                    "type": "http",
                    "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
                    "http_version": "1.1",
                    "server": self.server,
                    "client": self.client,
                    "scheme": self.scheme,
                    "root_path": self.root_path,
                    "headers": self.headers,
                    "state": self.app_state.copy(),
                },
            )

        def on_url(self, url: bytes) -> None:
            self._head_size += len(url)
            if self._head_size > self.config.max_header_bytes:
                self._exceeded = "bytes"
                raise _HeadLimitExceeded
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self._fields += 1
            if self._fields > self.config.max_header_count:
                self._exceeded = "count"
                raise _HeadLimitExceeded
            self._head_size += len(name) + len(value) + 4  # ": " and CRLF
            if self._head_size > self.config.max_header_bytes:
                self._exceeded = "bytes"
                raise _HeadLimitExceeded
            name = name.lower()
            if name == b"expect" and value.lower() == b"100-continue":
                self.expect_100_continue = True
            self.headers.append((name, value))

        def on_headers_complete(self) -> None:
            self._in_head = False
            parser = self.parser
            http_version = parser.get_http_version()
            scope = self.scope
            scope["method"] = parser.get_method().decode("ascii")
            if http_version != "1.1":
                scope["http_version"] = http_version
            if parser.should_upgrade() and self._should_upgrade():
                return
            parsed_url = httptools.parse_url(self.url)
            raw_path = parsed_url.path
            path = raw_path.decode("ascii")
            if "%" in path:
                path = urllib.parse.unquote(path)
            scope["path"] = self.root_path + path
            scope["raw_path"] = self.root_path.encode("ascii") + raw_path
            scope["query_string"] = parsed_url.query or b""
            if self.limit_concurrency is not None and (
                len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
            ):
                app = service_unavailable
                self.logger.warning("Exceeded concurrency limit.")
            else:
                app = self.app
            existing = self.cycle
            self.cycle = _OneWriteCycle(
                scope=scope,
                transport=self.transport,
                flow=self.flow,
                logger=self.logger,
                access_logger=self.access_logger,
                access_log=self.access_log,
                default_headers=self.server_state.default_headers,
                message_event=asyncio.Event(),
                expect_100_continue=self.expect_100_continue,
                # While draining, every answer closes its connection (`connection: close`): the
                # client opens its next one elsewhere instead of reusing one this side will close.
                keep_alive=http_version != "1.0"
                and parser.should_keep_alive()
                and not getattr(self.server_state, "draining", False),
                on_response=self.on_response_complete,
            )
            self.cycle.protocol = self
            if existing is None or existing.response_complete:
                self._start_asgi_task(self.cycle, app)
            else:
                # Pipelined requests wait for the responses before them.
                self.flow.pause_reading()
                self.pipeline.appendleft((self.cycle, app))

        def on_body(self, body: bytes) -> None:
            self._body_seen = True
            self._not_body = 0
            cycle = self.cycle
            if cycle.response_complete or (self.parser.should_upgrade() and self._should_upgrade()):
                return
            cycle.body += body
            if len(cycle.body) > HIGH_WATER_LIMIT:
                self.flow.pause_reading()
            cycle.message_event.set()

        def on_message_complete(self) -> None:
            cycle = self.cycle
            if not cycle.response_complete and not (self.parser.should_upgrade() and self._should_upgrade()):
                cycle.more_body = False
                cycle.message_event.set()
            self._in_head = True
            self._head_fed = 0
            self._not_body = 0

        def on_response_complete(self) -> None:
            # uvicorn's, except for the keep-alive timeout: uvicorn arms a timer after every
            # response and cancels it when the next request arrives, two timer operations per
            # request. Here a connection notes when it fell idle, and one timer per connection,
            # re-armed only when it fires early, closes it once idle for the whole timeout.
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self.flow.resume_reading()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self._idle_since = self.loop.time()
                if self.timeout_keep_alive_task is None:
                    self.timeout_keep_alive_task = self.loop.call_later(
                        self.timeout_keep_alive, self._keep_alive_expired
                    )
            self._after_response()

        def _keep_alive_expired(self) -> None:
            self.timeout_keep_alive_task = None
            idle_since = self._idle_since
            if idle_since is None:
                return  # busy again: the next response re-arms the timer
            remaining = idle_since + self.timeout_keep_alive - self.loop.time()
            if remaining > 0:
                self.timeout_keep_alive_task = self.loop.call_later(remaining, self._keep_alive_expired)
            else:
                self.timeout_keep_alive_handler()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_lingering()
            super().connection_lost(exc)


if HAS_HTTPTOOLS:

    class _OneWriteCycle(HttpToolsCycle):
        """uvicorn's response cycle, writing a response's head together with its body.

        The head is held until the first body bytes and written with them, so a short answer
        leaves in one write (one system call, one TCP segment) instead of two; a head whose body
        does not follow at once (a stream waiting for its first event) is written at the end of
        the event loop's turn, and a HEAD answer's at once. The head's names and values are
        validated as uvicorn does, in one scan of each instead of one per header. A response
        completed while the client is still sending its request body, on a connection that
        closes, closes with a linger (BoundedHttpToolsProtocol._close_after_answer).
        """

        protocol: BoundedHttpToolsProtocol
        _held: bytes | None = None

        async def send(self, message: Any) -> None:
            if self.flow.write_paused and not self.disconnected:
                await self.flow.drain()
            if self.disconnected:
                return
            if not self.response_started:
                if message["type"] != "http.response.start":
                    raise RuntimeError(
                        f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                    )
                self._start(message)
            elif not self.response_complete:
                if message["type"] != "http.response.body":
                    raise RuntimeError(
                        f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
                    )
                self._body(message.get("body", b""), message.get("more_body", False))
            else:
                raise RuntimeError(
                    f"Unexpected ASGI message '{message['type']}' sent, after response already completed."
                )

        def _start(self, message: Any) -> None:
            self.response_started = True
            self.waiting_for_100_continue = False
            status_code = message["status"]
            headers = self.default_headers + list(message.get("headers", []))
            if self.access_log:
                self.access_logger.info(
                    '%s - "%s %s HTTP/%s" %d',
                    get_client_addr(self.scope),
                    self.scope["method"],
                    get_path_with_query_string(self.scope),
                    self.scope["http_version"],
                    status_code,
                )
            if HEADER_RE.search(b"".join([name for name, _ in headers])):
                raise RuntimeError("Invalid HTTP header name.")
            # A tab is allowed in a value, so joining on it cannot hide or invent a bad byte.
            if HEADER_VALUE_RE.search(b"\t".join([value for _, value in headers])):
                raise RuntimeError("Invalid HTTP header value.")
            content = [STATUS_LINE[status_code]]
            has_connection_close = False
            for name, value in headers:
                name = name.lower()
                if name == b"content-length" and self.chunked_encoding is None:
                    self.expected_content_length = int(value.decode())
                    self.chunked_encoding = False
                elif name == b"transfer-encoding" and value.lower() == b"chunked":
                    self.expected_content_length = 0
                    self.chunked_encoding = True
                elif name == b"connection":
                    if b"close" in [token.lower().strip() for token in value.split(b",")]:
                        self.keep_alive = False
                        has_connection_close = True
                content += (name, b": ", value, b"\r\n")
            if not self.keep_alive and not has_connection_close:
                content.append(b"connection: close\r\n")
            if (
                self.chunked_encoding is None
                and self.scope["method"] != "HEAD"
                and status_code not in (204, 304)
            ):
                self.chunked_encoding = True
                content.append(b"transfer-encoding: chunked\r\n")
            content.append(b"\r\n")
            if self.scope["method"] == "HEAD":
                self.transport.write(b"".join(content))  # no body write will carry it
            else:
                self._held = b"".join(content)
                self.protocol.loop.call_soon(self._flush)

        def _flush(self) -> None:
            held = self._held
            if held is not None:
                self._held = None
                if not self.transport.is_closing():
                    self.transport.write(held)

        def _write(self, data: bytes) -> None:
            held = self._held
            if held is None:
                if data:
                    self.transport.write(data)
            elif len(data) < 65536:
                self._held = None
                self.transport.write(held + data)
            else:
                self._held = None
                self.transport.writelines((held, data))

        def _body(self, body: bytes, more_body: bool) -> None:
            if self.scope["method"] == "HEAD":
                self.expected_content_length = 0
            elif self.chunked_encoding:
                chunk = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
                self._write(chunk if more_body else chunk + b"0\r\n\r\n")
            else:
                if len(body) > self.expected_content_length:
                    raise RuntimeError("Response content longer than Content-Length")
                self.expected_content_length -= len(body)
                self._write(body)
            if not more_body:
                if self.expected_content_length != 0:
                    raise RuntimeError("Response content shorter than Content-Length")
                self._flush()
                self.response_complete = True
                self.message_event.set()
                if not self.keep_alive:
                    if self.more_body:
                        self.protocol._close_after_answer()  # answered before the request body was all read
                    else:
                        self.transport.close()
                self.on_response()


class _CountingConnection(h11.Connection):
    """h11 bounds a head's bytes itself (max_incomplete_event_size, answered 431 here rather than
    uvicorn's 400); this adds the field count and remembers which limit a refusal was for."""

    def __init__(self, max_header_bytes: int, max_header_count: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.max_header_count = max_header_count
        self.exceeded: str | None = None

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                self.exceeded = "bytes"
            raise
        if isinstance(event, h11.Request) and len(event.headers) > self.max_header_count:
            self.exceeded = "count"
            raise h11.RemoteProtocolError("too many header fields", error_status_hint=431)
        return event


class BoundedH11Protocol(_RefusesHeads, H11Protocol):
    """uvicorn's h11 protocol with the same limits and the same 431 answer."""

    config: ServerConfig  # uvicorn hands the protocol the config it was given: ours
    cycle: H11Cycle
    conn: _CountingConnection

    def __init__(self, config: ServerConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.conn = _CountingConnection(config.max_header_bytes, config.max_header_count)
        self._init_refusal()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a 431: dropped unread
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if self.conn.exceeded:
            self._refuse_head(self.conn.exceeded)
            return
        super().send_400_response(msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._after_response()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_lingering()
        super().connection_lost(exc)


# --- serving --------------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """A bound socket (uvicorn listens on it), or exit as uvicorn does when a port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        log.error("cannot listen", host=host, port=port, error=str(exc))
        sys.exit(STARTUP_FAILURE)
    return sock


def server_config(app: Any, settings: Settings, **kwargs: Any) -> ServerConfig:
    trusted = settings.trusted_proxies
    return ServerConfig(
        app,
        log_config=None,
        access_log=False,
        # X-Forwarded-For / -Proto are believed only from the proxies named in FORWARDED_ALLOW_IPS
        # (none by default). An explicit list: uvicorn would otherwise read the variable itself
        # and fall back to trusting 127.0.0.1.
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        server_header=False,
        max_header_bytes=settings.max_header_bytes,
        max_header_count=settings.max_header_count,
        **kwargs,
    )


def serve(app: FastAPI, settings: Settings, host: str, port: int, ops_port: int) -> None:
    sockets = [listen(host, port), listen(host, ops_port)]
    api_port, ops_port = (s.getsockname()[1] for s in sockets)
    config = server_config(PortSplit(app, api_port, ops_port), settings, host=host, port=api_port)
    server = DrainingServer(config, app, settings.drain_seconds)
    log.info("listening", api=f"{host}:{api_port}", ops=f"{host}:{ops_port}")
    server.run(sockets=sockets)
