"""Readiness follows the real dependencies: down → 503 naming them, back → 200."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from prognetwork.kit import migrations
from tests.helpers.databases import (
    DisposablePostgres,
    DisposableRedis,
    create_database,
    drop_database,
    with_database,
)
from tests.helpers.polling import eventually_async
from tests.helpers.threads import in_thread


@pytest.fixture
def own_servers(tmp_path):
    pg = DisposablePostgres(tmp_path / "pg")
    in_thread(asyncio.run, create_database(pg.admin_url, "prog"))
    in_thread(migrations.upgrade, pg.url("prog"))
    redis = DisposableRedis(tmp_path)
    yield pg, redis
    redis.stop()
    pg.close()


async def readiness(client) -> tuple[int, dict]:
    response = await client.get("/readiness")
    return response.status_code, response.json()


async def test_readiness_flips_with_postgres_and_redis(serve_app, make_settings, own_servers):
    from prognetwork.users.app import create_app

    pg, redis = own_servers
    client = await serve_app(create_app(make_settings("user-service", DATABASE_URL=pg.url("prog"), REDIS_URL=redis.url)))

    async def status_is(code: int):
        status, body = await readiness(client)
        return body if status == code else None

    body = await eventually_async(lambda: status_is(200))
    assert body["checks"] == {"postgres": "ok", "redis": "ok"}

    redis.stop()
    body = await eventually_async(lambda: status_is(503), what="503 with Redis down")
    assert body["checks"]["postgres"] == "ok" and body["checks"]["redis"].startswith("unreachable")
    assert "redis" in body["detail"] and body["type"].endswith("/not-ready")
    assert (await client.get("/health")).status_code == 200  # liveness never depends on others
    login = await client.post("/v1/auth/login", json={"email": "a@example.com", "password": "whatever it is"})
    assert login.status_code == 503 and login.headers["retry-after"]
    assert login.json()["type"].endswith("/dependency-unavailable")

    redis.start()
    await eventually_async(lambda: status_is(200), what="200 with Redis back")

    pg.stop()
    body = await eventually_async(lambda: status_is(503), what="503 with PostgreSQL down")
    assert body["checks"]["redis"] == "ok" and body["checks"]["postgres"].startswith("unreachable")
    assert (await client.get("/health")).status_code == 200
    register = await client.post("/v1/auth/register",
                                 json={"email": "b@example.com", "password": "long enough pw", "name": "B"})
    assert register.status_code == 503 and register.json()["type"].endswith("/dependency-unavailable")

    pg.start()
    await eventually_async(lambda: status_is(200), what="200 with PostgreSQL back")


async def test_readiness_fails_until_migrations_are_applied(serve_app, make_settings, servers):
    from prognetwork.notifications.app import create_app

    name = f"prog_test_{uuid.uuid4().hex[:12]}"
    await create_database(servers.pg_admin_url, name)
    url = with_database(servers.pg_admin_url, name)
    try:
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        await conn.close()
        client = await serve_app(create_app(make_settings("notification-service", DATABASE_URL=url)))

        async def schema_behind():
            status, body = await readiness(client)
            return status == 503 and "prog migrate" in body["checks"]["postgres"]

        await eventually_async(schema_behind, what="503 naming the missing migration")
        await asyncio.to_thread(migrations.upgrade, url)
        status, body = await readiness(client)
        assert status == 200, body
    finally:
        await drop_database(servers.pg_admin_url, name)
