"""The billing service's tables: each tenant's Stripe customer and subscription, and the Stripe
events already handled.

`billing_customers` and `billing_subscriptions` are tenant-scoped (row-level security, see
kit.tenancy): every statement on them runs in a transaction that called `tenancy.scope()`.
`tenant_id` has no foreign key to the user service's `tenants`: that table is another service's,
which may live in another database. `stripe_events` is not tenant-scoped (see below).
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Integer, String, Table, Uuid, false, func

from prognetwork.kit.db import Base

billing_customers = Table(
    "billing_customers",
    Base.metadata,
    Column("tenant_id", Uuid, primary_key=True),
    Column("stripe_customer_id", String(255), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The tenant's current subscription as Stripe last described it (Stripe is the source of truth:
# webhooks only say "look again"). `synced_at` is when that description was read from Stripe, so a
# read that started earlier but commits later never overwrites a newer one.
billing_subscriptions = Table(
    "billing_subscriptions",
    Base.metadata,
    Column("tenant_id", Uuid, primary_key=True),
    Column("stripe_subscription_id", String(255), nullable=False),
    Column("plan", String(40), nullable=False),
    Column("status", String(40), nullable=False),
    Column("current_period_end", DateTime(timezone=True), nullable=True),
    Column("cancel_at_period_end", Boolean, nullable=False, server_default=false()),
    Column("seats", Integer, nullable=False),
    Column("synced_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# One row per Stripe event handled (or deliberately ignored): a redelivery finds its id here and
# changes nothing. Global, not tenant-scoped: the id is Stripe's and unique across tenants, the
# row holds no tenant data, some events belong to no tenant of ours, and the duplicate check must
# run before (and whether or not) the event's tenant is known.
stripe_events = Table(
    "stripe_events",
    Base.metadata,
    Column("id", String(255), primary_key=True),
    Column("type", String(200), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
