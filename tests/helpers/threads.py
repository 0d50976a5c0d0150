"""Running blocking code and servers in threads of their own, beside the test's event loop."""

from __future__ import annotations

import threading
from typing import Any

import uvicorn

from tests.helpers.polling import eventually
from tests.helpers.ports import free_port


def in_thread(fn, *args):
    """Run blocking code that may start its own event loop, even while one runs in this thread."""
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


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
