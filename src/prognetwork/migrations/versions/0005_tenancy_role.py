"""tenancy: the role scoped transactions run as, and the functions row-level security policies call

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from alembic import op

from prognetwork.kit import tenancy

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in tenancy.role_statements():
        op.execute(statement)


def downgrade() -> None:
    # The role is cluster-wide (other databases may use it): only this database's grants go.
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM {tenancy.TENANT_ROLE}")
    op.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM {tenancy.TENANT_ROLE}"
    )
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {tenancy.TENANT_ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {tenancy.TENANT_ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {tenancy.TENANT_ROLE}")
    op.execute(f"DROP FUNCTION IF EXISTS {tenancy.CURRENT_TENANT}")
    op.execute(f"DROP FUNCTION IF EXISTS {tenancy.CURRENT_USER}")
