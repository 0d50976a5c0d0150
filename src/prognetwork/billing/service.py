"""What a tenant's members do with billing: see the plans, their subscription and entitlements,
start a checkout and open Stripe's billing portal. Independent of HTTP; owns its transactions.

Invariants:
- Every statement on a tenant-scoped table runs in a transaction that called `tenancy.scope()`
  for the caller's tenant first, so a query can only ever see that tenant's rows.
- No transaction is open while Stripe is called: a slow Stripe holds no connection or lock.
- A tenant has at most one Stripe customer: created with the idempotency key
  `customer:{tenant_id}` (concurrent first checkouts get the same one from Stripe) and stored
  with its `billing.customer_created` event in one transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.billing import queries
from prognetwork.billing.plans import ENTITLED_STATUSES, Catalogue, Entitlements, Plan
from prognetwork.billing.problems import (
    ALREADY_SUBSCRIBED,
    NO_BILLING_ACCOUNT,
    PLAN_NOT_PURCHASABLE,
    UNKNOWN_PLAN,
)
from prognetwork.billing.state import SubscriptionRecord
from prognetwork.billing.stripe_api import CheckoutSession, StripeApi
from prognetwork.kit import audit, events, tenancy


@dataclass(frozen=True, slots=True)
class TenantMember:
    """A verified caller acting inside a tenant (the access token's `sub`, `tid`, `tenant_role`)."""

    user_id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_role: str
    actor: audit.Actor | None = None  # as audit records name them; by user id when not given

    def as_actor(self) -> audit.Actor:
        return self.actor or audit.Actor(self.user_id, str(self.user_id))


class Billing:
    def __init__(self, catalogue: Catalogue, stripe: StripeApi) -> None:
        self.catalogue = catalogue
        self.stripe = stripe

    def plans(self) -> list[Plan]:
        return list(self.catalogue.plans)

    async def subscription(self, db: AsyncSession, tenant_id: uuid.UUID) -> SubscriptionRecord | None:
        """The tenant's subscription as Stripe last described it; None if it never had one."""
        # Even a read needs a transaction: the tenant scope lives only as long as one.
        async with db.begin():
            await tenancy.scope(db, tenant_id)
            stored = await queries.subscription_of(db, tenant_id)
        return stored[0] if stored else None

    async def entitlements(self, db: AsyncSession, tenant_id: uuid.UUID) -> Entitlements:
        return self.entitlements_of(await self.subscription(db, tenant_id))

    def entitlements_of(self, record: SubscriptionRecord | None) -> Entitlements:
        if record is None:
            return self.catalogue.fallback()
        return self.catalogue.entitlements(record.plan, record.status, record.seats)

    async def start_checkout(
        self,
        db: AsyncSession,
        member: TenantMember,
        plan_name: str,
        request_id: str,
        *,
        origin: audit.Origin | None = None,
    ) -> CheckoutSession:
        """A Stripe Checkout page where the tenant subscribes to `plan_name`."""
        plan = self._purchasable(plan_name)
        async with db.begin():
            await tenancy.scope(db, member.tenant_id)
            customer = await queries.customer_of(db, member.tenant_id)
            stored = await queries.subscription_of(db, member.tenant_id)
        live = stored[0].plan if stored is not None and stored[0].status in ENTITLED_STATUSES else None
        if live is None and customer is not None:
            # Stripe, not our copy: a subscription paid a moment ago may not have reached us yet.
            paying = [s for s in await self.stripe.subscriptions(customer) if s.status in ENTITLED_STATUSES]
            plan_of_paying = self.catalogue.priced(paying[0].price_id) if paying else None
            live = (plan_of_paying.name if plan_of_paying else "a plan") if paying else None
        if live is not None:
            # A second subscription would bill the tenant twice; plans change in the portal.
            raise ALREADY_SUBSCRIBED(
                f"This tenant already subscribes to {live}; change plans in the billing portal "
                "(POST /api/v1/billing/portal)."
            )
        if customer is None:
            customer = await self._create_customer(db, member)
        # The same request (its X-Request-ID) retried gets the same session back.
        session = await self.stripe.create_checkout_session(
            member.tenant_id, customer, plan, f"checkout:{member.tenant_id}:{plan.name}:{request_id}"
        )
        async with db.begin():
            await tenancy.scope(db, member.tenant_id)
            await events.append(
                db,
                "billing.checkout_started",
                {"tenant_id": str(member.tenant_id), "plan": plan.name, "session_id": session.id},
                user_id=member.user_id,
                tenant_id=member.tenant_id,
            )
            await audit.record(
                db,
                "billing.checkout_started",
                actor=member.as_actor(),
                target_type="tenant",
                target_id=str(member.tenant_id),
                tenant_id=member.tenant_id,
                origin=origin,
                details={"plan": plan.name, "checkout_session_id": session.id, "customer_id": customer},
            )
        return session

    async def open_portal(self, db: AsyncSession, member: TenantMember, request_id: str) -> str:
        """The URL of Stripe's billing portal for the tenant's customer."""
        async with db.begin():
            await tenancy.scope(db, member.tenant_id)
            customer = await queries.customer_of(db, member.tenant_id)
        if customer is None:
            raise NO_BILLING_ACCOUNT(
                "This tenant has no billing account yet: subscribe to a plan first (POST /api/v1/billing/checkout)."
            )
        return await self.stripe.create_portal_session(customer, f"portal:{member.tenant_id}:{request_id}")

    def _purchasable(self, name: str) -> Plan:
        plan = self.catalogue.named(name)
        sold = ", ".join(p.name for p in self.catalogue.plans if p.price_id)
        if plan is None:
            raise UNKNOWN_PLAN(f"There is no plan {name!r}; choose one of: {sold}.")
        if plan.price_id is None:
            raise PLAN_NOT_PURCHASABLE(
                f"The {plan.name} plan is what a tenant has without a subscription; choose one of: {sold}."
            )
        return plan

    async def _create_customer(self, db: AsyncSession, member: TenantMember) -> str:
        created = await self.stripe.create_customer(member.tenant_id)
        async with db.begin():
            await tenancy.scope(db, member.tenant_id)
            if await queries.add_customer(db, member.tenant_id, created):
                await events.append(
                    db,
                    "billing.customer_created",
                    {"tenant_id": str(member.tenant_id), "customer_id": created},
                    user_id=member.user_id,
                    tenant_id=member.tenant_id,
                )
                return created
            # A concurrent checkout stored it first (the same customer, by the idempotency key).
            stored = await queries.customer_of(db, member.tenant_id)
        return stored or created
