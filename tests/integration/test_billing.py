"""The billing service's routes against the Stripe fake (a real process, driven by the real SDK) and
real PostgreSQL: plans, who may check out, one customer per tenant, paying, the portal, tenant
isolation, and Stripe being down."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers.billing import (
    customer_of,
    events_of,
    metric,
    scoped_count,
    tenant_token,
)
from tests.helpers.polling import eventually_async
from tests.helpers.problems import assert_problem
from tests.helpers.tokens import bearer


@pytest.fixture
async def client(billing):
    async with billing.client() as client:
        yield client


@pytest.fixture
def owner(signing_key):
    """A tenant of its own and its owner's token."""
    tenant = uuid.uuid4()
    return tenant, bearer(tenant_token(signing_key, uuid.uuid4(), tenant, "owner"))


async def start_checkout(client, headers, plan: str = "pro") -> dict:
    response = await client.post("/v1/billing/checkout", json={"plan": plan}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def wait_for_status(client, headers, status: str) -> dict:
    async def current():
        body = (await client.get("/v1/billing/subscription", headers=headers)).json()
        return body if body["status"] == status else None

    return await eventually_async(current, timeout=30, what=f"subscription {status}")


async def test_plans_are_public_with_prices_seats_and_features(client):
    response = await client.get("/v1/billing/plans")
    assert response.status_code == 200
    plans = {plan["name"]: plan for plan in response.json()["plans"]}
    assert set(plans) == {"free", "pro", "enterprise"}
    assert plans["free"] == {"name": "free", "price_id": None, "seats": 3, "features": ["events"]}
    assert plans["pro"]["price_id"] == "price_pro_monthly" and plans["pro"]["seats"] == 20
    assert plans["enterprise"]["price_id"] == "price_enterprise_monthly" and plans["enterprise"]["seats"] == 200
    assert {"events", "sso"} <= set(plans["pro"]["features"])


async def test_checkout_needs_a_tenant_and_an_owner_or_admin(client, signing_key, db):
    tenant, user = uuid.uuid4(), uuid.uuid4()
    assert_problem(await client.post("/v1/billing/checkout", json={"plan": "pro"}), 401, "unauthenticated")

    no_tenant = bearer(tenant_token(signing_key, user, None))
    body = assert_problem(
        await client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=no_tenant), 403, "tenant-required")
    assert "/api/v1/auth/switch-tenant" in body["detail"]
    assert_problem(await client.get("/v1/billing/subscription", headers=no_tenant), 403, "tenant-required")

    member = bearer(tenant_token(signing_key, user, tenant, "member"))
    for path in ("/v1/billing/checkout", "/v1/billing/portal"):
        body = assert_problem(await client.post(path, json={"plan": "pro"}, headers=member), 403, "forbidden")
        assert "owner or admin" in body["detail"]
    # A member may still read what the tenant has.
    assert (await client.get("/v1/billing/subscription", headers=member)).status_code == 200
    assert (await client.get("/v1/billing/entitlements", headers=member)).status_code == 200
    assert await customer_of(db, tenant) is None

    admin = bearer(tenant_token(signing_key, user, tenant, "admin"))
    assert (await client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=admin)).status_code == 200


async def test_only_a_priced_plan_can_be_bought(client, owner):
    _, headers = owner
    body = assert_problem(
        await client.post("/v1/billing/checkout", json={"plan": "platinum"}, headers=headers), 422, "unknown-plan")
    assert "pro" in body["detail"]
    assert_problem(
        await client.post("/v1/billing/checkout", json={"plan": "free"}, headers=headers), 422, "plan-not-purchasable")


async def test_two_checkouts_share_the_tenants_one_stripe_customer(client, owner, db):
    tenant, headers = owner
    first = await start_checkout(client, headers)
    second = await start_checkout(client, headers, "enterprise")
    assert first["session_id"] != second["session_id"]
    assert first["url"].startswith("http") and second["url"].startswith("http")
    assert await customer_of(db, tenant) is not None
    assert await db.fetchval("SELECT count(*) FROM billing_customers WHERE tenant_id = $1", tenant) == 1
    [created] = await events_of(db, tenant, "billing.customer_created")
    assert created == {"tenant_id": str(tenant), "customer_id": await customer_of(db, tenant)}
    started = await events_of(db, tenant, "billing.checkout_started")
    assert [e["plan"] for e in started] == ["pro", "enterprise"]


async def test_a_paid_checkout_makes_the_tenant_pro(billing, client, owner, db):
    tenant, headers = owner
    response = await client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=headers)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    session = response.json()
    assert billing.fake.pay(session["url"]).status_code == 303

    subscription = await wait_for_status(client, headers, "active")
    assert subscription["plan"] == "pro" and subscription["seats"] == 20
    assert subscription["cancel_at_period_end"] is False and subscription["current_period_end"]
    entitlements = (await client.get("/v1/billing/entitlements", headers=headers)).json()
    assert entitlements["plan"] == "pro" and entitlements["seats"] == 20 and "sso" in entitlements["features"]

    async def logged():
        changed = await events_of(db, tenant, "billing.subscription_changed")
        granted = await events_of(db, tenant, "billing.entitlements_changed")
        paid = await events_of(db, tenant, "billing.payment_succeeded")
        return (changed, granted, paid) if changed and granted and paid else None

    changed, granted, paid = await eventually_async(logged, timeout=30, what="billing events")
    assert changed[-1] == {"tenant_id": str(tenant), "plan": "pro", "status": "active", "seats": 20,
                           "cancel_at_period_end": False,
                           "current_period_end": changed[-1]["current_period_end"]}
    assert changed[-1]["current_period_end"].startswith(subscription["current_period_end"][:19])
    assert granted == [{"tenant_id": str(tenant), "plan": "pro", "seats": 20,
                        "features": entitlements["features"], "status": "active"}]
    assert paid[0]["tenant_id"] == str(tenant) and paid[0]["invoice_id"].startswith("in_")

    # A second subscription would bill twice: plan changes go through the portal.
    assert_problem(await client.post("/v1/billing/checkout", json={"plan": "enterprise"}, headers=headers),
                   409, "already-subscribed")


async def test_a_payment_whose_webhooks_have_not_arrived_still_blocks_a_second_subscription(billing, client, owner):
    _, headers = owner
    first = (await client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=headers)).json()
    billing.fake.pause()  # paid at Stripe, not yet told to us
    try:
        assert billing.fake.pay(first["url"]).status_code == 303
        assert (await client.get("/v1/billing/subscription", headers=headers)).json()["status"] == "none"
        problem = assert_problem(await client.post("/v1/billing/checkout", json={"plan": "enterprise"},
                                                   headers=headers), 409, "already-subscribed")
        assert "pro" in problem["detail"]
    finally:
        billing.fake.resume()


async def test_the_portal_opens_once_the_tenant_is_a_stripe_customer(client, owner):
    _, headers = owner
    body = assert_problem(await client.post("/v1/billing/portal", headers=headers), 409, "no-billing-account")
    assert "/api/v1/billing/checkout" in body["detail"]
    await start_checkout(client, headers)
    response = await client.post("/v1/billing/portal", headers=headers)
    assert response.status_code == 200 and response.json()["url"].startswith("http")
    assert response.headers["cache-control"] == "no-store"


async def test_a_tenant_sees_only_its_own_subscription(billing, client, signing_key, db):
    paying, other = uuid.uuid4(), uuid.uuid4()
    paying_headers = bearer(tenant_token(signing_key, uuid.uuid4(), paying, "owner"))
    other_headers = bearer(tenant_token(signing_key, uuid.uuid4(), other, "member"))
    billing.fake.pay((await start_checkout(client, paying_headers))["url"])
    await wait_for_status(client, paying_headers, "active")

    response = await client.get("/v1/billing/subscription", headers=other_headers)
    assert response.json() == {"plan": "free", "status": "none", "current_period_end": None,
                               "cancel_at_period_end": False, "seats": 3}
    assert (await client.get("/v1/billing/entitlements", headers=other_headers)).json() == {
        "plan": "free", "seats": 3, "features": ["events"]}
    # Row-level security, not only the queries' WHERE: scoped to the other tenant, a query with no
    # filter at all finds none of the paying tenant's rows.
    for table in ("billing_subscriptions", "billing_customers"):
        assert await scoped_count(db, table, paying) == 1
        assert await scoped_count(db, table, other) == 0
    assert await db.fetchval("SELECT count(*) FROM billing_subscriptions WHERE tenant_id = $1", paying) == 1


@pytest.mark.parametrize(
    "status,expected,kind,outcome",
    [(503, 503, "stripe-unavailable", "unavailable"), (401, 502, "stripe-error", "error")],
    ids=["stripe-down", "stripe-refuses"],
)
async def test_a_checkout_stripe_cannot_serve_is_a_problem_and_stores_nothing(
    billing, client, owner, db, status, expected, kind, outcome
):
    tenant, headers = owner
    before = metric("billing_stripe_requests_total", operation="customers.create", outcome=outcome)
    billing.fake.outage(status)
    try:
        response = await client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=headers)
    finally:
        billing.fake.end_outage()
    assert_problem(response, expected, kind)
    if expected == 503:
        assert response.headers["retry-after"]
    assert metric("billing_stripe_requests_total", operation="customers.create", outcome=outcome) == before + 1
    assert await customer_of(db, tenant) is None
    assert await events_of(db, tenant, "billing.customer_created") == []
    # Once Stripe answers again, the same request goes through.
    assert (await client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=headers)).status_code == 200
