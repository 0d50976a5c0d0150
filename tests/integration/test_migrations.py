"""The migrations and the models describe the same schema, and the history runs both ways."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from alembic import command

from prognetwork.kit import migrations
from tests.helpers.databases import create_database, drop_database, with_database
from tests.helpers.threads import in_thread


@pytest.fixture
def empty_database(servers):
    name = f"prog_test_{uuid.uuid4().hex[:12]}"
    in_thread(asyncio.run, create_database(servers.pg_admin_url, name))
    yield with_database(servers.pg_admin_url, name)
    in_thread(asyncio.run, drop_database(servers.pg_admin_url, name))


def test_models_match_the_migrated_schema(empty_database):
    in_thread(migrations.upgrade, empty_database)
    # Raises if autogenerate would emit any operation: a model changed without a migration.
    in_thread(command.check, migrations.alembic_config(empty_database))


def test_history_downgrades_and_upgrades_again(empty_database):
    in_thread(migrations.upgrade, empty_database)
    in_thread(migrations.downgrade, empty_database, "base")
    in_thread(migrations.upgrade, empty_database)
    in_thread(command.check, migrations.alembic_config(empty_database))


def test_the_sequencer_migration_keeps_publications_and_pending_events(empty_database):
    """0011 names a publication's event by id instead of seq; undone, it first sequences what is
    pending (committed events), in order, and names publications by seq again."""
    import asyncpg

    async def sql(query: str, *args):
        conn = await asyncpg.connect(empty_database)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    published, pending = uuid.uuid4(), [uuid.uuid4(), uuid.uuid4()]
    in_thread(migrations.upgrade, empty_database, "0010")
    in_thread(asyncio.run, sql("INSERT INTO events (id, type, payload) VALUES ($1, 'app.x', '{}')", published))
    in_thread(asyncio.run, sql("INSERT INTO event_publications (producer, idempotency_key, request_hash, event_seq) "
                               "SELECT 'p', 'k', 'h', seq FROM events WHERE id = $1", published))
    in_thread(migrations.upgrade, empty_database)
    rows = in_thread(asyncio.run, sql("SELECT event_id FROM event_publications WHERE idempotency_key = 'k'"))
    assert [r["event_id"] for r in rows] == [published]

    for event_id in pending:
        in_thread(asyncio.run, sql("INSERT INTO event_pending (id, type, payload) VALUES ($1, 'app.y', '{}')", event_id))
    in_thread(migrations.downgrade, empty_database, "0010")
    rows = in_thread(asyncio.run, sql("SELECT id FROM events ORDER BY seq"))
    assert [r["id"] for r in rows] == [published, *pending]
    rows = in_thread(asyncio.run, sql("SELECT event_seq FROM event_publications WHERE idempotency_key = 'k'"))
    assert [r["event_seq"] for r in rows] == [1]


def test_undoing_the_sequencer_migration_keeps_an_event_committed_while_it_runs(empty_database):
    """An append in flight when 0011 is undone commits into event_pending; the downgrade must wait
    for it and move it into the log, not drop it with the table."""
    import asyncpg

    async def scenario() -> list[uuid.UUID]:
        writer = await asyncpg.connect(empty_database)
        try:
            event_id = uuid.uuid4()
            transaction = writer.transaction()
            await transaction.start()
            await writer.execute("INSERT INTO event_pending (id, type, payload) VALUES ($1, 'app.z', '{}')", event_id)
            downgrade = asyncio.get_running_loop().run_in_executor(
                None, migrations.downgrade, empty_database, "0010"
            )

            async def downgrade_waits_for_the_table() -> bool:
                waiting = await writer.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE relation = 'event_pending'::regclass AND NOT granted"
                )
                return waiting > 0

            from tests.helpers.polling import eventually_async

            await eventually_async(downgrade_waits_for_the_table, timeout=30, what="the downgrade waiting on the table")
            await transaction.commit()
            await asyncio.wait_for(downgrade, 60)
            rows = await writer.fetch("SELECT id FROM events WHERE type = 'app.z'")
            return [r["id"] for r in rows], event_id
        finally:
            await writer.close()

    in_thread(migrations.upgrade, empty_database)
    found, event_id = in_thread(asyncio.run, scenario())
    assert found == [event_id]
