"""Real PostgreSQL and Redis for every test run.

The machine's own servers are used when reachable (127.0.0.1:5432 as postgres, 127.0.0.1:6379);
otherwise the embedded ones start in a temporary folder. Each run gets its own database
(created, migrated, dropped at the end) and its own Redis database number (flushed).
"""

from __future__ import annotations

import asyncio
import os
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
from tests.helpers.billing import running_billing
from tests.helpers.databases import create_database, drop_database, redis_url_for, with_database
from tests.helpers.ports import accepts_connections
from tests.helpers.threads import ThreadServer, in_thread
from tests.helpers.tokens import jwks_app

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_SERVER_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB_LEASE_SECONDS = 3 * 3600

# Logs as production writes them (JSON), so tests exercise the same processors.
configure_logging("tests", "INFO", "json")


@dataclass(frozen=True)
class Servers:
    pg_admin_url: str
    redis_url: str  # without a database number


@pytest.fixture(scope="session")
def servers(tmp_path_factory) -> Servers:
    stoppers = []
    pg_admin = PG_ADMIN_URL
    redis_url = REDIS_SERVER_URL
    if not accepts_connections(5432) or "TEST_EMBEDDED" in os.environ:
        pg = local.start_postgres(tmp_path_factory.mktemp("pg"), database="postgres")
        stoppers.append(pg.stop)
        pg_admin = pg.url
    if not accepts_connections(6379) or "TEST_EMBEDDED" in os.environ:
        rd = local.start_redis(tmp_path_factory.mktemp("redis"))
        stoppers.append(rd.stop)
        redis_url = rd.url.split("?")[0]
    yield Servers(pg_admin, redis_url)
    for stop in stoppers:
        stop()


@pytest.fixture(scope="session")
def database_url(servers: Servers) -> str:
    name = f"prog_test_{uuid.uuid4().hex[:12]}"
    in_thread(asyncio.run, create_database(servers.pg_admin_url, name))
    url = with_database(servers.pg_admin_url, name)
    in_thread(migrations.upgrade, url)
    yield url
    in_thread(asyncio.run, drop_database(servers.pg_admin_url, name))


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


@pytest.fixture(scope="session")
def jwks_server(signing_key):
    """The token issuer's public keys over HTTP, for services that verify tokens (JWKS_URL)."""
    server = ThreadServer(jwks_app(signing_key))
    yield server
    server.close()


@pytest.fixture(scope="module")
def billing(database_url, redis_url, jwks_server, tmp_path_factory):
    """A billing service process on the Stripe fake (tests/helpers/billing.py)."""
    with running_billing(database_url, redis_url, jwks_server.url, tmp_path_factory.mktemp("billing")) as running:
        yield running


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
    """Settings of the named service (its own class), or the shared ones, from the test environment."""

    def make(service: str | None = None, **overrides: str) -> Settings:
        from prognetwork.registry import service as spec

        settings_class = spec(service).settings if service else Settings
        return settings_class(**{**service_env, **overrides})

    return make


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


@pytest.fixture
def users_settings(make_settings) -> Settings:
    return make_settings("user-service")


@pytest.fixture
def notification_settings(make_settings) -> Settings:
    return make_settings("notification-service")


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
async def users(serve_app, users_settings):
    from prognetwork.users.app import create_app

    return await serve_app(create_app(users_settings))


@pytest.fixture
async def notifications(serve_app, notification_settings):
    from prognetwork.notifications.app import create_app

    return await serve_app(create_app(notification_settings))


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
