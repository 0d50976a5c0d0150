"""The event log: written iff the transaction commits, append-only, ordered; durable consumers."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from prognetwork.kit.events import Consumer, append
from tests.helpers.polling import eventually_async


async def count(conn, event_type: str) -> int:
    return await conn.fetchval("SELECT count(*) FROM events WHERE type = $1", event_type)


async def test_event_exists_iff_its_transaction_commits(sessions, db):
    kind = f"test.{uuid.uuid4().hex[:8]}"
    async with sessions() as session:
        await append(session, kind, {"n": 1})
        await session.rollback()
    assert await count(db, kind) == 0
    async with sessions() as session:
        event = await append(session, kind, {"n": 2})
        await session.commit()
    row = await db.fetchrow("SELECT seq, id, payload FROM events WHERE type = $1", kind)
    assert row["seq"] == event.seq and row["id"] == event.id and row["payload"] == '{"n": 2}'


async def test_state_change_and_event_fail_together(sessions, db):
    """A failing statement after the append rolls the event back with it."""
    kind = f"test.{uuid.uuid4().hex[:8]}"
    async with sessions() as session:
        await append(session, kind, {})
        with pytest.raises(IntegrityError):
            await session.execute(text("INSERT INTO users (id) VALUES (NULL)"))
        await session.rollback()
    assert await count(db, kind) == 0


async def test_events_are_append_only(db):
    await db.execute("INSERT INTO events (id, type, payload) VALUES ($1, 'test.immutable', '{}')", uuid.uuid4())
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("UPDATE events SET payload = '{\"x\": 1}' WHERE type = 'test.immutable'")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("DELETE FROM events WHERE type = 'test.immutable'")


async def test_concurrent_appends_become_visible_in_sequence_order(sessions, database_url):
    """A reader that has seen N never sees a smaller sequence appear later (no gaps to skip)."""
    kind = f"test.{uuid.uuid4().hex[:8]}"
    seen: list[int] = []
    stop = asyncio.Event()

    async def reader() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            last = 0
            while not stop.is_set() or last == 0:
                rows = await conn.fetch("SELECT seq FROM events WHERE type = $1 AND seq > $2 ORDER BY seq", kind, last)
                for row in rows:
                    seen.append(row["seq"])
                    last = row["seq"]
            rows = await conn.fetch("SELECT seq FROM events WHERE type = $1 AND seq > $2 ORDER BY seq", kind, last)
            seen.extend(r["seq"] for r in rows)
        finally:
            await conn.close()

    async def writer(i: int) -> None:
        async with sessions() as session:
            await append(session, kind, {"i": i})
            await session.commit()

    task = asyncio.create_task(reader())
    await asyncio.gather(*(writer(i) for i in range(60)))
    stop.set()
    await task
    assert len(seen) == 60 and seen == sorted(seen), "a reader tailing by sequence saw an event appear behind it"


async def test_consumer_handles_each_event_once_despite_a_crash(sessions, db, database_url, settings):
    """A handler failure mid-batch rolls back the batch; the retry delivers each event once."""
    table = f"seen_{uuid.uuid4().hex[:8]}"
    kind = f"test.{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE TABLE {table} (event_id uuid PRIMARY KEY, n int)")
    async with sessions() as session:
        for n in range(10):
            await append(session, kind, {"n": n})
        await session.commit()
    crashed = asyncio.Event()

    async def handler(session, event) -> None:
        if event.payload["n"] == 6 and not crashed.is_set():
            crashed.set()
            raise RuntimeError("simulated crash")
        await session.execute(text(f"INSERT INTO {table} VALUES (:id, :n)"), {"id": event.id, "n": event.payload["n"]})

    consumer = Consumer(f"test-{kind}", sessions, settings.database_dsn, handler, types=frozenset({kind}))
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await eventually_async(lambda: _count_rows(db, table, 10), timeout=20, what="all events handled")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert crashed.is_set()
    rows = await db.fetch(f"SELECT n FROM {table} ORDER BY n")
    assert [r["n"] for r in rows] == list(range(10))
    position = await db.fetchval("SELECT position FROM consumer_cursors WHERE name = $1", f"test-{kind}")
    assert position >= await db.fetchval("SELECT max(seq) FROM events WHERE type = $1", kind)


async def _count_rows(db, table: str, expected: int) -> bool:
    return await db.fetchval(f"SELECT count(*) FROM {table}") == expected


async def test_consumer_resumes_from_its_cursor_after_restart(sessions, db, settings):
    table = f"seen_{uuid.uuid4().hex[:8]}"
    kind = f"test.{uuid.uuid4().hex[:8]}"
    name = f"test-{kind}"
    await db.execute(f"CREATE TABLE {table} (event_id uuid PRIMARY KEY, handled int DEFAULT 1)")

    async def handler(session, event) -> None:
        await session.execute(
            text(f"INSERT INTO {table} (event_id) VALUES (:id) ON CONFLICT (event_id) DO UPDATE SET handled = {table}.handled + 1"),
            {"id": event.id},
        )

    async def run_until(expected: int) -> None:
        consumer = Consumer(name, sessions, settings.database_dsn, handler, types=frozenset({kind}), batch_size=3)
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        try:
            await eventually_async(lambda: _count_rows(db, table, expected), timeout=20)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    async def publish(n: int) -> None:
        async with sessions() as session:
            for _ in range(n):
                await append(session, kind, {})
            await session.commit()

    await publish(5)
    await run_until(5)
    await publish(4)  # appended while no consumer runs
    await run_until(9)
    assert await db.fetchval(f"SELECT max(handled) FROM {table}") == 1


async def test_consumer_wakes_on_notify_without_polling(sessions, db, settings):
    kind = f"test.{uuid.uuid4().hex[:8]}"
    got: list[int] = []

    async def handler(session, event) -> None:
        got.append(event.seq)

    # A poll interval far beyond the test's deadline: only LISTEN/NOTIFY can deliver in time.
    consumer = Consumer(f"test-{kind}", sessions, settings.database_dsn, handler,
                        types=frozenset({kind}), poll_seconds=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await eventually_async(lambda: _has_listener(db), timeout=10, what="listener connected")
        async with sessions() as session:
            event = await append(session, kind, {})
            await session.commit()
        await eventually_async(lambda: _contains(got, event.seq), timeout=10, what="notified delivery")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _has_listener(db) -> bool:
    return bool(await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'prognetwork-event-listener'"))


async def _contains(items: list, value) -> bool:
    return value in items


async def test_two_replicas_of_a_consumer_never_handle_the_same_event(sessions, db, settings):
    table = f"seen_{uuid.uuid4().hex[:8]}"
    kind = f"test.{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE TABLE {table} (event_id uuid PRIMARY KEY)")

    async def handler(session, event) -> None:
        # A plain insert: a second handling of the same event would violate the primary key.
        await session.execute(text(f"INSERT INTO {table} VALUES (:id)"), {"id": event.id})

    async with sessions() as session:
        for _ in range(50):
            await append(session, kind, {})
        await session.commit()
    stop = asyncio.Event()
    replicas = [
        Consumer(f"test-{kind}", sessions, settings.database_dsn, handler, types=frozenset({kind}), batch_size=5)
        for _ in range(2)
    ]
    tasks = [asyncio.create_task(c.run(stop)) for c in replicas]
    try:
        await eventually_async(lambda: _count_rows(db, table, 50), timeout=20)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert await db.fetchval(f"SELECT count(*) FROM {table}") == 50
