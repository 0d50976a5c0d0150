"""users: disabled_at (a disabled account cannot log in; its sessions are revoked)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: a catalog-only change, no table rewrite or long lock.
    op.add_column("users", sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
    # Serves the purge of unverified registrations that were never completed.
    op.create_index(
        "ix_users_unverified_created_at",
        "users",
        ["created_at"],
        postgresql_where=sa.text("email_verified_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_users_unverified_created_at", table_name="users")
    op.drop_column("users", "disabled_at")
