"""What the streaming tests share (no tests here): tokens, an SSE reader, servers in threads."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from prognetwork.kit.events import append
from prognetwork.users.keys import load_key
from tests.support import AUDIENCE, ISSUER, bearer, eventually, eventually_async, free_port, mint  # noqa: F401


@dataclass
class Message:
    id: int | None
    event: str
    data: str

    @property
    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseStream:
    """One open SSE response, parsed in the background as it arrives."""

    response: aiohttp.ClientResponse
    messages: list[Message] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    ended: bool = False
    task: asyncio.Task | None = None

    def start_reading(self) -> None:
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        fields: dict[str, list[str]] = {}
        try:
            async for raw in self.response.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line:
                    name, _, value = line.partition(":")
                    fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
                elif fields:
                    if "retry" in fields:
                        self.retry = int(fields["retry"][-1])
                    if "data" in fields:
                        ident = fields.get("id", [None])[-1]
                        self.messages.append(Message(
                            int(ident) if ident is not None else None, fields.get("event", ["message"])[-1],
                            "\n".join(fields["data"]),
                        ))
                    fields = {}
        except (aiohttp.ClientError, OSError):
            pass
        finally:
            self.ended = True

    @property
    def events(self) -> list[Message]:
        return [m for m in self.messages if m.id is not None]

    @property
    def seqs(self) -> list[int]:
        return [m.id for m in self.events]

    async def wait_for(self, check, timeout: float = 15.0, what: str = "") -> Any:
        async def poll():
            if self.ended and not check(self):
                raise AssertionError(f"stream ended first; got {self.seqs[-5:]} {self.messages[-1:]}")
            return check(self)
        return await eventually_async(poll, timeout=timeout, what=what)

    async def wait_for_seq(self, seq: int, timeout: float = 15.0) -> None:
        await self.wait_for(lambda s: s.seqs and s.seqs[-1] >= seq, timeout, what=f"event {seq}")

    async def close(self) -> None:
        self.response.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def open_stream(session: aiohttp.ClientSession, url: str, token: str, *, last_event_id: int | None = None,
                      types: str | None = None, read: bool = True, query_id: bool = False) -> SseStream:
    params = {"types": types} if types else {}
    headers = bearer(token)
    if last_event_id is not None:
        if query_id:
            params["last_event_id"] = str(last_event_id)
        else:
            headers["Last-Event-ID"] = str(last_event_id)
    response = await session.get(f"{url}/v1/events/stream", params=params, headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
    assert response.status == 200, await response.text()
    stream = SseStream(response)
    if read:
        stream.start_reading()
    return stream


def client_session() -> aiohttp.ClientSession:
    # Large read buffer: one SSE data line may hold a whole (large) event.
    return aiohttp.ClientSession(read_bufsize=1 << 20)


async def append_events(sessions, count: int, *, type: str = "test.burst", user_id=None, tenant_id=None,
                        private: bool = False, per_transaction: int = 1, payload: dict | None = None) -> list[int]:
    """Append `count` events; their sequence numbers."""
    seqs = []
    while len(seqs) < count:
        async with sessions() as session, session.begin():
            for _ in range(min(per_transaction, count - len(seqs))):
                event = await append(session, type, {"n": len(seqs), **(payload or {})},
                                     user_id=user_id, tenant_id=tenant_id, private=private)
                seqs.append(event.seq)
    return seqs


class ThreadServer:
    """An ASGI app served by uvicorn on a free port, in a thread with its own event loop."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
                                lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        eventually(lambda: self.server.started or not self.thread.is_alive(), timeout=20, what="server to start")
        assert self.server.started, "server failed to start"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def jwks_app(signing_key: str) -> Starlette:
    async def keys(request):
        return JSONResponse({"keys": [load_key(signing_key).jwk]})

    return Starlette(routes=[Route("/.well-known/jwks.json", keys)])
