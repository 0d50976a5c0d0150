"""The gateway's client for its upstreams: pooled HTTP/1.1 keep-alive connections, parsed by httptools.

Why not aiohttp, which the rest of the platform uses: on the proxy's hot path its client was
the largest cost. In bench/gateway.py's setup (one core, an upstream that is never the
bottleneck) a bare uvicorn proxy answered 5.7k requests/s with aiohttp and 12.7k with this
client; aiohttp builds a request object, a URL, a header multidict, a response object, a
stream reader and timers for every request and writes the head and the body separately. Here a
request is one `transport.write` of bytes the proxy already built, and the answer is parsed by
the same C parser (httptools/llhttp) that reads the gateway's own requests.

What it does, and the rules it keeps:
- One pool of idle connections per origin (scheme, host, port), most recently used first; at
  most `limit` requests in flight across all origins (the rest wait their turn).
- An idle connection is reused for KEEPALIVE_SECONDS at most, then closed: less than the
  services' own keep-alive (kit.server.KEEP_ALIVE_SECONDS), so the gateway never sends on a
  connection the upstream is closing. A response that says `Connection: close`, an HTTP/1.0
  answer, a HEAD answer (the parser cannot tell it has no body) or anything unfinished closes
  its connection instead of pooling it.
- Failures are told apart because the caller's retry rule needs it (proxy.safe_to_send_again):
  `ConnectFailed` (nothing was sent), `Disconnected` (the connection closed before any answer;
  `pooled` says whether it was a reused one), `TimeoutError` (connect or read timeout),
  `BadResponse` (the upstream answered something that is not HTTP).
- Timeouts (`Timeouts`, one per route): the connection must open within `connect`; then, with
  `read`, no more than that may pass without a byte from the upstream (head or body); with
  `head` instead (streams), the head must come in time and the body may take forever.
- Bodies: `read()` buffers a whole body; `chunks()` relays it as it comes, pausing the socket
  (and the read timeout with it) while more than STREAM_BUFFER_BYTES wait to be read. Chunked
  transfer coding is undone by the parser; a body without a length ends when the upstream closes.
- Tracing: when it is on, each request is a client span and carries its `traceparent`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httptools
from opentelemetry import propagate, trace

from prognetwork.kit import tracing

# Idle pooled connections are closed after this, before the upstream's own keep-alive timeout
# (kit.server.KEEP_ALIVE_SECONDS) would close them under a request just being sent.
KEEPALIVE_SECONDS = 15.0
STREAM_BUFFER_BYTES = 256 * 1024
_HTTP11 = b" HTTP/1.1\r\n"
_CRLF = b"\r\n"
_SEPARATOR = b": "


class UpstreamError(Exception):
    """The upstream gave no usable answer."""


class ConnectFailed(UpstreamError):
    """No connection could be opened: nothing was sent."""


class Disconnected(UpstreamError):
    """The connection closed (or broke) before the response head arrived."""

    def __init__(self, message: str, *, pooled: bool) -> None:
        super().__init__(message)
        self.pooled = pooled  # the request went out on a reused keep-alive connection


class BadResponse(UpstreamError):
    """What came back is not an HTTP/1.x response, or it broke off in the middle of the body."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: parsed once, at start-up (proxy.compile_routes)."""

    scheme: str
    host: str  # as in a URL: IPv6 in brackets
    port: int
    host_header: bytes = field(init=False)

    def __post_init__(self) -> None:
        default = 443 if self.scheme == "https" else 80
        value = self.host if self.port == default else f"{self.host}:{self.port}"
        object.__setattr__(self, "host_header", value.encode("idna" if not value.isascii() else "ascii"))

    @property
    def address(self) -> str:
        return self.host[1:-1] if self.host.startswith("[") else self.host


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long a request may wait, fixed per route (proxy.compile_routes)."""

    connect: float  # for a new connection to open
    read: float | None = None  # at most this long without a byte from the upstream
    head: float | None = None  # instead of `read` (streams): for the head; the body takes its time


class Response:
    """Status and head of an upstream's answer; its body is read with read() or chunks()."""

    __slots__ = ("status", "headers", "content_length", "_connection")

    def __init__(self, connection: _Connection, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._connection = connection
        self.status = status
        self.headers = headers  # as received: names in the upstream's case
        self.content_length = connection.content_length

    async def read(self) -> bytes:
        return await self._connection.read_body()

    def chunks(self) -> AsyncIterator[bytes]:
        return self._connection.stream_body()

    def release(self) -> None:
        """Done with this response: its connection goes back to the pool if it can be reused."""
        self._connection.release()

    def close(self) -> None:
        """Abandon the response: its connection is closed (a client that left mid-stream)."""
        self._connection.abort()


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an origin, carrying one request at a time."""

    def __init__(self, client: UpstreamClient, origin: Origin) -> None:
        self.client = client
        self.origin = origin
        self.loop = client.loop
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.reused = False
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.head: asyncio.Future[Response] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.response: Response | None = None
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.body_waiter: asyncio.Future[None] | None = None
        self.complete = False
        self.failure: BaseException | None = None
        self.content_length: int | None = None
        self.until_close = False
        self.reusable = False
        self.head_only = False
        self.informational = False
        self.streaming = False  # a chunks() reader drains the body: the socket may be paused for it
        self.paused = False
        self.timeout = 0.0
        self.last_read = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.released = False

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.head is None and self.response is None:
            # Bytes nobody asked for (an idle connection): the upstream is not speaking HTTP to us.
            self.abort()
            return
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # 101 Switching Protocols: never asked for (the client's Upgrade is dropped).
            self._fail(BadResponse(f"the {self.origin.host} upstream switched protocols unasked"))
            self.abort()
        except httptools.HttpParserError as exc:
            if self.complete:
                self.reusable = False  # a whole answer, then more than was asked for: not reused
                return
            self._fail(BadResponse(f"the {self.origin.host} upstream sent a malformed response: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client.forget(self)
        if self.head is not None and not self.head.done():
            self._fail(
                Disconnected(
                    f"the connection to {self.origin.host} closed before an answer", pooled=self.reused
                )
            )
        elif self.response is not None and not self.complete:
            if self.until_close and exc is None:
                self._finish()  # a body without a length ends when the upstream closes
            else:
                self._fail(BadResponse(f"the {self.origin.host} upstream closed the connection mid-body"))
        self._stop_timer()

    def pause_writing(self) -> None:  # request bodies are bounded and written at once
        pass

    def resume_writing(self) -> None:
        pass

    # --- httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:
            raise BadResponse("a second answer to one request")  # stops the parser (data_received)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.informational = True  # 100 Continue, 103 Early Hints: the answer is still to come
            self.headers = []
            return
        length = None
        chunked = False
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        self.content_length = None if chunked else length
        self.until_close = length is None and not chunked and status not in (204, 304)
        self.response = Response(self, status, self.headers)
        head, self.head = self.head, None
        if self.timer is not None and self.timeout == 0.0:
            self._stop_timer()  # a head timeout only: the body may take as long as it takes
        if head is not None and not head.done():
            head.set_result(self.response)
        if self.head_only:
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.streaming and self.buffered > STREAM_BUFFER_BYTES and not self.paused:
            self._pause()
        self._wake()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.reusable = self.parser.should_keep_alive() and not self.head_only
        self._finish()

    # --- one exchange

    def send(self, request: bytes, timeout: float, head_timeout: float | None) -> asyncio.Future[Response]:
        self.head = self.loop.create_future()
        self.last_read = self.loop.time()
        if head_timeout is not None:
            self.timeout = 0.0
            self.timer = self.loop.call_later(head_timeout, self._head_timed_out)
        elif timeout:
            self.timeout = timeout
            self.timer = self.loop.call_later(timeout, self._check_read_timeout)
        assert self.transport is not None
        self.transport.write(request)
        return self.head

    async def read_body(self) -> bytes:
        while not self.complete:
            await self._wait_body()
        if self.failure is not None:
            raise self.failure
        if len(self.body) == 1:
            return self.body.popleft()
        body = b"".join(self.body)
        self.body.clear()
        return body

    async def stream_body(self) -> AsyncIterator[bytes]:
        self.streaming = True
        while True:
            while self.body:
                chunk = self.body.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered <= STREAM_BUFFER_BYTES // 2:
                    self._resume()
                yield chunk
            if self.complete:
                if self.failure is not None:
                    raise self.failure
                return
            if self.buffered > STREAM_BUFFER_BYTES and not self.paused:
                self._pause()  # what came before the reader did
            await self._wait_body()

    def _pause(self) -> None:
        # The reader is behind: stop reading, and stop the read timer with it (the silence is ours).
        if self.transport is None or self.closed:
            return
        self.paused = True
        self.transport.pause_reading()
        self._stop_timer()

    def _resume(self) -> None:
        self.paused = False
        if self.transport is None or self.closed:
            return
        self.transport.resume_reading()
        if self.timeout and not self.complete:
            self.last_read = self.loop.time()
            self.timer = self.loop.call_later(self.timeout, self._check_read_timeout)

    async def _wait_body(self) -> None:
        self.body_waiter = self.loop.create_future()
        try:
            await self.body_waiter
        finally:
            self.body_waiter = None

    def _wake(self) -> None:
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self) -> None:
        self.complete = True
        self._stop_timer()
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self.failure = exc
        head, self.head = self.head, None
        if head is not None and not head.done():
            head.set_exception(exc)
        self.complete = True
        self._stop_timer()
        self._wake()

    def _check_read_timeout(self) -> None:
        # One timer per exchange, re-armed for what is left rather than reset on every read.
        idle = self.loop.time() - self.last_read
        if idle < self.timeout:
            self.timer = self.loop.call_later(self.timeout - idle, self._check_read_timeout)
            return
        self.timer = None
        self._fail(TimeoutError(f"the {self.origin.host} upstream sent nothing for {self.timeout:g} s"))
        self.abort()

    def _head_timed_out(self) -> None:
        self.timer = None
        self._fail(TimeoutError(f"the {self.origin.host} upstream did not answer in time"))
        self.abort()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.client.slots.release()
        if self.complete and self.reusable and self.failure is None and not self.closed and not self.paused:
            self._reset()
            self.released = True  # _reset clears it; the slot is already given back
            self.reused = True
            self.client.park(self)
        else:
            self.abort()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.client.forget(self)
            self.transport.abort()


class UpstreamClient:
    """Pooled connections to every upstream; one per gateway process (gateway.runtime)."""

    def __init__(self, *, limit: int = 512, keepalive_seconds: float = KEEPALIVE_SECONDS) -> None:
        self.loop = asyncio.get_running_loop()
        self.slots = asyncio.Semaphore(limit)
        self.keepalive_seconds = keepalive_seconds
        self.idle: dict[Origin, deque[_Connection]] = {}
        self.open: set[_Connection] = set()
        self._tls: ssl.SSLContext | None = None
        self._sweeper = self.loop.call_later(keepalive_seconds, self._sweep)

    async def request(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: Timeouts,
        *,
        fresh: bool = False,
    ) -> Response:
        """Send one request; the response's head, its body still to be read. `target` is the
        request target as sent (path and query, already valid); `headers` must not hold Host,
        Content-Length or hop-by-hop fields. `fresh` opens a new connection instead of reusing one.
        The caller must release() or close() the response."""
        if not tracing.enabled():
            request = self._serialise(origin, method, target, headers, body)
            return await self._exchange(origin, request, method == "HEAD", timeouts, fresh)
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "server.address": origin.address,
            "server.port": origin.port,
            "url.full": f"{origin.scheme}://{origin.host}:{origin.port}{target.decode('latin-1')}",
        }
        with tracing.tracer.start_as_current_span(
            method, kind=trace.SpanKind.CLIENT, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            traced = headers + [(name.encode(), value.encode()) for name, value in carrier.items()]
            request = self._serialise(origin, method, target, traced, body)
            response = await self._exchange(origin, request, method == "HEAD", timeouts, fresh)
            span.set_attribute("http.response.status_code", response.status)
            return response

    async def _exchange(
        self, origin: Origin, request: bytes, head_only: bool, timeouts: Timeouts, fresh: bool
    ) -> Response:
        if self.slots.locked():
            # Every slot is taken: the wait for one counts against the route's timeout as well.
            async with asyncio.timeout(timeouts.head or timeouts.read):
                await self.slots.acquire()
        else:
            await self.slots.acquire()
        connection = None
        try:
            if not fresh:
                connection = self._take(origin)
            if connection is None:
                connection = await self._connect(origin, timeouts.connect)
            connection.head_only = head_only
            head = connection.send(request, timeouts.read or 0.0, timeouts.head)
            try:
                return await head
            except asyncio.CancelledError:
                connection.abort()
                raise
        except BaseException:
            self.slots.release()
            if connection is not None:
                connection.released = True
                connection.abort()
            raise

    @staticmethod
    def _serialise(
        origin: Origin, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bytes:
        parts = [method.encode("ascii"), b" ", target, _HTTP11, b"host: ", origin.host_header, _CRLF]
        for name, value in headers:
            parts += (name, _SEPARATOR, value, _CRLF)
        if body or method in ("POST", "PUT", "PATCH"):
            parts += (b"content-length: ", str(len(body)).encode(), _CRLF)
        parts.append(_CRLF)
        if body:
            parts.append(body)
        return b"".join(parts)

    def _take(self, origin: Origin) -> _Connection | None:
        idle = self.idle.get(origin)
        if not idle:
            return None
        oldest_usable = self.loop.time() - self.keepalive_seconds
        while idle:
            connection = idle.pop()  # the most recently used: the others age out
            if connection.idle_since > oldest_usable and not connection.closed:
                connection.released = False
                return connection
            connection.abort()
        return None

    async def _connect(self, origin: Origin, timeout: float) -> _Connection:
        connection = _Connection(self, origin)
        tls = self._tls_context() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                await self.loop.create_connection(
                    lambda: connection,
                    origin.address,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.address if tls else None,
                )
        except TimeoutError:
            raise TimeoutError(f"no connection to {origin.host}:{origin.port} within {timeout:g} s") from None
        except OSError as exc:
            raise ConnectFailed(
                f"cannot connect to {origin.host}:{origin.port}: {exc.strerror or exc}"
            ) from exc
        self.open.add(connection)
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def park(self, connection: _Connection) -> None:
        connection.idle_since = self.loop.time()
        idle = self.idle.get(connection.origin)
        if idle is None:
            idle = self.idle[connection.origin] = deque()
        idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        self.open.discard(connection)
        idle = self.idle.get(connection.origin)
        if idle:
            try:
                idle.remove(connection)
            except ValueError:
                pass

    def _sweep(self) -> None:
        # Close connections idle for longer than keep-alive allows; the least recently used are first.
        oldest_usable = self.loop.time() - self.keepalive_seconds
        for idle in self.idle.values():
            while idle and idle[0].idle_since <= oldest_usable:
                idle.popleft().abort()
        self._sweeper = self.loop.call_later(self.keepalive_seconds / 3, self._sweep)

    def idle_count(self, origin: Origin) -> int:
        return len(self.idle.get(origin, ()))

    async def close(self) -> None:
        self._sweeper.cancel()
        for connection in list(self.open):
            connection.abort()
        self.idle.clear()
        await asyncio.sleep(0)  # let the transports run their connection_lost
