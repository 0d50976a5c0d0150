"""platform operators read across tenants: an explicit scope the tenant policies admit

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27

`kit.tenancy.scope_all_tenants()` sets `app.all_tenants`; the function `prognetwork_all_tenants()`
reads it. Every tenant-scoped table gets one more permissive policy, FOR SELECT only, admitting
every row while that function is true. Permissive policies are OR-ed per command, so:

- a transaction scoped to one tenant (`scope()`, which clears the flag) reads exactly what it read
  before: the new policy admits nothing there;
- the operators' scope reads every tenant's rows, but INSERT, UPDATE, DELETE and row locks are
  still decided by the existing policies (0006, 0007: `tenant_isolation`, and on `tenants` and
  `tenant_members` the RESTRICTIVE `scoped_updates` / `scoped_deletes`), which admit the declared
  tenant's rows only, and that scope declares none.

The admin API's email listing (newest first, optionally for one recipient) gets its indexes too.
"""

from alembic import op

from prognetwork.kit import tenancy

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TENANT_SCOPED = (
    "tenants",
    "tenant_members",
    "tenant_invitations",
    "billing_customers",
    "billing_subscriptions",
)


def upgrade() -> None:
    for statement in tenancy.all_tenants_statements():
        op.execute(statement)
    for table in TENANT_SCOPED:
        for statement in tenancy.all_tenants_read_statements(table):
            op.execute(statement)
    op.create_index("ix_email_messages_created_at_id", "email_messages", ["created_at", "id"], unique=False)
    op.create_index(
        "ix_email_messages_recipient_created_at", "email_messages", ["recipient", "created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_email_messages_recipient_created_at", table_name="email_messages")
    op.drop_index("ix_email_messages_created_at_id", table_name="email_messages")
    for table in TENANT_SCOPED:
        op.execute(f"DROP POLICY IF EXISTS all_tenants_reads ON {table}")
    op.execute(f"DROP FUNCTION IF EXISTS {tenancy.ALL_TENANTS}")
