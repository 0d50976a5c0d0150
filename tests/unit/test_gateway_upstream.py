"""The gateway's upstream client over real sockets: an upstream that answers exactly the bytes each
test scripts — keep-alive and its end, chunked and length-less bodies, HEAD, 1xx, timeouts,
disconnects, garbage, the pool's idle expiry and its limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from prognetwork.gateway.upstream import (
    BadResponse,
    ConnectFailed,
    Disconnected,
    Origin,
    Timeouts,
    UpstreamClient,
)
from tests.helpers.polling import eventually_async

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@dataclass
class Request:
    head: bytes
    body: bytes


@dataclass
class Scripted:
    """A TCP upstream whose handler reads requests and writes raw bytes back."""

    port: int = 0
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    closed_by_peer: int = 0
    requests: list[Request] = field(default_factory=list)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return Request(head, await reader.readexactly(length) if length else b"")


Handler = Callable[[Scripted, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[Scripted]:
    state = Scripted()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        state.open_now += 1
        state.most_open = max(state.most_open, state.open_now)
        try:
            await handler(state, reader, writer)
            if await reader.read(1) == b"":
                state.closed_by_peer += 1
        except ConnectionError:
            state.closed_by_peer += 1
        finally:
            state.open_now -= 1
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()


def answering(*answers: bytes, close: bool = False) -> Handler:
    """Answers each request on a connection with the next of `answers`; then waits (or closes)."""

    async def handler(state: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            request = await read_request(reader)
            if request is None:
                return
            state.requests.append(request)
            writer.write(answer)
            await writer.drain()
        if close:
            writer.close()
            await writer.wait_closed()
            return
        while (request := await read_request(reader)) is not None:  # keep answering OK
            state.requests.append(request)
            writer.write(OK)
            await writer.drain()

    return handler


@asynccontextmanager
async def client(**kwargs) -> AsyncIterator[UpstreamClient]:
    upstreams = UpstreamClient(**kwargs)
    try:
        yield upstreams
    finally:
        await upstreams.close()


async def get(upstreams: UpstreamClient, origin: Origin, *, method: str = "GET", body: bytes = b"",
              read_timeout: float | None = 5.0, head_timeout: float | None = None, fresh: bool = False):
    response = await upstreams.request(origin, method, b"/v1/thing?x=1", [(b"accept", b"*/*")], body,
                                       Timeouts(2.0, read_timeout, head_timeout), fresh=fresh)
    try:
        return response.status, await response.read()
    finally:
        response.release()


def origin_of(state: Scripted) -> Origin:
    return Origin("http", "127.0.0.1", state.port)


async def test_a_request_is_written_once_with_host_and_length_and_keep_alive_reuses_the_connection():
    async with scripted(answering(OK, OK)) as upstream, client() as upstreams:
        origin = origin_of(upstream)
        assert await get(upstreams, origin, method="POST", body=b'{"a":1}') == (200, b"{}")
        assert await get(upstreams, origin) == (200, b"{}")
        assert upstream.connections == 1 and upstreams.idle_count(origin) == 1
        post, plain = upstream.requests
        assert post.head.startswith(b"POST /v1/thing?x=1 HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n" % upstream.port)
        assert b"accept: */*\r\n" in post.head and b"content-length: 7\r\n" in post.head
        assert post.body == b'{"a":1}'
        assert b"content-length" not in plain.head  # a GET without a body says nothing of one


async def test_a_default_port_is_left_out_of_the_host_header():
    assert Origin("https", "users.internal", 443).host_header == b"users.internal"
    assert Origin("http", "[::1]", 8001).host_header == b"[::1]:8001"
    assert Origin("http", "[::1]", 8001).address == "::1"


async def test_connection_close_and_http_1_0_answers_are_not_pooled():
    closing = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi"
    old = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nho"
    for answer, body in ((closing, b"hi"), (old, b"ho")):
        async with scripted(answering(answer)) as upstream, client() as upstreams:
            origin = origin_of(upstream)
            assert await get(upstreams, origin) == (200, body)
            assert upstreams.idle_count(origin) == 0
            assert await get(upstreams, origin) == (200, body)  # on a connection of its own
            assert upstream.connections == 2


async def test_chunked_bodies_are_decoded_and_a_body_without_length_ends_at_close():
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    until_close = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it"
    async with scripted(answering(chunked)) as upstream, client() as upstreams:
        assert await get(upstreams, origin_of(upstream)) == (200, b"abcdefg")
        assert upstreams.idle_count(origin_of(upstream)) == 1
    async with scripted(answering(until_close, close=True)) as upstream, client() as upstreams:
        assert await get(upstreams, origin_of(upstream)) == (200, b"all of it")
        assert upstreams.idle_count(origin_of(upstream)) == 0


async def test_a_head_answer_has_no_body_and_its_connection_is_not_reused():
    async def head_or_get(state, reader, writer):
        while (request := await read_request(reader)) is not None:
            head = request.head.startswith(b"HEAD ")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n" if head else OK)

    async with scripted(head_or_get) as upstream, client() as upstreams:
        origin = origin_of(upstream)
        assert await get(upstreams, origin, method="HEAD") == (200, b"")
        assert await get(upstreams, origin) == (200, b"{}")
        assert upstream.connections == 2


async def test_informational_answers_are_skipped():
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK
    async with scripted(answering(answer)) as upstream, client() as upstreams:
        assert await get(upstreams, origin_of(upstream)) == (200, b"{}")
        assert await get(upstreams, origin_of(upstream)) == (200, b"{}")


async def test_the_read_timeout_counts_silence_not_the_whole_answer():
    async def dripping(state, reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        for byte in b"12345":  # 5 x 0.1 s in all, never 0.3 s of silence
            await asyncio.sleep(0.1)  # the upstream's own pace, not a test wait
            writer.write(bytes([byte]))
        await read_request(reader)  # and the next request on this connection gets no answer

    async with scripted(dripping) as upstream, client() as upstreams:
        assert await get(upstreams, origin_of(upstream), read_timeout=0.3) == (200, b"12345")
        with pytest.raises(TimeoutError):
            await get(upstreams, origin_of(upstream), read_timeout=0.3)
        assert upstreams.idle_count(origin_of(upstream)) == 0


async def test_a_stream_must_start_in_time_and_may_then_take_as_long_as_it_needs():
    async def slow_stream(state, reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for n in range(3):
            await asyncio.sleep(0.2)  # the stream's own pace (longer than the head timeout), not a test wait
            writer.write(b"9\r\ndata: %d\n\n\r\n" % n)
        writer.write(b"0\r\n\r\n")

    async def silent(state, reader, writer):
        await read_request(reader)
        await reader.read()

    async with scripted(slow_stream) as upstream, client() as upstreams:
        response = await upstreams.request(origin_of(upstream), "GET", b"/stream", [], b"", Timeouts(2.0, head=0.3))
        try:
            assert [chunk async for chunk in response.chunks()] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
        finally:
            response.release()
    async with scripted(silent) as upstream, client() as upstreams:
        with pytest.raises(TimeoutError):
            await get(upstreams, origin_of(upstream), read_timeout=None, head_timeout=0.2)


async def test_failures_say_whether_anything_was_sent_and_on_which_connection():
    async with scripted(answering(OK, close=True)) as upstream, client() as upstreams:
        origin = origin_of(upstream)
        assert await get(upstreams, origin) == (200, b"{}")
        await eventually_async(_true_when(lambda: upstream.open_now == 0), what="the upstream to close")
        with pytest.raises(Disconnected) as pooled:
            await get(upstreams, origin)  # on the pooled connection the upstream has closed
        assert pooled.value.pooled is True
    async with scripted(answering(close=True)) as upstream, client() as upstreams:
        with pytest.raises(Disconnected) as fresh:
            await get(upstreams, origin_of(upstream))  # read, then closed without an answer
        assert fresh.value.pooled is False and upstream.requests == []
    with pytest.raises(ConnectFailed):
        async with client() as upstreams:
            await get(upstreams, Origin("http", "127.0.0.1", upstream.port))  # nothing listens now


async def test_garbage_and_a_body_cut_short_are_bad_responses():
    cut = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345"
    for answer in (b"SSH-2.0-OpenSSH_9.2\r\n", cut):
        async with scripted(answering(answer, close=True)) as upstream, client() as upstreams:
            with pytest.raises(BadResponse):
                await get(upstreams, origin_of(upstream))
            assert upstreams.idle_count(origin_of(upstream)) == 0


async def test_an_answer_followed_by_more_than_was_asked_for_is_kept_but_its_connection_is_not():
    async with scripted(answering(OK + OK)) as upstream, client() as upstreams:
        assert await get(upstreams, origin_of(upstream)) == (200, b"{}")
        assert upstreams.idle_count(origin_of(upstream)) == 0


async def test_idle_connections_are_closed_once_keep_alive_has_passed():
    async with scripted(answering(OK)) as upstream, client(keepalive_seconds=0.3) as upstreams:
        assert await get(upstreams, origin_of(upstream)) == (200, b"{}")
        assert upstreams.idle_count(origin_of(upstream)) == 1
        await eventually_async(_true_when(lambda: upstream.closed_by_peer == 1), timeout=5,
                               what="the gateway to close its idle connection")
        assert upstreams.idle_count(origin_of(upstream)) == 0


async def test_no_more_than_the_limit_is_in_flight_and_a_cancelled_request_gives_its_place_back():
    release = asyncio.Event()

    async def held(state, reader, writer):
        while await read_request(reader) is not None:
            await release.wait()
            writer.write(OK)
            await writer.drain()

    async with scripted(held) as upstream, client(limit=2) as upstreams:
        origin = origin_of(upstream)
        first = [asyncio.create_task(get(upstreams, origin)) for _ in range(3)]
        await eventually_async(_true_when(lambda: upstream.connections == 2), what="two requests in flight")
        abandoned = first.pop(0)
        abandoned.cancel()  # its place goes to the third
        release.set()
        assert [await task for task in first] == [(200, b"{}")] * 2
        assert upstream.most_open <= 3 and upstreams.slots._value == 2


async def test_a_large_stream_is_relayed_whole_while_the_socket_is_paused_and_resumed():
    size = 4 * 1024 * 1024
    big = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"x" * size
    async with scripted(answering(big)) as upstream, client() as upstreams:
        response = await upstreams.request(origin_of(upstream), "GET", b"/", [], b"", Timeouts(2.0, read=5.0))
        chunks = response.chunks()
        received = len(await anext(chunks))  # a reader that then falls behind
        await eventually_async(_true_when(lambda: response._connection.paused), what="the socket to pause")
        async for chunk in chunks:
            received += len(chunk)
        response.release()
        assert received == size and upstreams.idle_count(origin_of(upstream)) == 1


async def test_a_large_buffered_body_is_read_whole_and_its_connection_pooled_still_reading():
    size = 1024 * 1024
    big = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"y" * size
    async with scripted(answering(big)) as upstream, client() as upstreams:
        origin = origin_of(upstream)
        status, body = await get(upstreams, origin, read_timeout=1.0)
        assert (status, len(body)) == (200, size)
        assert upstreams.idle_count(origin) == 1
        assert await get(upstreams, origin, read_timeout=1.0) == (200, b"{}")  # the same connection reads on
        assert upstream.connections == 1


async def test_a_slow_reader_of_a_stream_does_not_count_as_upstream_silence():
    size = 1024 * 1024
    chunked = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
               + b"".join(b"%x\r\n%s\r\n" % (16384, b"z" * 16384) for _ in range(size // 16384)) + b"0\r\n\r\n")
    async with scripted(answering(chunked)) as upstream, client() as upstreams:
        response = await upstreams.request(origin_of(upstream), "GET", b"/", [], b"", Timeouts(2.0, read=0.3))
        received = 0
        async for chunk in response.chunks():
            received += len(chunk)
            await asyncio.sleep(0.05)  # the reader is the slow side: longer in all than the read timeout
        response.release()
        assert received == size


async def test_an_unasked_protocol_switch_is_a_bad_response():
    switch = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    async with scripted(answering(switch)) as upstream, client() as upstreams:
        with pytest.raises(BadResponse):
            await get(upstreams, origin_of(upstream))


async def test_waiting_for_a_free_slot_counts_against_the_timeout():
    release = asyncio.Event()

    async def held(state, reader, writer):
        await read_request(reader)
        await release.wait()
        writer.write(OK)

    async with scripted(held) as upstream, client(limit=1) as upstreams:
        first = asyncio.create_task(get(upstreams, origin_of(upstream), read_timeout=5.0))
        await eventually_async(_true_when(lambda: upstream.connections == 1), what="the first request in flight")
        with pytest.raises(TimeoutError):
            await get(upstreams, origin_of(upstream), read_timeout=0.2)
        release.set()
        assert await first == (200, b"{}")


def _true_when(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check
