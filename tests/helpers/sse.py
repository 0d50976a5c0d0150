"""Reading Server-Sent Events streams: open one, parse it in the background, wait for events."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.helpers.polling import eventually_async
from tests.helpers.tokens import bearer


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
