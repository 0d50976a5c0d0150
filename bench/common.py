"""What the benchmarks share: throwaway databases, service processes, wrk runs, tool installs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from tests.helpers.ports import free_port

from prognetwork.kit.process import NotReady, spawn, wait_ready

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("BENCH_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


def ensure_debian_packages(*packages_and_commands: tuple[str, str]) -> None:
    """Install (package, command) pairs from Debian when the command is missing."""
    missing = [pkg for pkg, cmd in packages_and_commands if shutil.which(cmd) is None and not Path(cmd).exists()]
    if not missing:
        return
    print(f"installing {' '.join(missing)} from Debian…", file=sys.stderr)
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    subprocess.run(["apt-get", *lock, "update", "-qq"], check=True)
    subprocess.run(["apt-get", *lock, "install", "-y", "-qq", *missing], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


@contextmanager
def database() -> Iterator[str]:
    name = f"prog_bench_{uuid.uuid4().hex[:10]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    head, _, rest = ADMIN_URL.partition("://")
    url = f"{head}://{rest.rsplit('/', 1)[0]}/{name}"
    try:
        subprocess.run([sys.executable, "-m", "prognetwork", "migrate"], env={**os.environ, "DATABASE_URL": url},
                       check=True, capture_output=True)
        yield url
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Services:
    """Service processes for one benchmark run, stopped together."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**os.environ, **env, "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
        self.processes: list[subprocess.Popen] = []
        self.logs = Path(tempfile.mkdtemp(prefix="prog-bench-"))

    def start(self, name: str, port: int, **env: str) -> str:
        """The service's API URL, once its readiness (on an ops port of its own) answers 200."""
        log = open(self.logs / f"{name}-{port}.log", "wb")
        ops_port = next(p for p in iter(free_port, None) if p != port)
        child = spawn(name, port, ops_port, {**self.env, **env}, output=log, cwd=ROOT)
        self.processes.append(child)
        try:
            wait_ready({name: (child, f"http://127.0.0.1:{ops_port}")}, timeout=60)
        except NotReady as exc:
            raise SystemExit(f"{exc}; see {self.logs}") from None
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


@contextmanager
def pinned(cpus: Iterable[int] | None) -> Iterator[None]:
    """Processes started inside run on `cpus` only (children inherit the affinity); None: anywhere."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def split_cpus() -> tuple[set[int], set[int]] | None:
    """(servers' CPUs, load generator's CPUs) on a machine with two or more, else None."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def wrk(url: str, seconds: int, connections: int, headers: dict[str, str],
        cpus: Iterable[int] | None = None) -> dict[str, float]:
    """requests/s and latency percentiles (ms) from one wrk run (on `cpus` if given)."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if cpus is not None:
        args = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *args]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise SystemExit(f"{url}: {non2xx.group(1)} non-2xx responses; the benchmark would measure errors\n{out}")

    def percentile(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"rps": rps, "p50_ms": percentile("50"), "p99_ms": percentile("99")}


def measure(targets: dict[str, str], load: Load, headers: dict[str, str]) -> dict[str, dict]:
    """Each target's median req/s, p50 and p99 over `load.rounds` interleaved rounds."""
    for url in targets.values():
        wrk(url, 2, load.connections, headers, load.cpus)  # warm-up: connection pools, caches
    rounds: dict[str, list[dict]] = {name: [] for name in targets}
    for _ in range(load.rounds):
        for name, url in targets.items():
            rounds[name].append(wrk(url, load.seconds, load.connections, headers, load.cpus))
    return {name: {figure: round(statistics.median(r[figure] for r in runs), 2) for figure in runs[0]}
            for name, runs in rounds.items()}


@dataclass(frozen=True)
class Load:
    seconds: int  # per round and setup
    rounds: int
    connections: int
    cpus: set[int] | None  # wrk's
    server_cpus: set[int] | None  # the servers'


def table(title: str, results: dict[str, dict]) -> None:
    print(title)
    print(f"  {'setup':<10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, r in results.items():
        print(f"  {name:<10}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}")


BENCH_EMAIL = "bench@example.com"
BENCH_PASSWORD = "benchmark password 1"


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own http:// URL
        return json.loads(response.read())


def access_token(users_url: str, database_url: str) -> str:
    """A real access token: registered, verified (the link's token from the event log), logged in."""
    account = {"email": BENCH_EMAIL, "password": BENCH_PASSWORD}
    post(f"{users_url}/v1/auth/register", {**account, "name": "Bench"})

    async def verification_token() -> str:
        conn = await asyncpg.connect(database_url)
        try:
            payload = await conn.fetchval(
                "SELECT payload FROM events WHERE type = 'user.email_verification_requested'")
        finally:
            await conn.close()
        return json.loads(payload)["token"]

    post(f"{users_url}/v1/auth/verify-email", {"token": asyncio.run(verification_token()), "password": BENCH_PASSWORD})
    return post(f"{users_url}/v1/auth/login", account)["access_token"]
