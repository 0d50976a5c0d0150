"""Stripe's webhooks: verified, deduplicated, and applied by asking Stripe again.

Stripe delivers events late, more than once and out of order, so an event is never applied as it
is: it only names the customer to look at. Invariants:

- A body is trusted only if `Stripe-Signature` verifies with one of the configured secrets (two
  during a rotation) and its timestamp is at most `TOLERANCE_SECONDS` old; otherwise 400.
- The tenant is the Stripe customer's `metadata.tenant_id`, and the subscription is the customer's
  current one, both read from Stripe's API before any transaction opens. An older event handled
  after a newer one therefore still stores the newest state. If Stripe cannot be reached the
  answer is 503, nothing is recorded, and Stripe delivers the event again later.
- Then one transaction: the event id goes into `stripe_events` (already there: a duplicate, and
  nothing changes), the tenant scope and lock are taken, the subscription is stored if Stripe's
  description of it changed, and the events follow: `billing.subscription_changed`,
  `billing.entitlements_changed` (only when what the tenant may use changed),
  `billing.payment_failed` / `billing.payment_succeeded` for invoices.
- A description read earlier than the stored one (`synced_at`) never replaces it: two deliveries
  racing each other leave the later read, not the later commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe
import structlog
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.billing import queries
from prognetwork.billing.problems import INVALID_SIGNATURE, INVALID_WEBHOOK
from prognetwork.billing.service import Billing
from prognetwork.billing.settings import BillingSettings
from prognetwork.billing.state import (
    SubscriptionRecord,
    current_subscription,
    object_id,
    parse_invoice,
    record_of,
    subscription_payload,
)
from prognetwork.kit import audit, events, tenancy

log = structlog.get_logger("prognetwork.billing.webhooks")
TOLERANCE_SECONDS = 300
HANDLED_TYPES = frozenset(
    {
        "checkout.session.completed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "invoice.paid",
        "invoice.payment_failed",
    }
)
# The `type` label: a handled type, OTHER for any other verified event (bounded cardinality),
# UNVERIFIED when the signature failed (its claimed type is not to be believed).
OTHER = "other"
UNVERIFIED = "unverified"
OUTCOMES = ("processed", "duplicate", "ignored", "invalid_signature", "error")

WEBHOOK_EVENTS = Counter(
    "billing_webhook_events", "Stripe webhook deliveries, by event type and outcome.", ("type", "outcome")
)
PAYMENT_FAILURES = Counter(
    "billing_payment_failures", "Invoice payments that failed (billing.payment_failed)."
)
for _type in (*sorted(HANDLED_TYPES), OTHER):
    for _outcome in OUTCOMES:
        if _outcome != "invalid_signature":
            WEBHOOK_EVENTS.labels(_type, _outcome)  # exported at 0, so rate() sees the first one
WEBHOOK_EVENTS.labels(UNVERIFIED, "invalid_signature")


@dataclass(frozen=True, slots=True)
class StripeEvent:
    id: str
    type: str
    object: dict[str, Any]

    @property
    def label(self) -> str:
        return self.type if self.type in HANDLED_TYPES else OTHER


def verify(payload: bytes, signature: str | None, secrets: list[str]) -> StripeEvent:
    """The event in `payload` if a configured secret signed it recently; a 400 problem otherwise."""
    if not signature:
        raise _refused("Send the Stripe-Signature header Stripe signs every webhook with.")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise _refused("The body is not what Stripe signed (it is not UTF-8).") from None
    stale = False
    for secret in secrets:
        try:
            event = stripe.Webhook.construct_event(text, signature, secret, tolerance=TOLERANCE_SECONDS)
        except stripe.SignatureVerificationError as exc:
            stale = stale or "tolerance" in (exc.user_message or "")
            continue
        except ValueError:  # verified, but not a snapshot event's JSON
            raise INVALID_WEBHOOK("The body is not a Stripe event.") from None
        return _parsed(event.to_dict())
    if stale:
        raise _refused(f"The signature's timestamp is more than {TOLERANCE_SECONDS} seconds old.")
    raise _refused("The Stripe-Signature matches none of this endpoint's signing secrets.")


def _refused(detail: str) -> Exception:
    WEBHOOK_EVENTS.labels(UNVERIFIED, "invalid_signature").inc()
    return INVALID_SIGNATURE(detail)


def _parsed(data: dict[str, Any]) -> StripeEvent:
    event_id, event_type = data.get("id"), data.get("type")
    found = (data.get("data") or {}).get("object")
    if (
        not isinstance(event_id, str)
        or not event_id
        or not isinstance(event_type, str)
        or not isinstance(found, dict)
    ):
        raise INVALID_WEBHOOK("The body is not a Stripe event: it needs an id, a type and data.object.")
    return StripeEvent(event_id, event_type, found)


class Webhooks:
    def __init__(self, billing: Billing, settings: BillingSettings) -> None:
        self.billing = billing
        self.settings = settings
        self.stripe = billing.stripe
        self.catalogue = billing.catalogue

    async def receive(
        self, db: AsyncSession, payload: bytes, signature: str | None, *, origin: audit.Origin | None = None
    ) -> str:
        """Verify and handle one delivery; its outcome (processed, duplicate or ignored)."""
        # Read per delivery (the secrets cache expires), so a secret added for a rotation verifies.
        event = verify(payload, signature, self.settings.stripe_webhook_secrets())
        try:
            outcome, payment_failed = await self._handle(db, event, origin)
        except Exception:
            WEBHOOK_EVENTS.labels(event.label, "error").inc()
            raise
        # Counted once committed: a rolled-back delivery is an error, counted above.
        WEBHOOK_EVENTS.labels(event.label, outcome).inc()
        if payment_failed:
            PAYMENT_FAILURES.inc()
        log.info("stripe webhook", event_id=event.id, event_type=event.type, outcome=outcome)
        return outcome

    async def _handle(
        self, db: AsyncSession, event: StripeEvent, origin: audit.Origin | None = None
    ) -> tuple[str, bool]:
        # Cheap first look: a redelivery is answered without asking Stripe anything (even while
        # Stripe is down). The insert below is what decides, if two deliveries race.
        async with db.begin():
            if await queries.event_seen(db, event.id):
                return "duplicate", False
        customer_id = object_id(event.object.get("customer"))
        if event.type not in HANDLED_TYPES or customer_id is None:
            return await self._record_only(db, event), False
        tenant_id = await self.stripe.customer_tenant(customer_id)
        if tenant_id is None:
            log.warning("stripe customer names no tenant of ours", event_id=event.id, customer=customer_id)
            return await self._record_only(db, event), False
        synced_at = datetime.now(UTC)
        current = current_subscription(await self.stripe.subscriptions(customer_id))
        record = record_of(current, self.catalogue) if current else None
        if current is not None and record is None:
            log.warning("subscription to a price of no plan", event_id=event.id, price=current.price_id)

        async with db.begin():
            if not await queries.claim_event(db, event.id, event.type):
                return "duplicate", False
            await tenancy.scope(db, tenant_id)
            await queries.lock_tenant(db, tenant_id)
            stored_customer = await queries.customer_of(db, tenant_id)
            if stored_customer is None:
                # The checkout that created it stored it too; this heals a store that failed after.
                await queries.add_customer(db, tenant_id, customer_id)
            elif stored_customer != customer_id:
                log.warning(
                    "stripe customer is not the tenant's",
                    event_id=event.id,
                    customer=customer_id,
                    tenant=str(tenant_id),
                )
                return "ignored", False
            if record is not None:
                await self._apply(db, tenant_id, record, synced_at, event, origin)
            payment_failed = event.type == "invoice.payment_failed"
            if payment_failed or event.type == "invoice.paid":
                await self._append_payment(db, tenant_id, event)
        return "processed", payment_failed

    async def _record_only(self, db: AsyncSession, event: StripeEvent) -> str:
        async with db.begin():
            claimed = await queries.claim_event(db, event.id, event.type)
        return "ignored" if claimed else "duplicate"

    async def _apply(
        self,
        db: AsyncSession,
        tenant_id: uuid.UUID,
        record: SubscriptionRecord,
        synced_at: datetime,
        event: StripeEvent,
        origin: audit.Origin | None = None,
    ) -> None:
        stored = await queries.subscription_of(db, tenant_id)
        previous = stored[0] if stored else None
        if stored is not None and stored[1] > synced_at:
            return  # a delivery that read Stripe after this one already stored what it saw
        if previous == record:
            await queries.mark_synced(db, tenant_id, synced_at)
            return
        await queries.save_subscription(db, tenant_id, record, synced_at)
        tenant = str(tenant_id)
        await events.append(
            db, "billing.subscription_changed", subscription_payload(tenant, record), tenant_id=tenant_id
        )
        # Stripe's doing (a checkout paid, a renewal failed, a plan changed in the portal), on the
        # platform's behalf: the system acted; the event that told us is in the details.
        await audit.record(
            db,
            "billing.subscription_changed",
            actor=audit.SYSTEM,
            target_type="tenant",
            target_id=tenant,
            tenant_id=tenant_id,
            origin=origin,
            details={
                "plan": record.plan,
                "status": record.status,
                "seats": record.seats,
                "cancel_at_period_end": record.cancel_at_period_end,
                "previous_plan": previous.plan if previous else None,
                "previous_status": previous.status if previous else None,
                "stripe_subscription_id": record.stripe_subscription_id,
                "stripe_event_id": event.id,
                "stripe_event_type": event.type,
            },
        )
        before, after = self.billing.entitlements_of(previous), self.billing.entitlements_of(record)
        if before != after:
            await events.append(
                db,
                "billing.entitlements_changed",
                {
                    "tenant_id": tenant,
                    "plan": after.plan,
                    "seats": after.seats,
                    "features": list(after.features),
                    "status": record.status,
                },
                tenant_id=tenant_id,
            )

    async def _append_payment(self, db: AsyncSession, tenant_id: uuid.UUID, event: StripeEvent) -> None:
        invoice = parse_invoice(event.object)
        base = {"tenant_id": str(tenant_id), "invoice_id": invoice.id, "currency": invoice.currency}
        if event.type == "invoice.payment_failed":
            payload = {**base, "amount_due": invoice.amount_due}
            await events.append(db, "billing.payment_failed", payload, tenant_id=tenant_id)
        else:
            payload = {**base, "amount_paid": invoice.amount_paid}
            await events.append(db, "billing.payment_succeeded", payload, tenant_id=tenant_id)
