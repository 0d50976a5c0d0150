"""PostgreSQL outages: the email consumer resumes as soon as PostgreSQL is back (its listener
reconnects and wakes it), not when its backoff runs out; and a refresh that fails on the outage
spends nothing, so the client's retry keeps the session."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from prognetwork.kit import db as kit_db
from prognetwork.kit import migrations
from prognetwork.kit.events import Consumer, append
from prognetwork.kit.retry import Backoff, Resumed
from prognetwork.notifications import service
from prognetwork.notifications.app import CONSUMER_NAME
from tests.helpers.accounts import login, unique_email, verified_user
from tests.helpers.databases import DisposablePostgres, create_database
from tests.helpers.polling import eventually_async
from tests.helpers.threads import in_thread

HOUR = 3600.0


@pytest.fixture
def own_postgres(tmp_path):
    pg = DisposablePostgres(tmp_path / "pg")
    in_thread(asyncio.run, create_database(pg.admin_url, "prog"))
    in_thread(migrations.upgrade, pg.url("prog"))
    yield pg
    pg.close()


async def test_email_consumer_resumes_when_postgres_returns_not_when_its_backoff_ends(own_postgres):
    pg = own_postgres
    url = pg.url("prog")
    engine = kit_db.create_engine(url)
    sessions = kit_db.sessionmaker(engine)
    # An hour before any retry: only the wake-up from the reconnected listener can bring the
    # consumer back within the test's deadlines.
    backoff = Backoff("test.email-consumer", base=HOUR, cap=HOUR, jitter=lambda: 0.5)
    consumer = Consumer(CONSUMER_NAME, sessions, url, service.handle_event, types=service.HANDLED_TYPES,
                        poll_seconds=0.2, backoff=backoff)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await eventually_async(lambda: _listening(url), what="the consumer's listener to connect")

        await asyncio.to_thread(pg.stop)
        await eventually_async(lambda: _true(backoff.attempt == 1), what="a batch to fail and back off")
        await asyncio.to_thread(pg.start)
        await eventually_async(lambda: _true(backoff.attempt == 0), timeout=30, what="the consumer to resume")
        assert backoff.resumed[Resumed.WOKEN] == 1 and backoff.resumed[Resumed.ELAPSED] == 0

        email = unique_email("outage")
        async with sessions() as session:
            await append(session, "user.email_verification_requested",
                         {"email": email, "verify_url": "https://app.example/verify-email?token=t"})
            await session.commit()
        await eventually_async(lambda: _email_for(url, email), what="the email written after the outage")
    finally:
        stop.set()
        await eventually_async(lambda: _true(task.done()), what="the consumer to stop")
        await engine.dispose()
    task.result()


async def test_a_refresh_that_meets_a_postgres_outage_spends_nothing(own_postgres, make_settings, serve_app):
    from prognetwork.users.app import create_app

    pg = own_postgres
    users = await serve_app(create_app(make_settings("user-service", DATABASE_URL=pg.url("prog"))))
    conn = await asyncpg.connect(pg.url("prog"))
    try:
        email = await verified_user(users, conn)
    finally:
        await conn.close()
    tokens = (await login(users, email)).json()

    await asyncio.to_thread(pg.stop)
    # Answered without PostgreSQL: a 503 saying nothing changed (and never the reuse verdict).
    failed = await users.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert failed.status_code == 503, failed.text
    await asyncio.to_thread(pg.start)

    async def refreshed():
        response = await users.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        return response if response.status_code != 503 else None

    # The client's retry of the very same token, once PostgreSQL answers again, is a normal refresh.
    again = await eventually_async(refreshed, timeout=30, what="a refresh after the outage")
    assert again.status_code == 200, again.text
    access = again.json()["access_token"]
    assert (await users.get("/v1/users/me", headers={"Authorization": f"Bearer {access}"})).status_code == 200


async def _listening(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'prognetwork-event-listener'"))
    finally:
        await conn.close()


async def _email_for(url: str, email: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM email_messages WHERE recipient = $1", email))
    finally:
        await conn.close()


async def _true(condition: bool) -> bool:
    return condition
