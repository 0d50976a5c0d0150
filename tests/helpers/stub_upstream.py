"""A stand-in upstream for gateway tests: echoes what it received, streams SSE, or never answers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tests.helpers.polling import eventually
from tests.helpers.ports import free_port


@dataclass
class StubState:
    streams_opened: int = 0
    streams_closed: int = 0
    requests: list[dict] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # every request's raw path, as it arrived


def build_app(state: StubState, jwks: dict | None = None) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        seen = {"method": request.method, "path": request.url.path, "query": request.url.query,
                "headers": [[k, v] for k, v in request.headers.items()], "body": body.decode()}
        state.requests.append(seen)
        return JSONResponse(seen, headers={"Connection": "keep-alive", "X-Upstream": "stub"})

    async def stream(request: Request) -> StreamingResponse:
        state.streams_opened += 1

        async def events():
            try:
                n = 0
                while True:
                    n += 1
                    yield f"id: {n}\nevent: tick\ndata: {{\"n\": {n}}}\n\n"
                    await asyncio.sleep(0.05)  # the stream's own pace, not a test wait
            finally:
                state.streams_closed += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    async def hang(request: Request) -> JSONResponse:
        await asyncio.Event().wait()  # an upstream that never answers
        return JSONResponse({})

    async def keys(request: Request) -> JSONResponse:
        return JSONResponse(jwks)

    return Starlette(routes=[
        Route("/v1/events/echo", echo, methods=["GET", "POST", "PUT", "DELETE"]),
        Route("/v1/events/stream", stream),
        Route("/v1/events/hang", hang),
        *([Route("/.well-known/jwks.json", keys)] if jwks is not None else []),
    ])


def recorded(app: Starlette, state: StubState, name: str) -> Callable:
    """Record every request's raw path and name this stub on every answer (404s included)."""
    stamp = (b"x-stub", name.encode())

    async def asgi(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        state.paths.append(scope["raw_path"].decode("latin-1"))

        async def named(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), stamp]
            await send(message)

        await app(scope, receive, named)

    return asgi


class StubUpstream:
    def __init__(self, name: str = "stub", jwks: dict | None = None) -> None:
        self.state = StubState()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = recorded(build_app(self.state, jwks), self.state, name)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        eventually(lambda: self.server.started, timeout=10, what="stub upstream to start")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class ClosingUpstream:
    """An upstream that answers the first request on each connection (keep-alive) and, when a
    second one arrives on that connection, closes it unanswered — as a server does when it
    closes an idle keep-alive connection just as the client reuses it (a replica shutting down,
    or its keep-alive timeout)."""

    def __init__(self) -> None:
        self.answered = 0
        self.dropped = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(10), "closing upstream did not start"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        started.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for turn in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if turn == 1:
                    self.dropped += 1
                    return
                self.answered += 1
                body = b'{"answered": %d}' % self.answered
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
