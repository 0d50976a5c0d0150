"""Run one service in this process, with a graceful shutdown that load balancers can follow.

On SIGTERM: readiness answers 503 at once; the listener keeps serving for the drain delay
(so the orchestrator removes the pod from its endpoints before connections are refused);
then uvicorn stops accepting, lets in-flight requests finish within the shutdown timeout,
runs the app's shutdown, and the process exits 0. SIGINT (Ctrl-C) skips the drain delay;
a second one forces the exit.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import structlog
import uvicorn
from fastapi import FastAPI

from prognetwork.kit.settings import Settings

log = structlog.get_logger("prognetwork.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_seconds: float) -> None:
        super().__init__(config)
        self.runtime = app.state.runtime
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
        self.runtime.draining = True
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


def serve(app: FastAPI, settings: Settings, host: str, port: int) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
        timeout_keep_alive=30,
        server_header=False,
    )
    server = DrainingServer(config, app, settings.drain_seconds)
    server.run()
