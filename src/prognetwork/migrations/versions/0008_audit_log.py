"""audit log: who did what to whom, chained by hashes so an edit, deletion or reordering shows

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from prognetwork.kit import tenancy
from prognetwork.kit.audit import PURGE_SETTING

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

APPEND_ONLY = "prognetwork_audit_append_only"
INDEXES = {
    "ix_audit_log_action_seq": ["action", "seq"],
    "ix_audit_log_actor_label_seq": ["actor_label", "seq"],
    "ix_audit_log_actor_id_seq": ["actor_id", "seq"],
    "ix_audit_log_target_id_seq": ["target_id", "seq"],
    "ix_audit_log_tenant_id_seq": ["tenant_id", "seq"],
    "ix_audit_log_occurred_at": ["occurred_at"],
}


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("actor_label", sa.String(length=320), nullable=False),
        sa.Column("actor_role", sa.String(length=20), nullable=True),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("target_type", sa.String(length=50), nullable=False),
        sa.Column("target_id", sa.String(length=200), nullable=True),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_log")),
    )
    for name, columns in INDEXES.items():
        op.create_index(name, "audit_log", columns)
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("key_id", sa.String(length=100), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signature", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("seq", "key_id", name=op.f("pk_audit_checkpoints")),
    )
    # Append-only: no UPDATE, no TRUNCATE, and DELETE only from `kit.audit.purge`, which sets the
    # setting for its own transaction. A guard against mistakes; the hash chain is what shows
    # tampering by whoever can get past it (a superuser, the tables' owner dropping the trigger).
    op.execute(
        f"""CREATE OR REPLACE FUNCTION {APPEND_ONLY}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF TG_OP = 'DELETE' AND current_setting('{PURGE_SETTING}', true) = 'on' THEN
                RETURN OLD;
              END IF;
              RAISE EXCEPTION 'the audit log is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
            END $$"""
    )
    for table in ("audit_log", "audit_checkpoints"):
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {APPEND_ONLY}()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {APPEND_ONLY}()"
        )
    # Not tenant-scoped (no row-level security): platform operators read it across tenants and
    # tenants never read it. Changes made inside a tenant scope are recorded as the scoped role,
    # so it may read the newest record (to chain to it) and insert; never change or delete.
    # 0005's default privileges granted it more on every new table: taken back here.
    op.execute(f"REVOKE ALL ON audit_log, audit_checkpoints FROM {tenancy.TENANT_ROLE}")
    op.execute(f"GRANT SELECT, INSERT ON audit_log TO {tenancy.TENANT_ROLE}")


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    for name in INDEXES:
        op.drop_index(name, table_name="audit_log")
    op.drop_table("audit_log")
    op.execute(f"DROP FUNCTION IF EXISTS {APPEND_ONLY}()")
