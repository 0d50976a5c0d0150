"""Readiness means "send me traffic" (kit.dependencies): PostgreSQL down → 503 naming it, back →
200; Redis down leaves the service ready (it degrades around Redis) and shows in /health and
`dependency_up`."""

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


async def test_postgres_gates_readiness_and_redis_only_degrades_health(serve_app, make_settings, own_servers):
    from prognetwork.users.app import create_app

    pg, redis = own_servers
    client = await serve_app(create_app(make_settings("user-service", DATABASE_URL=pg.url("prog"), REDIS_URL=redis.url)))

    async def status_is(code: int):
        status, body = await readiness(client)
        return body if status == code else None

    async def health_says(status: str):
        body = (await client.get("/health")).json()
        return body if body["status"] == status else None

    body = await eventually_async(lambda: status_is(200))
    assert body["checks"] == {"postgres": "ok"}
    body = await eventually_async(lambda: health_says("ok"), what="/health with every dependency checked")
    assert body["dependencies"] == {"postgres": "ok", "redis": "ok"}

    redis.stop()
    body = await eventually_async(lambda: health_says("degraded"), what="/health to report Redis down")
    assert body["dependencies"]["redis"].startswith("unreachable") and body["dependencies"]["postgres"] == "ok"
    assert _dependency_up("user-service", "redis") == 0
    status, body = await readiness(client)
    assert status == 200, body  # every replica would be as degraded: none leaves the balancer
    assert body["dependencies"]["redis"].startswith("unreachable")
    login = await client.post("/v1/auth/login", json={"email": "a@example.com", "password": "whatever it is"})
    assert login.status_code == 503 and login.headers["retry-after"]
    assert login.json()["type"].endswith("/dependency-unavailable")

    redis.start()
    await eventually_async(lambda: health_says("ok"), what="/health with Redis back")
    assert _dependency_up("user-service", "redis") == 1

    pg.stop()
    body = await eventually_async(lambda: status_is(503), what="503 with PostgreSQL down")
    assert body["checks"]["postgres"].startswith("unreachable")
    assert "postgres" in body["detail"] and body["type"].endswith("/not-ready")
    assert (await client.get("/health")).status_code == 200  # liveness never depends on others
    register = await client.post("/v1/auth/register",
                                 json={"email": "b@example.com", "password": "long enough pw", "name": "B"})
    assert register.status_code == 503 and register.json()["type"].endswith("/dependency-unavailable")

    pg.start()
    await eventually_async(lambda: status_is(200), what="200 with PostgreSQL back")


def _dependency_up(service: str, dependency: str) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("dependency_up", {"service": service, "dependency": dependency})


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
