"""Stripe's objects as this service reads them, and the tenant's subscription derived from them.

Pure functions over plain dicts (the SDK's objects after `to_dict()`), shaped as API version
2026-10-28.endive returns them: a subscription's price, quantity and period end live on its
first item (`items.data[0]`), an invoice names its subscription under
`parent.subscription_details.subscription`.

Which subscription is "the tenant's" when its customer has several (a declined checkout leaves an
incomplete one behind, a canceled one stays listed): one that is still live, else the newest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prognetwork.billing.plans import Catalogue

# A live subscription is one Stripe still bills (or has paused); the others are over or never began.
LIVE_STATUSES = frozenset({"active", "trialing", "past_due", "unpaid", "paused"})


@dataclass(frozen=True, slots=True)
class StripeSubscription:
    id: str
    customer: str
    status: str
    price_id: str | None
    quantity: int
    current_period_end: datetime | None
    cancel_at_period_end: bool
    created: int


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    """A tenant's subscription as stored (billing_subscriptions) and served."""

    stripe_subscription_id: str
    plan: str
    status: str
    current_period_end: datetime | None
    cancel_at_period_end: bool
    seats: int


def object_id(value: Any) -> str | None:
    """An id field that may come as the id itself or as the expanded object."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping):
        found = value.get("id")
        return found if isinstance(found, str) and found else None
    return None


def _timestamp(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) and value > 0 else None


def parse_subscription(data: Mapping[str, Any]) -> StripeSubscription:
    items = (data.get("items") or {}).get("data") or []
    first: Mapping[str, Any] = items[0] if items else {}
    quantity = first.get("quantity")
    return StripeSubscription(
        id=str(data["id"]),
        customer=object_id(data.get("customer")) or "",
        status=str(data.get("status") or ""),
        price_id=object_id(first.get("price")),
        quantity=quantity if isinstance(quantity, int) and quantity > 0 else 1,
        current_period_end=_timestamp(first.get("current_period_end")),
        cancel_at_period_end=bool(data.get("cancel_at_period_end")),
        created=int(data.get("created") or 0),
    )


def current_subscription(subscriptions: Iterable[StripeSubscription]) -> StripeSubscription | None:
    """The one that describes the tenant now: a live one if any, the newest among equals."""
    return max(subscriptions, key=lambda s: (s.status in LIVE_STATUSES, s.created, s.id), default=None)


def record_of(subscription: StripeSubscription, catalogue: Catalogue) -> SubscriptionRecord | None:
    """The stored form of `subscription`; None when its price is none of our plans."""
    plan = catalogue.priced(subscription.price_id)
    if plan is None:
        return None
    return SubscriptionRecord(
        stripe_subscription_id=subscription.id,
        plan=plan.name,
        status=subscription.status,
        current_period_end=subscription.current_period_end,
        cancel_at_period_end=subscription.cancel_at_period_end,
        seats=plan.seats * subscription.quantity,
    )


def subscription_payload(tenant_id: str, record: SubscriptionRecord) -> dict[str, Any]:
    """`billing.subscription_changed`'s payload."""
    return {
        "tenant_id": tenant_id,
        "plan": record.plan,
        "status": record.status,
        "current_period_end": record.current_period_end.isoformat() if record.current_period_end else None,
        "cancel_at_period_end": record.cancel_at_period_end,
        "seats": record.seats,
    }


@dataclass(frozen=True, slots=True)
class Invoice:
    id: str
    amount_due: int
    amount_paid: int
    currency: str


def parse_invoice(data: Mapping[str, Any]) -> Invoice:
    return Invoice(
        id=str(data.get("id") or ""),
        amount_due=int(data.get("amount_due") or 0),
        amount_paid=int(data.get("amount_paid") or 0),
        currency=str(data.get("currency") or ""),
    )
