"""The billing service's SQL.

Every function on `billing_customers` or `billing_subscriptions` expects a transaction that called
`kit.tenancy.scope(session, tenant_id)` first (the service layer opens it); the policy then hides
every other tenant's rows, and the explicit `tenant_id` filters here only narrow what it shows.
`stripe_events` is global and needs no scope.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.billing.models import billing_customers, billing_subscriptions, stripe_events
from prognetwork.billing.state import SubscriptionRecord

# The first key of the two-key advisory locks billing takes per tenant (its own key space).
TENANT_LOCK_CLASS = 0x62696C6C  # "bill"
_LOCK_TENANT = text("SELECT pg_advisory_xact_lock(:class, hashtext(:tenant))")


async def lock_tenant(db: AsyncSession, tenant_id: uuid.UUID) -> None:
    """Serialise this transaction with every other one changing the tenant's billing state, until
    it ends (two webhooks about one tenant compare with what the other wrote, not what it read)."""
    await db.execute(_LOCK_TENANT, {"class": TENANT_LOCK_CLASS, "tenant": str(tenant_id)})


async def customer_of(db: AsyncSession, tenant_id: uuid.UUID) -> str | None:
    found = await db.execute(
        select(billing_customers.c.stripe_customer_id).where(billing_customers.c.tenant_id == tenant_id)
    )
    return found.scalar()


async def add_customer(db: AsyncSession, tenant_id: uuid.UUID, customer_id: str) -> bool:
    """Store the tenant's customer; False when it already had one (left as it was)."""
    added = await db.execute(
        insert(billing_customers)
        .values(tenant_id=tenant_id, stripe_customer_id=customer_id)
        .on_conflict_do_nothing()
        .returning(billing_customers.c.tenant_id)
    )
    return added.first() is not None


async def subscription_of(
    db: AsyncSession, tenant_id: uuid.UUID
) -> tuple[SubscriptionRecord, datetime] | None:
    """The tenant's stored subscription and when it was read from Stripe."""
    s = billing_subscriptions.c
    found = await db.execute(
        select(
            s.stripe_subscription_id,
            s.plan,
            s.status,
            s.current_period_end,
            s.cancel_at_period_end,
            s.seats,
            s.synced_at,
        ).where(s.tenant_id == tenant_id)
    )
    row = found.first()
    if row is None:
        return None
    record = SubscriptionRecord(
        stripe_subscription_id=row.stripe_subscription_id,
        plan=row.plan,
        status=row.status,
        current_period_end=row.current_period_end,
        cancel_at_period_end=row.cancel_at_period_end,
        seats=row.seats,
    )
    return record, row.synced_at


async def save_subscription(
    db: AsyncSession, tenant_id: uuid.UUID, record: SubscriptionRecord, synced_at: datetime
) -> None:
    values = dict(
        stripe_subscription_id=record.stripe_subscription_id,
        plan=record.plan,
        status=record.status,
        current_period_end=record.current_period_end,
        cancel_at_period_end=record.cancel_at_period_end,
        seats=record.seats,
        synced_at=synced_at,
    )
    await db.execute(
        insert(billing_subscriptions)
        .values(tenant_id=tenant_id, **values)
        .on_conflict_do_update(
            index_elements=[billing_subscriptions.c.tenant_id], set_={**values, "updated_at": func.now()}
        )
    )


async def mark_synced(db: AsyncSession, tenant_id: uuid.UUID, synced_at: datetime) -> None:
    """Note a read from Stripe that found the stored state unchanged."""
    await db.execute(
        billing_subscriptions.update()
        .where(billing_subscriptions.c.tenant_id == tenant_id)
        .values(synced_at=synced_at)
    )


async def event_seen(db: AsyncSession, event_id: str) -> bool:
    found = await db.execute(select(stripe_events.c.id).where(stripe_events.c.id == event_id))
    return found.first() is not None


async def claim_event(db: AsyncSession, event_id: str, event_type: str) -> bool:
    """Record a Stripe event as handled; False when it already was. A concurrent delivery of the
    same event waits here until the first one's transaction ends."""
    claimed = await db.execute(
        insert(stripe_events)
        .values(id=event_id, type=event_type)
        .on_conflict_do_nothing()
        .returning(stripe_events.c.id)
    )
    return claimed.first() is not None
