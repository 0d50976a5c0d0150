"""Which subscription describes a tenant, what it is stored as, and what it entitles the tenant to."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from prognetwork.billing.plans import DEFAULT_PLANS, Catalogue, Entitlements
from prognetwork.billing.state import (
    current_subscription,
    parse_subscription,
    record_of,
    subscription_payload,
)

CATALOGUE = Catalogue(DEFAULT_PLANS)
PERIOD_END = 1_900_000_000


def subscription(sub_id: str = "sub_1", status: str = "active", created: int = 100, price: str = "price_pro_monthly",
                 quantity: int = 1) -> dict:
    """A subscription as API version 2026-10-28.endive shapes it (period and price on its item)."""
    return {
        "id": sub_id, "object": "subscription", "customer": "cus_1", "status": status, "created": created,
        "cancel_at_period_end": False, "metadata": {"tenant_id": "t"},
        "items": {"object": "list", "data": [
            {"id": "si_1", "price": {"id": price, "object": "price"}, "quantity": quantity,
             "current_period_end": PERIOD_END},
        ]},
    }


def test_a_subscription_is_read_from_its_first_item():
    parsed = parse_subscription(subscription(quantity=2))
    assert (parsed.id, parsed.customer, parsed.status, parsed.price_id, parsed.quantity) == (
        "sub_1", "cus_1", "active", "price_pro_monthly", 2)
    assert parsed.current_period_end == datetime.fromtimestamp(PERIOD_END, UTC)


def test_the_current_subscription_is_a_live_one_else_the_newest():
    declined = parse_subscription(subscription("sub_old", "incomplete", created=100))
    paid = parse_subscription(subscription("sub_paid", "active", created=50))
    canceled = parse_subscription(subscription("sub_new", "canceled", created=200))
    assert current_subscription([declined, paid, canceled]).id == "sub_paid"
    assert current_subscription([declined, canceled]).id == "sub_new"
    assert current_subscription([]) is None


def test_seats_are_the_plans_times_the_quantity_and_unknown_prices_are_not_ours():
    record = record_of(parse_subscription(subscription(quantity=3)), CATALOGUE)
    assert record.plan == "pro" and record.seats == 60
    assert record_of(parse_subscription(subscription(price="price_somebody_elses")), CATALOGUE) is None
    payload = subscription_payload("t", record)
    assert payload["current_period_end"] == datetime.fromtimestamp(PERIOD_END, UTC).isoformat()
    assert set(payload) == {"tenant_id", "plan", "status", "current_period_end", "cancel_at_period_end", "seats"}


@pytest.mark.parametrize("status", ["active", "trialing", "past_due"])
def test_a_subscription_that_pays_grants_its_plan(status):
    assert CATALOGUE.entitlements("pro", status, 20) == Entitlements("pro", 20, ("events", "sso", "audit_log"))


@pytest.mark.parametrize("status", ["canceled", "unpaid", "incomplete_expired", "incomplete", "paused"])
def test_a_subscription_that_no_longer_pays_falls_back_to_the_free_plan(status):
    assert CATALOGUE.entitlements("enterprise", status, 200) == Entitlements("free", 3, ("events",))
