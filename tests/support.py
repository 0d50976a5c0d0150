"""Helpers the tests share: polling with a deadline, service processes, free ports."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def eventually(check: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # the thing polled may not exist yet
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}" + (f" (last error: {last!r})" if last else ""))


async def eventually_async(
    check: Callable[[], Awaitable[T | None]], timeout: float = 15.0, interval: float = 0.05, what: str = ""
) -> T:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = await check()
            if result:
                return result
        except Exception as exc:
            last = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}" + (f" (last error: {last!r})" if last else ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


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


def start_service(
    name: str, env: dict[str, str], log_dir: Path, port: int | None = None, ready: bool = True,
    ops_port: int | None = None,
) -> ServiceProcess:
    port = port or free_port()
    ops_port = ops_port or next(p for p in iter(free_port, None) if p != port)
    log_path = log_dir / f"{name}-{port}.log"
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "prognetwork", "serve", name, "--host", "127.0.0.1", "--port", str(port),
         "--ops-port", str(ops_port)],
        env=full_env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=ROOT,
    )
    service = ServiceProcess(name, port, ops_port, process, log_path, env)
    path = "/readiness" if ready else "/health"
    try:
        eventually(lambda: process.poll() is not None or http_status(service.ops_url + path) == 200, timeout=30,
                   what=f"{name} to become ready")
    except AssertionError:
        service.stop(signal.SIGKILL)
        raise AssertionError(f"{name} did not start:\n{service.log()[-3000:]}") from None
    if process.poll() is not None:
        raise AssertionError(f"{name} exited with {process.returncode}:\n{service.log()[-3000:]}")
    return service


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def request_json(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    import json

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


class DisposablePostgres:
    """A PostgreSQL server of the test's own, to stop and start again (embedded binaries)."""

    def __init__(self, directory: Path) -> None:
        import logging

        import pgserver

        logging.getLogger("pgserver").setLevel(logging.WARNING)
        self.directory = directory
        self.server = pgserver.get_server(directory, cleanup_mode="stop")
        self.admin_url = self.server.get_uri()

    def url(self, database: str) -> str:
        socket_dir = self.admin_url.split("host=", 1)[1]
        return f"postgresql://postgres@/{database}?host={socket_dir}"

    def stop(self) -> None:
        from pgserver import _commands

        _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.directory, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def close(self) -> None:
        self.server.cleanup()


class DisposableRedis:
    """A Redis server of the test's own on a TCP port, to kill and start again on the same port."""

    def __init__(self, directory: Path) -> None:
        from prognetwork.kit.local import redis_binary

        self.binary = redis_binary()
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        eventually(lambda: _can_connect(self.port), timeout=10, what="redis to listen")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


ISSUER = "http://localhost:8000"  # the development JWT_ISSUER / JWT_AUDIENCE
AUDIENCE = "prognetwork"


def mint(
    signing_key: str, sub: object, role: str = "user", tid: object | None = None, lifetime: int = 600,
    sid: str | None = None,
) -> str:
    """A valid access token, signed as the user service signs them."""
    import time
    import uuid

    import jwt

    from prognetwork.users.keys import load_key

    key = load_key(signing_key)
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(sub), "iat": now, "nbf": now,
                              "exp": now + lifetime, "jti": uuid.uuid4().hex, "role": role, "sid": sid or uuid.uuid4().hex}
    if tid is not None:
        claims["tid"] = str(tid)
    return jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
