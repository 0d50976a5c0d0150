"""events: index for tenant-scoped reads (tenant members' streams and polling)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # CONCURRENTLY: the event log only grows; building the index must not block appends.
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_events_tenant_id_seq",
            "events",
            ["tenant_id", "seq"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_events_tenant_id_seq", table_name="events", postgresql_concurrently=True, if_exists=True
        )
