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

On SIGTERM: readiness answers 503 at once; the listeners keep serving for the drain delay
(so the orchestrator removes the pod from its endpoints before connections are refused);
then uvicorn stops accepting, lets in-flight requests finish within the shutdown timeout,
runs the app's shutdown, and the process exits 0. SIGINT (Ctrl-C) skips the drain delay;
a second one forces the exit.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any, Protocol

import h11
import structlog
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.h11_impl import RequestResponseCycle as H11Cycle
from uvicorn.server import ServerState

from prognetwork.kit import problems
from prognetwork.kit.app import OPS_PATHS
from prognetwork.kit.settings import Settings

try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle as HttpToolsCycle
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


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Any, drain_seconds: float) -> None:
        super().__init__(config)
        self.lifecycle = app.state.lifecycle
        self.drain_seconds = drain_seconds
        self._drain_timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Unlike uvicorn's own handler, the signal is not re-raised after shutdown: a
        # requested stop is a clean exit (status 0), not a death by signal.
        if self.should_exit or self._drain_timer is not None:
            if sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            return
        self.lifecycle.draining = True
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
            self._init_refusal()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # lingering after a 431: dropped unread
            self._unset_keepalive_if_required()
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

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_size = 0
            self._fields = 0

        def on_url(self, url: bytes) -> None:
            self._grow(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._fields += 1
            if self._fields > self.config.max_header_count:
                self._exceeded = "count"
                raise _HeadLimitExceeded
            self._grow(len(name) + len(value) + 4)  # ": " and CRLF
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self._body_seen = True
            self._not_body = 0
            super().on_body(body)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True
            self._head_fed = 0
            self._not_body = 0

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._after_response()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_lingering()
            super().connection_lost(exc)

        def _grow(self, size: int) -> None:
            self._head_size += size
            if self._head_size > self.config.max_header_bytes:
                self._exceeded = "bytes"
                raise _HeadLimitExceeded


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
        timeout_keep_alive=30,
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
