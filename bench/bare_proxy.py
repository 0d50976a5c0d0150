"""A bare proxy for bench/gateway.py: uvicorn (uvloop, httptools) and the gateway's own upstream
client, forwarding every request to one upstream with none of the gateway's work (no token, rate
limit, path rules, request id, metrics or header rewriting beyond dropping hop-by-hop fields).

The gap between this row and the gateway's is what the gateway's own work costs; the gap between
this row and nginx's is what the Python server and client cost before any work is done.

    python -m bench.bare_proxy PORT UPSTREAM_PORT
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.types import Receive, Scope, Send

from prognetwork.gateway.upstream import Origin, Timeouts, UpstreamClient

DROPPED = frozenset({b"host", b"connection", b"keep-alive", b"content-length", b"transfer-encoding"})
TIMEOUTS = Timeouts(connect=2.0, read=30.0)


def app(upstream_port: int):  # noqa: ANN201 - an ASGI callable
    origin = Origin("http", "127.0.0.1", upstream_port)
    client: list[UpstreamClient] = []

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    client.append(UpstreamClient())
                else:
                    await client[0].close()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await receive()
        headers = [header for header in scope["headers"] if header[0] not in DROPPED]
        target = scope["raw_path"].removeprefix(b"/api")  # the gateway's route strips /api too
        response = await client[0].request(origin, scope["method"], target, headers, b"", TIMEOUTS)
        try:
            body = await response.read()
        finally:
            response.release()
        answer = [(name.lower(), value) for name, value in response.headers if name.lower() not in DROPPED]
        answer.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": answer})
        await send({"type": "http.response.body", "body": body})

    return proxy


if __name__ == "__main__":
    port, upstream_port = int(sys.argv[1]), int(sys.argv[2])
    uvicorn.run(app(upstream_port), host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False)
