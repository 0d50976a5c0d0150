"""The event log: written iff the transaction commits, append-only, ordered; durable consumers."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from prognetwork.kit import db as kit_db
from prognetwork.kit import tenancy
from prognetwork.kit.events import Consumer, Sequencer, append, sequence, sequenced
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
    assert event.seq is None  # drawn by the sequencer, after the commit
    # The commit returned once the event was in the log (no sequencer runs here: it ran a step).
    row = await db.fetchrow("SELECT seq, id, payload FROM events WHERE type = $1", kind)
    assert row["id"] == event.id and row["payload"] == '{"n": 2}'
    assert await sequenced(sessions, event.id) == row["seq"]
    assert await db.fetchval("SELECT count(*) FROM event_pending WHERE id = $1", event.id) == 0


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
    got: list[uuid.UUID] = []

    async def handler(session, event) -> None:
        got.append(event.id)

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
        await eventually_async(lambda: _contains(got, event.id), timeout=10, what="notified delivery")
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


@pytest.fixture
async def sequenced_sessions(database_url):
    """Sessions on an engine whose sequencer runs, as in a service process: commits wait for it."""
    engine = kit_db.create_engine(database_url)
    sequencer = Sequencer(database_url, engine)
    stop = asyncio.Event()
    task = asyncio.create_task(sequencer.run(stop))
    try:
        yield kit_db.sessionmaker(engine), sequencer
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await engine.dispose()


async def test_a_commit_returns_once_the_process_sequencer_has_sequenced_its_events(sequenced_sessions, db):
    sessions, sequencer = sequenced_sessions
    kind = f"test.{uuid.uuid4().hex[:8]}"
    async with sessions() as session, session.begin():
        first = await append(session, kind, {"n": 1})
        second = await append(session, kind, {"n": 2})
    rows = await db.fetch("SELECT id FROM events WHERE type = $1 ORDER BY seq", kind)
    assert [r["id"] for r in rows] == [first.id, second.id]  # in the order of the appends
    assert sequencer.batches >= 1  # moved by the sequencer: the commit waited for it


async def test_a_writer_committing_late_is_delivered_after_the_fast_ones_and_never_skipped(
    sequenced_sessions, db, settings
):
    """A slow writer appends first and commits last: while it is open, a running consumer delivers
    the fast writers' events; once it commits, the slow one — each exactly once, in seq order."""
    sessions, _ = sequenced_sessions
    kind = f"test.{uuid.uuid4().hex[:8]}"
    delivered: list[tuple[int, uuid.UUID]] = []

    async def handler(session, event) -> None:
        delivered.append((event.seq, event.id))

    async def fast_writer(i: int) -> uuid.UUID:
        async with sessions() as session, session.begin():
            return (await append(session, kind, {"writer": i})).id

    async def delivered_ids() -> set[uuid.UUID]:
        return {event_id for _, event_id in delivered}

    consumer = Consumer(f"test-{kind}", sessions, settings.database_dsn, handler, types=frozenset({kind}),
                        batch_size=7)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        async with sessions() as slow:
            await slow.begin()
            late = await append(slow, kind, {"writer": "slow"})  # the oldest entry, still uncommitted
            fast = await asyncio.gather(*(fast_writer(i) for i in range(20)))
            await eventually_async(lambda: _contains_all(delivered_ids, fast), timeout=20,
                                   what="the fast writers' events delivered while the slow one is open")
            assert late.id not in await delivered_ids()
            await slow.commit()
        await eventually_async(lambda: _contains_all(delivered_ids, [late.id]), timeout=20,
                               what="the slow writer's event delivered once it committed")
        more = await asyncio.gather(*(fast_writer(i) for i in range(20, 25)))
        await eventually_async(lambda: _contains_all(delivered_ids, more), timeout=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    seqs = [seq for seq, _ in delivered]
    assert [event_id for _, event_id in delivered].count(late.id) == 1
    assert len(delivered) == len(set(delivered)) == 26, "an event was delivered twice"
    assert seqs == sorted(seqs), "delivered out of sequence order"
    assert [event_id for _, event_id in delivered][20] == late.id  # sequenced after the fast ones
    in_log = await db.fetch("SELECT seq FROM events WHERE type = $1 ORDER BY seq", kind)
    assert [r["seq"] for r in in_log] == seqs, "the consumer skipped an event of the log"


async def _contains_all(found, expected) -> bool:
    return set(expected) <= await found()


async def test_an_event_committed_without_a_nudge_is_sequenced_by_the_fallback_poll(sequenced_sessions, db):
    """A writer that died right after its commit woke no sequencer: the poll finds its event."""
    _, sequencer = sequenced_sessions
    kind = f"test.{uuid.uuid4().hex[:8]}"
    event_id = uuid.uuid4()
    # Committed straight into event_pending: no session, so no commit hook and no wake-up.
    await db.execute("INSERT INTO event_pending (id, type, payload) VALUES ($1, $2, '{}')", event_id, kind)
    seq = await eventually_async(lambda: db.fetchval("SELECT seq FROM events WHERE id = $1", event_id),
                                 timeout=20, what="the pending event sequenced by the poll")
    assert seq > 0 and not sequencer.wake.is_set()
    assert await db.fetchval("SELECT count(*) FROM event_pending WHERE id = $1", event_id) == 0


async def test_concurrent_steps_from_two_connections_keep_sequence_numbers_visible_in_order(database_url, db):
    """Writers commit transactions of three events while two connections run steps back to back
    and a reader tails "seq > the last I saw": it sees every event once, in order, and a
    transaction's events in the order they were appended."""
    kind = f"test.{uuid.uuid4().hex[:8]}"
    writing = asyncio.Event()
    stop = asyncio.Event()
    seen: list[tuple[int, int, int]] = []  # (seq, transaction, index in it)

    async def writer(w: int) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            for t in range(15):
                async with conn.transaction():
                    for i in range(3):
                        await conn.execute(
                            "INSERT INTO event_pending (id, type, payload) VALUES ($1, $2, $3::jsonb)",
                            uuid.uuid4(), kind, f'{{"tx": {w * 100 + t}, "i": {i}}}')
        finally:
            await conn.close()

    async def stepper() -> tuple[int, int]:
        """(steps run, events moved)."""
        conn = await asyncpg.connect(database_url)
        steps = moved = 0
        try:
            while writing.is_set() or await conn.fetchval("SELECT EXISTS (SELECT FROM event_pending)"):
                moved += await sequence(conn)
                steps += 1
        finally:
            await conn.close()
        return steps, moved

    async def reader() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            last = 0
            while True:
                done = stop.is_set()  # read once more after the steppers finished
                rows = await conn.fetch("SELECT seq, (payload->>'tx')::int AS tx, (payload->>'i')::int AS i "
                                        "FROM events WHERE type = $1 AND seq > $2 ORDER BY seq", kind, last)
                seen.extend((r["seq"], r["tx"], r["i"]) for r in rows)
                last = rows[-1]["seq"] if rows else last
                if done:
                    return
        finally:
            await conn.close()

    writing.set()
    reading = asyncio.create_task(reader())
    steppers = [asyncio.create_task(stepper()) for _ in range(2)]
    await asyncio.gather(*(writer(w) for w in range(6)))
    writing.clear()
    done = await asyncio.gather(*steppers)
    stop.set()
    await reading
    assert all(steps for steps, _ in done), "a stepper never ran"
    assert sum(moved for _, moved in done) == 6 * 15 * 3  # every event went through these steps
    assert len(seen) == 6 * 15 * 3 == len({(tx, i) for _, tx, i in seen}), "an event was skipped or repeated"
    assert [seq for seq, _, _ in seen] == sorted(seq for seq, _, _ in seen)
    by_transaction: dict[int, list[int]] = {}
    for _, tx, i in seen:
        by_transaction.setdefault(tx, []).append(i)
    assert all(indexes == [0, 1, 2] for indexes in by_transaction.values()), "appends sequenced out of order"


async def test_pending_events_are_inserted_and_sequenced_never_changed(sessions, db):
    kind = f"test.{uuid.uuid4().hex[:8]}"
    tenant = uuid.uuid4()
    async with sessions() as session:
        await session.begin()
        await tenancy.scope(session, tenant)  # as a tenant's transaction appends: the scoped role
        await append(session, kind, {}, tenant_id=tenant)
        with pytest.raises(Exception, match="permission denied"):
            await session.execute(text("DELETE FROM event_pending WHERE type = :t"), {"t": kind})
        await session.rollback()
    event_id = uuid.uuid4()
    async with db.transaction():
        await db.execute("INSERT INTO event_pending (id, type, payload) VALUES ($1, $2, '{}')", event_id, kind)
        with pytest.raises(asyncpg.RaiseError, match="only inserted and sequenced"):
            await db.execute("UPDATE event_pending SET payload = '{\"x\": 1}' WHERE id = $1", event_id)
    with pytest.raises(asyncpg.RaiseError, match="only inserted and sequenced"):
        await db.execute("TRUNCATE event_pending")


async def test_sequenced_draws_the_seq_of_a_pending_event_and_refuses_one_never_committed(sessions, db):
    kind = f"test.{uuid.uuid4().hex[:8]}"
    event_id = uuid.uuid4()
    await db.execute("INSERT INTO event_pending (id, type, payload) VALUES ($1, $2, '{}')", event_id, kind)
    seq = await sequenced(sessions, event_id)
    assert seq == await db.fetchval("SELECT seq FROM events WHERE id = $1", event_id)
    assert await sequenced(sessions, event_id) == seq  # already in the log: the same answer
    with pytest.raises(LookupError, match="neither in the log nor pending"):
        await sequenced(sessions, uuid.uuid4())


async def test_a_pending_event_already_in_the_log_is_dropped_and_sequencing_goes_on(sessions, db):
    """A pending row whose id the log already holds (restored beside the event it became) must not
    fail every later step: that would stop sequencing, and the readers, for the whole platform."""
    kind = f"test.{uuid.uuid4().hex[:8]}"
    async with sessions() as session, session.begin():
        first = await append(session, kind, {"n": 1})
    await db.execute("INSERT INTO event_pending (id, type, payload) VALUES ($1, $2, '{}')", first.id, kind)
    async with sessions() as session, session.begin():
        second = await append(session, kind, {"n": 2})
    assert await db.fetchval("SELECT count(*) FROM event_pending WHERE type = $1", kind) == 0
    rows = await db.fetch("SELECT id FROM events WHERE type = $1 ORDER BY seq", kind)
    assert [r["id"] for r in rows] == [first.id, second.id]


async def test_the_sequencer_outlives_a_failure_that_is_not_postgresql(database_url, db):
    """Its connection comes from the secrets provider where credentials rotate: a secret-store
    failure must be retried like a refused connection, not end the task for good."""
    attempts = 0

    async def flaky_connect():
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("the secret store did not answer")
        return await asyncpg.connect(database_url)

    sequencer = Sequencer(flaky_connect, None, poll_seconds=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(sequencer.run(stop))
    try:
        event_id, kind = uuid.uuid4(), f"test.{uuid.uuid4().hex[:8]}"
        await db.execute("INSERT INTO event_pending (id, type, payload) VALUES ($1, $2, '{}')", event_id, kind)
        await eventually_async(lambda: db.fetchval("SELECT seq FROM events WHERE id = $1", event_id),
                               timeout=20, what="the pending event sequenced after the failed connect")
        assert attempts >= 2 and not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
