"""The Events page's live tail: the event stream relayed to the browser, with the operator's token.

The browser's EventSource connects here (its tokens are server-side); the console opens the
gateway's `/api/v1/events/stream` as the signed-in operator and forwards each frame as it
arrives — no buffering beyond the frame being read — and closes the upstream connection as soon
as the browser goes. Frames are rewritten in one way only: an event's `event:` line is dropped, so
the browser receives every event as a plain message (its type is in its data) and needs no
listener per type; the stream's own notices (overflow, signed-out, token-expired) keep theirs.
When the upstream stream ends (an expired token ends it), so does the relay: the browser
reconnects with Last-Event-ID, and the console refreshes the token on the way.
"""

from __future__ import annotations

import asyncio

import aiohttp
import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = structlog.get_logger("prognetwork.admin.stream")
NOTICES = frozenset({b"overflow", b"signed-out", b"token-expired"})
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-store"),
    (b"x-accel-buffering", b"no"),
]


class Frames:
    """Upstream SSE lines in, the browser's frames out."""

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []

    def feed(self, line: bytes) -> bytes:
        line = line.rstrip(b"\r\n")
        if line.startswith(b":"):
            return line + b"\n\n"  # a comment (keep-alive): forwarded at once, keeps proxies open
        if line:
            name, _, value = line.partition(b":")
            self.fields.append((name, value[1:] if value.startswith(b" ") else value))
            return b""
        fields, self.fields = self.fields, []
        event = next((value for name, value in reversed(fields) if name == b"event"), None)
        keep = (b"id", b"event", b"data", b"retry") if event in NOTICES else (b"id", b"data", b"retry")
        out = [name + b": " + value + b"\n" for name, value in fields if name in keep]
        if not any(name == b"data" for name, _ in fields):
            out = [line for line in out if line.startswith(b"retry:")]  # nothing to dispatch
        return b"".join(out) + b"\n" if out else b""


class Relays:
    """The open relays of this process, so a shutdown can end them (they never end by themselves)."""

    def __init__(self) -> None:
        self.open: set[asyncio.Event] = set()

    def close_all(self) -> None:
        for stop in self.open:
            stop.set()


class RelayResponse(Response):
    """A raw ASGI response over an open upstream SSE response, which it closes when done."""

    def __init__(self, upstream: aiohttp.ClientResponse, relays: Relays) -> None:
        self.status_code = 200
        self.background = None
        self.upstream = upstream
        self.relays = relays

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stop = asyncio.Event()
        self.relays.open.add(stop)

        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            frames = Frames()
            async for line in self.upstream.content:
                out = frames.feed(line)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        async def browser_gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        tasks = [
            asyncio.create_task(pump()),
            asyncio.create_task(browser_gone()),
            asyncio.create_task(stop.wait()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            self.relays.open.discard(stop)
            self.upstream.close()  # the gateway sees the disconnect, and so does the streaming service
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, aiohttp.ClientError | OSError):
                log.error("event relay failed", error=type(result).__name__, detail=str(result))
