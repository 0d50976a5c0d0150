"""Stripe's webhooks, delivered over HTTP by the Stripe fake (or signed here): signatures, secret
rotation, duplicates, events out of order, failed payments, cancellation, and Stripe being down
while an event is handled."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.helpers.billing import (
    ROTATED_OUT_SECRET,
    WEBHOOK_PATH,
    customer_of,
    event_ids,
    events_of,
    metric,
    signed,
    stripe_event,
    subscription_id,
    tenant_token,
)
from tests.helpers.polling import eventually, eventually_async
from tests.helpers.problems import assert_problem
from tests.helpers.tokens import bearer

SUBSCRIPTION_CHANGED = "billing.subscription_changed"


@pytest.fixture
async def client(billing):
    async with billing.client() as client:
        yield client


@pytest.fixture
def owner(signing_key):
    tenant = uuid.uuid4()
    return tenant, bearer(tenant_token(signing_key, uuid.uuid4(), tenant, "owner"))


async def checkout_url(client, headers, plan: str = "pro") -> str:
    response = await client.post("/v1/billing/checkout", json={"plan": plan}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["url"]


async def wait_for(client, headers, path: str, **expected) -> dict:
    async def matches():
        body = (await client.get(path, headers=headers)).json()
        return body if all(body[k] == v for k, v in expected.items()) else None

    return await eventually_async(matches, timeout=30, what=f"{path} {expected}")


def delivered(fake, event_id: str) -> bool:
    return any(e["id"] == event_id and e["delivery_status"] == "delivered" for e in fake.events())


async def stored_event(db, event_id: str) -> bool:
    return await db.fetchval("SELECT count(*) FROM stripe_events WHERE id = $1", event_id) == 1


@pytest.mark.parametrize(
    "case", ["unsigned", "wrong-secret", "stale", "tampered", "not-utf8"],
)
async def test_a_body_stripe_did_not_sign_recently_is_refused_and_changes_nothing(client, db, case):
    event = stripe_event("customer.subscription.updated", {"id": "sub_x", "customer": "cus_x"})
    body, headers = signed(event, ROTATED_OUT_SECRET)
    if case == "unsigned":
        del headers["Stripe-Signature"]
    elif case == "wrong-secret":
        body, headers = signed(event, "whsec_somebody_elses_secret")
    elif case == "stale":
        body, headers = signed(event, ROTATED_OUT_SECRET, timestamp=int(time.time()) - 301)
    elif case == "tampered":
        body = body.replace(b"cus_x", b"cus_y")
    else:
        body = b"\xff\xfe" + body
    before = metric("billing_webhook_events_total", type="unverified", outcome="invalid_signature")
    problem = assert_problem(await client.post(WEBHOOK_PATH, content=body, headers=headers), 400, "invalid-signature")
    if case == "stale":
        assert "300 seconds old" in problem["detail"]
    assert metric("billing_webhook_events_total", type="unverified", outcome="invalid_signature") == before + 1
    assert not await stored_event(db, event["id"])


async def test_either_secret_of_a_rotation_verifies(billing, client, db):
    for secret in (ROTATED_OUT_SECRET, billing.fake.webhook_secret):
        event = stripe_event("customer.created", {"id": f"cus_{uuid.uuid4().hex}", "object": "customer"})
        body, headers = signed(event, secret)
        response = await client.post(WEBHOOK_PATH, content=body, headers=headers)
        assert response.status_code == 200 and response.json() == {"received": True, "outcome": "ignored"}
        assert await stored_event(db, event["id"])


async def test_a_verified_body_that_is_no_event_is_refused(client):
    body, headers = signed({"id": "evt_x", "type": "invoice.paid"}, ROTATED_OUT_SECRET)
    assert_problem(await client.post(WEBHOOK_PATH, content=body, headers=headers), 400, "invalid-webhook")


async def test_an_event_about_a_customer_that_is_not_ours_is_ignored(client, db):
    event = stripe_event("customer.subscription.updated", {"id": "sub_x", "customer": "cus_nobody_knows"})
    body, headers = signed(event, ROTATED_OUT_SECRET)
    response = await client.post(WEBHOOK_PATH, content=body, headers=headers)
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    assert await stored_event(db, event["id"])


async def test_a_redelivered_event_changes_nothing(billing, client, owner, db):
    tenant, headers = owner
    billing.fake.pay(await checkout_url(client, headers))
    await wait_for(client, headers, "/v1/billing/subscription", status="active", plan="pro")
    customer = await customer_of(db, tenant)
    [completed] = event_ids(billing.fake, customer, "checkout.session.completed")
    eventually(lambda: delivered(billing.fake, completed), timeout=30, what="the first delivery")
    changes = await events_of(db, tenant, SUBSCRIPTION_CHANGED)
    entitlements = await events_of(db, tenant, "billing.entitlements_changed")
    assert len(changes) == 1 and len(entitlements) == 1

    before = metric("billing_webhook_events_total", type="checkout.session.completed", outcome="duplicate")
    billing.fake.resend(completed)
    eventually(lambda: metric("billing_webhook_events_total", type="checkout.session.completed",
                              outcome="duplicate") == before + 1, timeout=30, what="the duplicate")
    assert await events_of(db, tenant, SUBSCRIPTION_CHANGED) == changes
    assert await events_of(db, tenant, "billing.entitlements_changed") == entitlements


async def test_events_out_of_order_leave_the_latest_state(billing, client, owner, db):
    tenant, headers = owner
    url = await checkout_url(client, headers)
    billing.fake.pause()
    try:
        billing.fake.pay(url)
    finally:
        billing.fake.resume(order="reverse")
    customer = await customer_of(db, tenant)
    sent = [e for e in billing.fake.events() if e["data"]["object"].get("customer") == customer]
    eventually(lambda: all(delivered(billing.fake, e["id"]) for e in sent), timeout=30, what="every delivery")
    ids = {e["id"] for e in sent}
    arrivals = list(dict.fromkeys(d["type"] for d in billing.fake.deliveries() if d["event_id"] in ids))
    assert arrivals == [e["type"] for e in reversed(sent)] and arrivals[-1] == "customer.subscription.created"
    # The newest first: the subscription's creation arrived last, and did not undo what came before.
    subscription = await wait_for(client, headers, "/v1/billing/subscription", status="active")
    assert subscription["plan"] == "pro"
    assert [e["status"] for e in await events_of(db, tenant, SUBSCRIPTION_CHANGED)] == ["active"]


async def test_a_declined_payment_is_reported_once(billing, client, owner, db):
    tenant, headers = owner
    failures = metric("billing_payment_failures_total")
    billing.fake.decline(await checkout_url(client, headers))
    (failed,) = await eventually_async(lambda: events_of(db, tenant, "billing.payment_failed"),
                                       timeout=30, what="billing.payment_failed")
    customer = await customer_of(db, tenant)
    assert failed["tenant_id"] == str(tenant) and failed["invoice_id"].startswith("in_")
    assert failed["amount_due"] > 0 and failed["currency"]
    assert metric("billing_payment_failures_total") == failures + 1
    # Never paid: the tenant keeps the free plan's limits.
    await wait_for(client, headers, "/v1/billing/subscription", status="incomplete")
    assert (await client.get("/v1/billing/entitlements", headers=headers)).json()["plan"] == "free"
    assert await events_of(db, tenant, "billing.entitlements_changed") == []

    [invoice_event] = event_ids(billing.fake, customer, "invoice.payment_failed")
    duplicates = metric("billing_webhook_events_total", type="invoice.payment_failed", outcome="duplicate")
    billing.fake.resend(invoice_event)
    eventually(lambda: metric("billing_webhook_events_total", type="invoice.payment_failed",
                              outcome="duplicate") == duplicates + 1, timeout=30, what="the duplicate")
    assert len(await events_of(db, tenant, "billing.payment_failed")) == 1
    assert metric("billing_payment_failures_total") == failures + 1


async def test_a_canceled_subscription_falls_back_to_the_free_plan(billing, client, owner, db):
    tenant, headers = owner
    billing.fake.pay(await checkout_url(client, headers))
    await wait_for(client, headers, "/v1/billing/entitlements", plan="pro")
    billing.fake.set_status(subscription_id(billing.fake, await customer_of(db, tenant)), "canceled")

    await wait_for(client, headers, "/v1/billing/entitlements", plan="free", seats=3, features=["events"])
    assert (await client.get("/v1/billing/subscription", headers=headers)).json()["status"] == "canceled"
    granted = await events_of(db, tenant, "billing.entitlements_changed")
    assert [(e["plan"], e["seats"], e["status"]) for e in granted] == [("pro", 20, "active"), ("free", 3, "canceled")]
    assert granted[-1]["features"] == ["events"]


async def test_an_event_handled_while_stripe_is_down_is_refused_then_handled_when_resent(billing, client, owner, db):
    tenant, headers = owner
    billing.fake.pay(await checkout_url(client, headers))
    await wait_for(client, headers, "/v1/billing/entitlements", plan="pro")
    customer = await customer_of(db, tenant)
    subscription = subscription_id(billing.fake, customer)
    known = set(event_ids(billing.fake, customer, "customer.subscription.deleted"))

    billing.fake.outage(503)
    try:
        billing.fake.set_status(subscription, "canceled")
        [event_id] = eventually(
            lambda: [e for e in event_ids(billing.fake, customer, "customer.subscription.deleted") if e not in known],
            timeout=30, what="the cancellation's event")

        def refused() -> bool:
            return any(d["event_id"] == event_id and d["status_code"] == 503 for d in billing.fake.deliveries())

        eventually(refused, timeout=30, what="a delivery answered 503")
        assert not await stored_event(db, event_id)
        assert (await client.get("/v1/billing/entitlements", headers=headers)).json()["plan"] == "pro"
    finally:
        billing.fake.end_outage()
    billing.fake.resend(event_id)
    await wait_for(client, headers, "/v1/billing/entitlements", plan="free")
    assert await stored_event(db, event_id)
    assert [e["plan"] for e in await events_of(db, tenant, "billing.entitlements_changed")] == ["pro", "free"]
