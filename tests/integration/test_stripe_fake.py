"""The Stripe fake as the billing service meets it: a real process, driven by the real `stripe` SDK
(sync and async clients), its hosted checkout page submitted over HTTP, and its webhooks received
by a small server here and verified with `stripe.Webhook.construct_event`."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import httpx
import pytest
import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.helpers.polling import eventually
from tests.helpers.stripe_fake import StripeFake, fake_command, running_stripe_fake
from tests.helpers.threads import ThreadServer

PAID_EVENTS = ["customer.subscription.created", "checkout.session.completed", "invoice.paid"]
DECLINED_EVENTS = ["customer.subscription.created", "invoice.payment_failed"]


@dataclass
class Received:
    body: bytes
    signature: str | None
    content_type: str | None


class WebhookReceiver:
    """Records every webhook POSTed to `url`; answers 500 to the first `failures` of them."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.failures = 0
        self.server = ThreadServer(Starlette(routes=[Route("/hook", self._hook, methods=["POST"])]))
        self.url = f"{self.server.url}/hook"

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        if self.failures > 0:
            self.failures -= 1
            return Response("not now", 500)
        self.received.append(
            Received(body, request.headers.get("stripe-signature"), request.headers.get("content-type"))
        )
        return Response("ok")

    def events(self, secret: str) -> list[stripe.Event]:
        """Every webhook received so far, each verified as the billing service will verify it."""
        return [stripe.Webhook.construct_event(r.body, r.signature, secret) for r in self.received]

    def wait_for(self, count: int, secret: str) -> list[stripe.Event]:
        eventually(lambda: len(self.received) >= count, what=f"{count} webhooks")
        return self.events(secret)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def receiver():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def fake(receiver, tmp_path):
    with running_stripe_fake([receiver.url], tmp_path) as fake:
        yield fake


@pytest.fixture
def client(fake: StripeFake) -> stripe.StripeClient:
    return stripe.StripeClient(fake.api_key, base_addresses={"api": fake.url})


def open_checkout(
    client: stripe.StripeClient, price: str = "price_pro_monthly"
) -> tuple[stripe.Customer, stripe.checkout.Session]:
    customer = client.v1.customers.create(
        params={"email": "ada@example.com", "name": "Ada", "metadata": {"tenant_id": "t-1"}}
    )
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer.id,
            "line_items": [{"price": price, "quantity": 1}],
            "success_url": "https://app.example/billing/done?session={CHECKOUT_SESSION_ID}",
            "cancel_url": "https://app.example/billing/cancelled",
            "client_reference_id": "t-1",
            "metadata": {"tenant_id": "t-1"},
            "subscription_data": {"metadata": {"tenant_id": "t-1", "plan": "pro"}},
        }
    )
    return customer, session


def paid_subscription(client: stripe.StripeClient, fake: StripeFake) -> stripe.Subscription:
    customer, session = open_checkout(client)
    assert fake.pay(session.url).status_code == 303
    return client.v1.subscriptions.list(params={"customer": customer.id}).data[0]


def test_paying_the_checkout_page_subscribes_and_sends_signed_webhooks_in_order(client, fake, receiver):
    customer, session = open_checkout(client)
    assert (session.status, session.payment_status, session.subscription) == ("open", "unpaid", None)
    assert session.url == f"{fake.url}/checkout/{session.id}"
    assert "Subscribe" in httpx.get(session.url).text

    answer = fake.pay(session.url)

    assert answer.status_code == 303
    assert answer.headers["location"] == f"https://app.example/billing/done?session={session.id}"
    subscriptions = client.v1.subscriptions.list(params={"customer": customer.id}).data
    assert [s.status for s in subscriptions] == ["active"]
    sub = client.v1.subscriptions.retrieve(subscriptions[0].id)
    assert sub.metadata.to_dict() == {"tenant_id": "t-1", "plan": "pro"}
    item = sub["items"].data[0]  # `sub.items` is the dict method on every StripeObject
    assert (item.price.id, item.price.unit_amount, item.quantity) == ("price_pro_monthly", 2900, 1)
    assert item.current_period_end - item.current_period_start == 30 * 24 * 3600
    invoice = client.v1.invoices.retrieve(sub.latest_invoice)
    assert (invoice.status, invoice.amount_paid, invoice.parent.subscription_details.subscription) == (
        "paid",
        2900,
        sub.id,
    )
    completed = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["subscription"]})
    assert (completed.status, completed.payment_status, completed.subscription.id) == (
        "complete",
        "paid",
        sub.id,
    )

    events = receiver.wait_for(3, fake.webhook_secret)
    assert [e.type for e in events] == PAID_EVENTS
    assert all(e.api_version == stripe.api_version and e.livemode is False for e in events)
    assert events[0].data.object.id == sub.id and events[0].data.object.metadata["plan"] == "pro"
    assert events[1].data.object.subscription == sub.id and events[1].data.object.client_reference_id == "t-1"
    assert events[2].data.object.id == invoice.id
    assert receiver.received[0].content_type.startswith("application/json")
    eventually(
        lambda: [e["delivery_status"] for e in fake.events()] == ["delivered"] * 3, what="delivered status"
    )


def test_a_tampered_or_wrongly_signed_webhook_is_rejected_by_the_sdk(client, fake, receiver):
    _, session = open_checkout(client)
    fake.pay(session.url)
    receiver.wait_for(1, fake.webhook_secret)
    first = receiver.received[0]

    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(
            first.body.replace(b"active", b"canceled"), first.signature, fake.webhook_secret
        )
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(first.body, first.signature, "whsec_someone_else")


async def test_the_async_client_reaches_the_fake_over_plain_http(fake, receiver):
    client = stripe.StripeClient(fake.api_key, base_addresses={"api": fake.url})
    customer = await client.v1.customers.create_async(params={"email": "grace@example.com"})
    session = await client.v1.checkout.sessions.create_async(
        params={
            "mode": "subscription",
            "customer": customer.id,
            "line_items": [{"price": "price_enterprise_monthly", "quantity": 2}],
            "success_url": "https://app.example/done",
        }
    )
    assert session.amount_total == 2 * 49900

    fake.pay(session.url)

    listed = await client.v1.subscriptions.list_async(params={"customer": customer.id, "status": "active"})
    assert [s["items"].data[0].quantity for s in listed.data] == [2]
    prices = await client.v1.prices.list_async()
    assert sorted([p.id async for p in prices.auto_paging_iter()]) == [
        "price_enterprise_monthly",
        "price_pro_monthly",
    ]
    assert [e.type for e in receiver.wait_for(3, fake.webhook_secret)] == PAID_EVENTS


def test_a_declined_payment_leaves_an_incomplete_subscription_and_an_open_invoice(client, fake, receiver):
    customer, session = open_checkout(client)

    answer = fake.decline(session.url)

    assert answer.status_code == 303 and answer.headers["location"] == "https://app.example/billing/cancelled"
    events = receiver.wait_for(2, fake.webhook_secret)
    assert [e.type for e in events] == DECLINED_EVENTS
    sub = client.v1.subscriptions.list(params={"customer": customer.id, "status": "incomplete"}).data[0]
    invoice = client.v1.invoices.list(params={"customer": customer.id}).data[0]
    assert (invoice.status, invoice.attempted, invoice.amount_paid, invoice.id) == (
        "open",
        True,
        0,
        sub.latest_invoice,
    )
    assert events[1].data.object.id == invoice.id
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"


def test_paying_after_a_decline_activates_the_same_subscription(client, fake, receiver):
    customer, session = open_checkout(client)
    fake.decline(session.url)

    assert fake.pay(session.url).status_code == 303

    types = [e.type for e in receiver.wait_for(5, fake.webhook_secret)]
    assert types == [
        *DECLINED_EVENTS,
        "customer.subscription.updated",
        "checkout.session.completed",
        "invoice.paid",
    ]
    subs = client.v1.subscriptions.list(params={"customer": customer.id, "status": "all"}).data
    assert [s.status for s in subs] == ["active"]


def test_paying_a_completed_session_again_is_refused_and_creates_nothing(client, fake, receiver):
    customer, session = open_checkout(client)
    fake.pay(session.url)
    receiver.wait_for(3, fake.webhook_secret)

    again = fake.pay(session.url)

    assert again.status_code == 409 and "already completed" in again.json()["error"]["message"]
    assert len(client.v1.subscriptions.list(params={"customer": customer.id, "status": "all"}).data) == 1
    assert len(fake.events()) == 3


def test_resend_delivers_the_same_event_again_under_a_new_signature(client, fake, receiver):
    _, session = open_checkout(client)
    fake.pay(session.url)
    first = receiver.wait_for(3, fake.webhook_secret)[0]

    fake.resend(first.id)

    again = receiver.wait_for(4, fake.webhook_secret)[3]
    assert again.id == first.id and again.type == first.type
    assert receiver.received[3].body == receiver.received[0].body
    assert [d["event_id"] for d in fake.deliveries()].count(first.id) == 2


def test_held_webhooks_are_released_in_reverse_order(client, fake, receiver):
    fake.pause()
    _, session = open_checkout(client)
    fake.pay(session.url)
    assert [e["delivery_status"] for e in fake.events()] == ["held"] * 3
    assert receiver.received == []

    fake.resume("reverse")

    assert [e.type for e in receiver.wait_for(3, fake.webhook_secret)] == list(reversed(PAID_EVENTS))


def test_a_receiver_answering_500_is_retried_until_it_accepts(client, fake, receiver):
    receiver.failures = 2
    _, session = open_checkout(client)

    fake.pay(session.url)

    assert [e.type for e in receiver.wait_for(3, fake.webhook_secret)] == PAID_EVENTS
    first_id = fake.events()[0]["id"]
    attempts = [d["status_code"] for d in fake.deliveries() if d["event_id"] == first_id]
    assert attempts == [500, 500, 200]


def test_a_failed_renewal_makes_the_subscription_past_due(client, fake, receiver):
    sub = paid_subscription(client, fake)
    receiver.wait_for(3, fake.webhook_secret)

    fake.fail_payment(sub.id)

    events = receiver.wait_for(5, fake.webhook_secret)[3:]
    assert [e.type for e in events] == ["invoice.payment_failed", "customer.subscription.updated"]
    assert events[1].data.previous_attributes["status"] == "active"
    renewed = client.v1.subscriptions.retrieve(sub.id)
    assert renewed.status == "past_due" and renewed.latest_invoice == events[0].data.object.id
    assert client.v1.invoices.retrieve(renewed.latest_invoice).status == "open"


def test_setting_a_status_sends_updated_or_deleted(client, fake, receiver):
    sub = paid_subscription(client, fake)

    fake.set_status(sub.id, "unpaid")
    fake.set_status(sub.id, "canceled")

    events = receiver.wait_for(5, fake.webhook_secret)[3:]
    assert [e.type for e in events] == ["customer.subscription.updated", "customer.subscription.deleted"]
    assert events[0].data.object.status == "unpaid" and events[1].data.object.status == "canceled"
    assert client.v1.subscriptions.list(params={"customer": sub.customer}).data == []


def test_updating_and_cancelling_through_the_api_send_their_events(client, fake, receiver):
    sub = paid_subscription(client, fake)

    updated = client.v1.subscriptions.update(
        sub.id, params={"cancel_at_period_end": True, "metadata": {"plan": ""}}
    )
    canceled = client.v1.subscriptions.cancel(sub.id)

    assert updated.cancel_at_period_end is True and updated.metadata.to_dict() == {"tenant_id": "t-1"}
    assert updated.cancel_at == sub["items"].data[0].current_period_end
    assert canceled.status == "canceled" and canceled.ended_at is not None
    events = receiver.wait_for(5, fake.webhook_secret)[3:]
    assert [e.type for e in events] == ["customer.subscription.updated", "customer.subscription.deleted"]
    assert events[0].data.previous_attributes["cancel_at_period_end"] is False
    assert events[0].request.id is not None and events[0].request.idempotency_key is not None
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.cancel(sub.id)


def test_the_billing_portal_cancels_at_period_end(client, fake, receiver):
    sub = paid_subscription(client, fake)
    portal = client.v1.billing_portal.sessions.create(
        params={"customer": sub.customer, "return_url": "https://app.example/billing"}
    )
    assert portal.object == "billing_portal.session" and portal.url == f"{fake.url}/portal/{portal.id}"
    assert "Cancel at period end" in httpx.get(portal.url).text

    answer = httpx.post(portal.url, data={"subscription": sub.id, "action": "cancel"})

    assert answer.status_code == 303
    assert client.v1.subscriptions.retrieve(sub.id).cancel_at_period_end is True
    assert receiver.wait_for(4, fake.webhook_secret)[3].type == "customer.subscription.updated"


def test_an_idempotency_key_replays_the_first_answer_and_refuses_other_parameters(client, fake):
    options = {"idempotency_key": "create-ada-1"}
    first = client.v1.customers.create(params={"email": "ada@example.com"}, options=options)
    second = client.v1.customers.create(params={"email": "ada@example.com"}, options=options)

    assert second.id == first.id
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(client.v1.customers.list(params={"email": "ada@example.com"}).data) == 1
    with pytest.raises(stripe.IdempotencyError) as refused:
        client.v1.customers.create(params={"email": "grace@example.com"}, options=options)
    assert refused.value.http_status == 400


def test_requests_stripe_refuses_raise_the_sdks_own_errors(client, fake):
    with pytest.raises(stripe.InvalidRequestError) as unknown_price:
        client.v1.checkout.sessions.create(
            params={
                "mode": "subscription",
                "line_items": [{"price": "price_nope", "quantity": 1}],
                "success_url": "https://x",
            }
        )
    assert (unknown_price.value.code, unknown_price.value.param) == (
        "resource_missing",
        "line_items[0][price]",
    )
    with pytest.raises(stripe.InvalidRequestError) as absent:
        client.v1.subscriptions.retrieve("sub_nope")
    assert (absent.value.http_status, absent.value.code) == (404, "resource_missing")
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.billing_portal.sessions.create(params={"return_url": "https://x"})
    assert (missing.value.code, missing.value.param) == ("parameter_missing", "customer")
    with pytest.raises(stripe.InvalidRequestError) as unknown_param:
        client.v1.customers.create(params={"emial": "typo@example.com"})
    assert unknown_param.value.code == "parameter_unknown"
    unknown_path = httpx.get(
        f"{fake.url}/v1/nothing_here", headers={"Authorization": f"Bearer {fake.api_key}"}
    )
    assert unknown_path.status_code == 404 and unknown_path.json()["error"]["type"] == "invalid_request_error"


def test_a_wrong_api_key_raises_authentication_error(fake):
    stranger = stripe.StripeClient("sk_test_not_the_key", base_addresses={"api": fake.url})

    with pytest.raises(stripe.AuthenticationError) as refused:
        stranger.v1.customers.list()

    assert refused.value.http_status == 401 and "Invalid API Key" in refused.value.user_message


def test_an_outage_raises_api_error_until_it_ends(client, fake):
    fake.outage(503)

    with pytest.raises(stripe.APIError) as failed:
        client.v1.prices.retrieve("price_pro_monthly")

    assert failed.value.http_status == 503
    fake.end_outage()
    assert client.v1.prices.retrieve("price_pro_monthly").unit_amount == 2900


@pytest.mark.parametrize(
    "change",
    [
        {"--port": "eighty"},
        {"--api-key": "sk_live_real_money"},
        {"--webhook-url": "not-a-url"},
        {"--webhook-secret": None},
    ],
    ids=["bad-port", "live-key", "bad-url", "missing-secret"],
)
def test_bad_arguments_exit_non_zero_with_one_line(change):
    command = fake_command(8, "sk_test_x", "whsec_x", ["http://127.0.0.1:9/hook"])
    for flag, value in change.items():
        at = command.index(flag)
        if value is None:
            del command[at : at + 2]
        else:
            command[at + 1] = value

    result = subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "error" in result.stderr
