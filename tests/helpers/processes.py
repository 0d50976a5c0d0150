"""Services as real processes (`prog serve`), started on free ports and stopped by the test."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from prognetwork.kit.process import NotReady, spawn, wait_ready
from tests.helpers.paths import ROOT
from tests.helpers.ports import free_port


@dataclass
class ServiceProcess:
    name: str
    port: int
    ops_port: int  # /health, /readiness, /metrics, /docs: never on `port`
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def issuer_env(user_service_url: str) -> dict[str, str]:
    """Where the gateway finds the user service, and every verifier the token issuer's keys."""
    return {"USER_SERVICE_URL": user_service_url, "JWKS_URL": f"{user_service_url}/.well-known/jwks.json"}


def start_service(
    name: str, env: dict[str, str], log_dir: Path, port: int | None = None, ready: bool = True,
    ops_port: int | None = None,
) -> ServiceProcess:
    port = port or free_port()
    ops_port = ops_port or next(p for p in iter(free_port, None) if p != port)
    log_path = log_dir / f"{name}-{port}.log"
    child = spawn(name, port, ops_port, {**os.environ, **env}, output=open(log_path, "wb"), cwd=ROOT)
    service = ServiceProcess(name, port, ops_port, child, log_path, env)
    try:
        wait_ready({name: (child, service.ops_url)}, timeout=30, path="/readiness" if ready else "/health")
    except NotReady as exc:
        service.stop(signal.SIGKILL)
        raise AssertionError(f"{exc}:\n{service.log()[-3000:]}") from None
    return service
