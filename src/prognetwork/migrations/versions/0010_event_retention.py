"""event retention and checkpointed batch jobs

The event log stays append-only, with one exception: the retention job may DELETE the oldest
events, up to a bound it declares for its own transaction (`SET LOCAL prognetwork.event_retention_through`),
and never past an event a durable consumer has not handled yet (checked once per statement
against `consumer_cursors`). UPDATE and TRUNCATE stay refused for everyone.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from prognetwork.kit import tenancy
from prognetwork.kit.events import RETENTION_SETTING

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# The sequence up to which this transaction's retention may delete (0: nothing).
BOUND_FUNCTION = f"""CREATE FUNCTION event_retention_bound() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('{RETENTION_SETTING}', true), '')::bigint, 0) $$"""  # noqa: S608  (a constant)


def upgrade() -> None:
    op.create_table(
        "event_retention",
        sa.Column("id", sa.SmallInteger(), server_default="1", autoincrement=False, nullable=False),
        sa.Column("through_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("through_occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("removed", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_event_retention_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_retention")),
    )
    op.execute("INSERT INTO event_retention (id) VALUES (1)")
    op.create_table(
        "job_checkpoints",
        sa.Column("job", sa.String(length=100), nullable=False),
        sa.Column("run_key", sa.String(length=200), nullable=False),
        sa.Column("position", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("state", sa.String(length=20), server_default="running", nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("chunks", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("job", "run_key", name=op.f("pk_job_checkpoints")),
    )
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(length=200), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "tenant_id", "type", name=op.f("pk_usage_daily")),
    )
    op.create_index("ix_usage_daily_tenant_id_day", "usage_daily", ["tenant_id", "day"])
    # Events are appended in time order, so a BRIN index (a few pages for millions of rows) finds
    # a day's events, or those older than the retention cutoff, without reading the whole table.
    op.create_index("ix_events_occurred_at", "events", ["occurred_at"], postgresql_using="brin")
    op.execute(BOUND_FUNCTION)
    op.execute(
        """CREATE OR REPLACE FUNCTION events_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF TG_OP = 'DELETE' AND TG_LEVEL = 'ROW' THEN
                IF OLD.seq <= event_retention_bound() THEN
                  RETURN OLD;
                END IF;
              END IF;
              RAISE EXCEPTION 'the event log is append-only (% on events refused)', TG_OP;
            END $$"""
    )
    op.execute(
        """CREATE FUNCTION events_retention_spares_consumers() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE
              bound bigint := event_retention_bound();
              laggard record;
            BEGIN
              IF bound > 0 THEN
                SELECT name, position INTO laggard FROM consumer_cursors
                  WHERE position < bound ORDER BY position LIMIT 1;
                IF FOUND THEN
                  RAISE EXCEPTION 'event retention through % refused: consumer % has handled only up to %',
                    bound, laggard.name, laggard.position USING ERRCODE = 'insufficient_privilege';
                END IF;
              END IF;
              RETURN NULL;
            END $$"""
    )
    op.execute(
        "CREATE TRIGGER events_retention_spares_consumers BEFORE DELETE ON events "
        "FOR EACH STATEMENT EXECUTE FUNCTION events_retention_spares_consumers()"
    )
    # The tenant-scoped role (0005) reads no job state and writes none.
    op.execute(f"REVOKE ALL ON event_retention, job_checkpoints, usage_daily FROM {tenancy.TENANT_ROLE}")


def downgrade() -> None:
    op.execute("DROP TRIGGER events_retention_spares_consumers ON events")
    op.execute("DROP FUNCTION events_retention_spares_consumers()")
    op.execute(
        """CREATE OR REPLACE FUNCTION events_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              RAISE EXCEPTION 'the event log is append-only (% on events refused)', TG_OP;
            END $$"""
    )
    op.execute("DROP FUNCTION event_retention_bound()")
    op.drop_index("ix_events_occurred_at", table_name="events")
    op.drop_index("ix_usage_daily_tenant_id_day", table_name="usage_daily")
    op.drop_table("usage_daily")
    op.drop_table("job_checkpoints")
    op.drop_table("event_retention")
