"""Real PostgreSQL and Redis for every test run.

The machine's own servers are used when reachable (127.0.0.1:5432 as postgres, 127.0.0.1:6379);
otherwise the embedded ones start in a temporary folder. Each run gets its own database
(created, migrated, dropped at the end) and its own Redis database number (flushed).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis as redis_sync
from asgi_lifespan import LifespanManager

from prognetwork.kit import local, migrations
from prognetwork.kit.logging import configure as configure_logging
from prognetwork.kit.settings import Settings
from prognetwork.users.keys import generate_pem

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_SERVER_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB_LEASE_SECONDS = 3 * 3600

# Logs as production writes them (JSON), so tests exercise the same processors.
configure_logging("tests", "INFO", "json")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


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


@dataclass(frozen=True)
class Servers:
    pg_admin_url: str
    redis_url: str  # without a database number


@pytest.fixture(scope="session")
def servers(tmp_path_factory) -> Servers:
    stoppers = []
    pg_admin = PG_ADMIN_URL
    redis_url = REDIS_SERVER_URL
    if not _reachable("127.0.0.1", 5432) or "TEST_EMBEDDED" in os.environ:
        pg = local.start_postgres(tmp_path_factory.mktemp("pg"), database="postgres")
        stoppers.append(pg.stop)
        pg_admin = pg.url
    if not _reachable("127.0.0.1", 6379) or "TEST_EMBEDDED" in os.environ:
        rd = local.start_redis(tmp_path_factory.mktemp("redis"))
        stoppers.append(rd.stop)
        redis_url = rd.url.split("?")[0]
    yield Servers(pg_admin, redis_url)
    for stop in stoppers:
        stop()


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


@pytest.fixture(scope="session")
def database_url(servers: Servers) -> str:
    name = f"prog_test_{uuid.uuid4().hex[:12]}"
    in_thread(asyncio.run, create_database(servers.pg_admin_url, name))
    url = with_database(servers.pg_admin_url, name)
    in_thread(migrations.upgrade, url)
    yield url
    in_thread(asyncio.run, drop_database(servers.pg_admin_url, name))


def redis_url_for(base: str, db: int) -> str:
    return f"{base}?db={db}" if base.startswith("unix://") else f"{base}/{db}"


@pytest.fixture(scope="session")
def redis_url(servers: Servers) -> str:
    """Lease a free Redis database number (1-15) for this run; flushed before and after."""
    admin = redis_sync.Redis.from_url(redis_url_for(servers.redis_url, 0))
    run_id = uuid.uuid4().hex
    for db in range(1, 16):
        if admin.set(f"prognetwork:test-lease:{db}", run_id, nx=True, ex=REDIS_DB_LEASE_SECONDS):
            break
    else:
        pytest.fail("every Redis database 1-15 is leased by another test run; wait or flush db 0's leases")
    url = redis_url_for(servers.redis_url, db)
    client = redis_sync.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    admin.delete(f"prognetwork:test-lease:{db}")


@pytest.fixture(scope="session")
def signing_key() -> str:
    return generate_pem()


@pytest.fixture
def secrets_dir(tmp_path: Path, signing_key: str) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "JWT_SIGNING_KEYS").write_text(signing_key)
    return directory


@pytest.fixture
def service_env(database_url: str, redis_url: str, secrets_dir: Path, tmp_path: Path) -> dict[str, str]:
    """Environment for a service process (or a Settings object) in development mode."""
    return {
        "PROG_ENV": "development",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "PROG_STATE_DIR": str(tmp_path / "state"),
        "SECRETS_BACKEND": "file",
        "SECRETS_DIR": str(secrets_dir),
        "SECRETS_CACHE_TTL_SECONDS": "0",
        "LOGIN_ATTEMPTS_PER_ADDRESS": "100000",
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture
def make_settings(service_env: dict[str, str]) -> Callable[..., Settings]:
    def make(**overrides: str) -> Settings:
        return Settings(**{**service_env, **overrides})

    return make


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


@pytest.fixture
async def serve_app() -> AsyncIterator[Callable]:
    """Run an app in-process (lifespan included) and talk to it over ASGI."""
    managers: list[LifespanManager] = []
    clients: list[httpx.AsyncClient] = []

    async def start(app, client_addr: tuple[str, int] = ("127.0.0.1", 50000)) -> httpx.AsyncClient:
        manager = LifespanManager(app, startup_timeout=30, shutdown_timeout=30)
        await manager.__aenter__()
        managers.append(manager)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app, client=client_addr), base_url="http://service"
        )
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.aclose()
    for manager in reversed(managers):
        await manager.__aexit__(None, None, None)


@pytest.fixture
async def users(serve_app, settings):
    from prognetwork.users.app import create_app

    return await serve_app(create_app(settings))


@pytest.fixture
async def notifications(serve_app, settings):
    from prognetwork.notifications.app import create_app

    return await serve_app(create_app(settings))


@pytest.fixture
async def sessions(database_url: str):
    """SQLAlchemy sessions on the test database, as the services use them."""
    from prognetwork.kit import db as kit_db

    engine = kit_db.create_engine(database_url)
    yield kit_db.sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def http():
    """An aiohttp client; a large read buffer, since one SSE data line may hold a whole event."""
    import aiohttp

    async with aiohttp.ClientSession(read_bufsize=1 << 20) as session:
        yield session


@pytest.fixture
async def db(database_url: str):
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"
