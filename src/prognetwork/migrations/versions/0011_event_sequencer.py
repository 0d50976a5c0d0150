"""the event sequencer: appends go to event_pending, a sequencer moves them into events in order

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27

Appends no longer take a lock held until commit (kit/events.py): a writer inserts its event into
`event_pending`, and a sequencer step (one at a time, under an advisory lock of its own) moves
committed pending events into `events`, drawing `seq` then, so sequence numbers still become
visible in order. `events` and its append-only triggers are unchanged.

A sequencer step is one call of `prognetwork_sequence_events(batch)`: one round trip. It runs in
the caller's transaction (READ COMMITTED, which it checks): with nothing pending it returns 0 and
takes no lock; otherwise it takes the sequencer's transaction-level advisory lock, then, in a
statement of its own (a volatile function's statements each take a fresh snapshot, this one after
the lock was granted), moves the oldest `batch` pending events into `events` in `entry` order —
the INSERT draws seq as the sorted rows come — and notifies listeners once, with the newest seq.

`event_pending` is only ever inserted into (by writers) and deleted from (by the sequencer): a
trigger refuses UPDATE and TRUNCATE whoever connects, and the tenant-scoped role (0005) may insert
and read its own insert back (RETURNING), never delete. It is a queue with a high turnover, so
autovacuum visits it after every thousand dead rows rather than after a fifth of the table.

Idempotent publications (`event_publications`, 0002) record their event's id instead of its
sequence number, which the publishing transaction no longer knows. `event_seq` stays (expand, then
contract): the previous release still writes it while a rolling deploy replaces it, and the new
code reads it where `event_id` is missing. A later migration drops it.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from prognetwork.kit import tenancy

# As kit.events has them today; a migration keeps the values it was written with.
CHANNEL = "prog_events"
# kit.events.APPEND_LOCK_KEY: the lock the previous release's appends hold until commit, so that
# during a rolling deploy its appends and the new steps take turns (see kit.events).
SEQUENCER_LOCK_KEY = 0x70726F67

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

COLUMNS = "id, type, tenant_id, user_id, private, payload, trace_context, occurred_at"
STEP_FUNCTION = f"""CREATE FUNCTION prognetwork_sequence_events(batch integer) RETURNS integer
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
      moved integer;
      newest bigint;
    BEGIN
      IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'a sequencer step needs READ COMMITTED, not %', current_setting('transaction_isolation');
      END IF;
      IF NOT EXISTS (SELECT FROM event_pending) THEN
        RETURN 0;
      END IF;
      PERFORM pg_advisory_xact_lock({SEQUENCER_LOCK_KEY});
      -- A range of the primary key, not "IN (the oldest batch)": an index scan even behind a
      -- backlog of millions (the IN form hash-joins a scan of the whole table).
      WITH taken AS (
        DELETE FROM event_pending
        WHERE entry <= (SELECT max(entry) FROM (SELECT entry FROM event_pending ORDER BY entry LIMIT batch) AS oldest)
        RETURNING entry, {COLUMNS}
      ), sequenced AS (
        -- An id already in the log (a pending row restored beside the event it became) is dropped,
        -- not a failure that would stop every later step.
        INSERT INTO events ({COLUMNS}) SELECT {COLUMNS} FROM taken ORDER BY entry
        ON CONFLICT (id) DO NOTHING RETURNING seq
      )
      SELECT count(*), max(seq) INTO moved, newest FROM sequenced;
      IF moved > 0 THEN
        PERFORM pg_notify('{CHANNEL}', newest::text);
      END IF;
      RETURN moved;
    END $$"""  # noqa: S608  (constants only)


def upgrade() -> None:
    op.create_table(
        "event_pending",
        sa.Column("entry", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(length=200), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("private", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("trace_context", sa.String(length=200), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("entry", name=op.f("pk_event_pending")),
        postgresql_with={"autovacuum_vacuum_scale_factor": "0", "autovacuum_vacuum_threshold": "1000"},
    )
    op.execute(
        """CREATE FUNCTION event_pending_is_a_queue() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              RAISE EXCEPTION 'pending events are only inserted and sequenced (% on event_pending refused)', TG_OP;
            END $$"""
    )
    op.execute(
        "CREATE TRIGGER event_pending_no_update BEFORE UPDATE ON event_pending "
        "FOR EACH ROW EXECUTE FUNCTION event_pending_is_a_queue()"
    )
    op.execute(
        "CREATE TRIGGER event_pending_no_truncate BEFORE TRUNCATE ON event_pending "
        "FOR EACH STATEMENT EXECUTE FUNCTION event_pending_is_a_queue()"
    )
    # 0005's default privileges granted the scoped role everything on new tables: it appends
    # (inside a tenant scope) and reads back what it inserted; it never removes a pending event.
    op.execute(f"REVOKE ALL ON event_pending FROM {tenancy.TENANT_ROLE}")
    op.execute(f"GRANT SELECT, INSERT ON event_pending TO {tenancy.TENANT_ROLE}")
    op.execute(STEP_FUNCTION)

    op.add_column("event_publications", sa.Column("event_id", sa.Uuid(), nullable=True))
    op.execute(
        "UPDATE event_publications AS p SET event_id = e.id FROM events AS e WHERE e.seq = p.event_seq"
    )


def downgrade() -> None:
    # Pending events are committed events: they go into the log (in order) before their table goes.
    # The table lock first: appends in flight finish (and are moved), later ones wait, then fail
    # once the table is gone, so no committed event is dropped with it. The advisory lock alone
    # does not stop writers.
    op.execute("LOCK TABLE event_pending IN ACCESS EXCLUSIVE MODE")
    op.execute(f"SELECT pg_advisory_xact_lock({SEQUENCER_LOCK_KEY})")  # no sequencer step meanwhile
    op.execute(
        f"""WITH moved AS (DELETE FROM event_pending RETURNING entry, {COLUMNS})
            INSERT INTO events ({COLUMNS}) SELECT {COLUMNS} FROM moved ORDER BY entry
            ON CONFLICT (id) DO NOTHING"""  # noqa: S608
    )
    op.execute(
        "UPDATE event_publications AS p SET event_seq = e.seq FROM events AS e WHERE e.id = p.event_id"
    )
    op.drop_column("event_publications", "event_id")
    op.execute("DROP FUNCTION prognetwork_sequence_events(integer)")
    op.drop_table("event_pending")
    op.execute("DROP FUNCTION event_pending_is_a_queue()")
