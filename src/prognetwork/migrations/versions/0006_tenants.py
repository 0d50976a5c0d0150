"""tenants: organisations, their members and invitations, under row-level security

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

The three tables are isolated with `kit.tenancy` (FORCEd policies, the scoped role of 0005, granted
its rights on them). Beyond the kit's tenant policy:

- `tenants` is also readable where the scoped user is a member (listing "my tenants");
- `tenant_members` is also readable for the scoped user's own rows (the same listing);
- those widenings are for reading only: a RESTRICTIVE policy keeps UPDATE and DELETE (and row
  locks) to the scoped tenant, so a "my tenants" transaction cannot change another tenant's rows.

`users.tenant_id` (from 0001, never used) goes: a token's tenant comes from switch-tenant.
"""

import sqlalchemy as sa
from alembic import op

from prognetwork.kit import tenancy

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TENANT_TABLES = ("tenants", "tenant_members", "tenant_invitations")
ROLE_CHECK = "role IN ('owner', 'admin', 'member')"
CURRENT_TENANT = tenancy.CURRENT_TENANT
CURRENT_USER = tenancy.CURRENT_USER
# (who may read, who may write) each table's rows; built from constants only.
READ_WIDENED = {
    "tenants": (
        f"id = {CURRENT_TENANT} OR EXISTS (SELECT 1 FROM tenant_members m "  # noqa: S608
        f"WHERE m.tenant_id = tenants.id AND m.user_id = {CURRENT_USER})",
        f"id = {CURRENT_TENANT}",
    ),
    "tenant_members": (
        f"tenant_id = {CURRENT_TENANT} OR user_id = {CURRENT_USER}",
        f"tenant_id = {CURRENT_TENANT}",
    ),
}


def _writes_stay_in_scope(table: str, own_tenant: str) -> list[str]:
    return [
        f"CREATE POLICY scoped_updates ON {table} AS RESTRICTIVE FOR UPDATE USING ({own_tenant})",
        f"CREATE POLICY scoped_deletes ON {table} AS RESTRICTIVE FOR DELETE USING ({own_tenant})",
    ]


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("slug", sa.String(length=64), nullable=False),
        sa.Column("plan", sa.String(length=50), server_default="free", nullable=False),
        sa.Column("seats", sa.Integer(), nullable=True),
        sa.Column("entitlements_seq", sa.BigInteger(), nullable=True),
        sa.Column("payment_notice_seq", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("slug", name=op.f("uq_tenants_slug")),
    )
    op.create_table(
        "tenant_members",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(ROLE_CHECK, name=op.f("ck_tenant_members_role")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_members_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_tenant_members_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "user_id", name=op.f("pk_tenant_members")),
    )
    op.create_index("ix_tenant_members_user_id", "tenant_members", ["user_id"], unique=False)
    op.create_table(
        "tenant_invitations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("invited_by", sa.Uuid(), nullable=True),
        sa.Column("token_digest", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(ROLE_CHECK, name=op.f("ck_tenant_invitations_role")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_invitations_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_invitations")),
    )
    op.create_index(
        "ix_tenant_invitations_pending",
        "tenant_invitations",
        ["tenant_id", "email"],
        unique=True,
        postgresql_where=sa.text("accepted_at IS NULL"),
    )
    # 0005's default privileges cover tables created by the user that ran it; granted here too, so a
    # database migrated by another user still lets scoped transactions use these tables.
    for table in TENANT_TABLES:
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {tenancy.TENANT_ROLE}")
    for table, (using, check) in READ_WIDENED.items():
        for statement in tenancy.isolate_statements(table, using=using, check=check):
            op.execute(statement)
        for statement in _writes_stay_in_scope(table, check):
            op.execute(statement)
    for statement in tenancy.isolate_statements("tenant_invitations"):
        op.execute(statement)
    op.drop_column("users", "tenant_id")


def downgrade() -> None:
    op.add_column("users", sa.Column("tenant_id", sa.Uuid(), nullable=True))
    # Dropping a table drops its policies, but the policy on tenants refers to tenant_members: it goes first.
    op.execute("DROP POLICY scoped_deletes ON tenants")
    op.execute("DROP POLICY scoped_updates ON tenants")
    for statement in tenancy.release_statements("tenants"):
        op.execute(statement)
    op.drop_index("ix_tenant_invitations_pending", table_name="tenant_invitations")
    op.drop_table("tenant_invitations")
    op.drop_index("ix_tenant_members_user_id", table_name="tenant_members")
    op.drop_table("tenant_members")
    op.drop_table("tenants")
