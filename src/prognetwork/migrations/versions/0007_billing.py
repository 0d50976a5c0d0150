"""billing: Stripe customers, subscriptions and the webhook events already handled

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from prognetwork.kit import tenancy

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TENANT_SCOPED = ("billing_customers", "billing_subscriptions")


def upgrade() -> None:
    op.create_table(
        "billing_customers",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_billing_customers")),
        sa.UniqueConstraint("stripe_customer_id", name=op.f("uq_billing_customers_stripe_customer_id")),
    )
    op.create_table(
        "billing_subscriptions",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("stripe_subscription_id", sa.String(length=255), nullable=False),
        sa.Column("plan", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=40), nullable=False),
        sa.Column("current_period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_at_period_end", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("seats", sa.Integer(), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_billing_subscriptions")),
    )
    # Global: Stripe's event ids are unique across tenants (models.py says why it is not scoped).
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=200), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    # 0005's default privileges cover tables its migrating user creates; granted here as well, so
    # a database migrated by another user still lets scoped transactions use these tables.
    for table in (*TENANT_SCOPED, "stripe_events"):
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {tenancy.TENANT_ROLE}")
    for table in TENANT_SCOPED:
        for statement in tenancy.isolate_statements(table):
            op.execute(statement)


def downgrade() -> None:
    for table in TENANT_SCOPED:
        for statement in tenancy.release_statements(table):
            op.execute(statement)
    op.drop_table("stripe_events")
    op.drop_table("billing_subscriptions")
    op.drop_table("billing_customers")
