"""One Server-Sent Events response: replay from the log, then live frames from the hub.

The subscriber is registered with the hub *before* the history is read, so live events
start queueing while the replay runs; the queue is then drained skipping every sequence
the replay already sent. Nothing falls between the two, and nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence

from fastapi.responses import Response
from sqlalchemy.ext.asyncio import async_sessionmaker
from starlette.types import Receive, Scope, Send

from prognetwork.kit.app import on_disconnect
from prognetwork.kit.db import ReadSession
from prognetwork.kit.revocation import Revocations
from prognetwork.streaming import queries
from prognetwork.streaming.hub import DELIVERED, DELIVERY_LATENCY, HEARTBEAT, Frame, Hub, Subscriber
from prognetwork.streaming.visibility import Viewer

RETRY = b"retry: 3000\n\n"
REPLAY_PAGE = 500
# A subscriber that was cut off gets this long to read its last frames and the notice.
CUT_OFF_GRACE_SECONDS = 30.0
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def ended_notice(reason: str, detail: str) -> bytes:
    """The last frame of a stream whose access token stopped being valid: the client must not just
    reconnect with the same token (it would get 401), but refresh or sign in again."""
    return b"event: %s\ndata: %s\n\n" % (
        reason.encode(),
        json.dumps({"reason": reason, "detail": detail}).encode(),
    )


SIGNED_OUT = ended_notice("signed-out", "This session was signed out; sign in again to keep streaming.")
TOKEN_EXPIRED = ended_notice(
    "token-expired", "The access token expired; refresh it and reconnect with Last-Event-ID."
)


def overflow_notice(last: int) -> bytes:
    data = {
        "reason": "too far behind",
        "last_event_id": last,
        "detail": f"This stream fell too far behind and was closed; reconnect with Last-Event-ID: {last}.",
    }
    return b"event: overflow\ndata: %s\n\n" % json.dumps(data).encode()


class EventStream(Response):
    """A raw ASGI response, so each write is one `send` with nothing between it and the socket."""

    media_type = "text/event-stream"

    def __init__(
        self,
        hub: Hub,
        readers: async_sessionmaker[ReadSession],
        revocations: Revocations,
        viewer: Viewer,
        types: frozenset[str] | None,
        last_event_id: int | None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.hub = hub
        self.readers = readers  # a session per replay page: none is held while the client reads
        self.revocations = revocations
        self.viewer = viewer
        self.types = types
        self.last_event_id = last_event_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self.hub.subscribe(self.viewer, self.types, self.last_event_id or 0)
        watcher = asyncio.create_task(on_disconnect(receive, sub.close))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            await send({"type": "http.response.body", "body": RETRY, "more_body": True})
            last: int | None = 0
            if self.last_event_id is not None:
                last = await self._replay(sub, send, self.last_event_id)
            if last is not None:
                await self._live(sub, send, last)
            await send({"type": "http.response.body", "body": b""})
        except (OSError, _Abandoned):
            pass  # the client is gone, or stopped reading: the server closes the connection
        finally:
            watcher.cancel()
            self.hub.unsubscribe(sub)

    async def _replay(self, sub: Subscriber, send: Send, last: int) -> int | None:
        """Send the history after `last`; the last sequence sent, or None if cut off meanwhile."""
        while not sub.closed:
            async with self.readers() as db:
                rows = await queries.visible_events(db, self.viewer, self.types, last, REPLAY_PAGE)
            frames = [Frame.of(row) for row in rows]
            if frames:
                await _write(send, [f.raw for f in frames], frames)
                last = frames[-1].seq
            if sub.overflowed:
                await _write_final(send, [overflow_notice(last)])
                return None
            if len(frames) < REPLAY_PAGE:
                break
        return last

    async def _live(self, sub: Subscriber, send: Send, last: int) -> None:
        while True:
            frames = await sub.take()
            fresh = [f for f in frames if f.seq > last] if frames and frames[0].seq <= last else frames
            chunks = [f.raw for f in fresh]
            if fresh:
                last = fresh[-1].seq
            if sub.beat:
                sub.beat = False
                # A stream lives no longer than its token: on every heartbeat, check it still holds.
                ended = await self._token_ended()
                if ended is not None:
                    await _write_final(send, [*chunks, ended], fresh)
                    return
                chunks.append(HEARTBEAT)
            if sub.overflowed:
                chunks.append(overflow_notice(last))
                await _write_final(send, chunks, fresh)
                return
            if chunks:
                await _write(send, chunks, fresh)
            if sub.closed:
                return

    async def _token_ended(self) -> bytes | None:
        if time.time() >= self.viewer.expires_at:
            return TOKEN_EXPIRED
        # Unknown (Redis down) keeps the stream: reads fail open, as everywhere (kit.revocation).
        if await self.revocations.is_revoked(self.viewer.session_id):
            return SIGNED_OUT
        return None


async def _write(send: Send, chunks: list[bytes], frames: list[Frame]) -> None:
    await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})
    if frames:
        now = time.time()
        observe = DELIVERY_LATENCY.observe
        for frame in frames:
            observe(now - frame.at)
        DELIVERED.inc(len(frames))


class _Abandoned(Exception):
    """A cut-off subscriber that did not read its last frames in time."""


async def _write_final(send: Send, chunks: list[bytes], frames: Sequence[Frame] = ()) -> None:
    try:
        await asyncio.wait_for(_write(send, chunks, list(frames)), CUT_OFF_GRACE_SECONDS)
    except TimeoutError:
        raise _Abandoned from None
