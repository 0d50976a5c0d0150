"""Webhook signatures, checked with Stripe's SDK: any configured secret, at most 300 seconds old."""

from __future__ import annotations

import time

import pytest

from prognetwork.billing.webhooks import verify
from prognetwork.kit.problems import Problem
from tests.helpers.billing import signed, stripe_event

OLD, NEW = "whsec_old_secret_being_rotated_out", "whsec_new_secret_being_rotated_in"


def kind(problem: Problem) -> str:
    return f"{problem.status} {problem.kind}"


@pytest.mark.parametrize("secret", [OLD, NEW])
def test_any_secret_of_a_rotation_verifies(secret):
    event = stripe_event("invoice.paid", {"id": "in_1", "customer": "cus_1"})
    body, headers = signed(event, secret)
    verified = verify(body, headers["Stripe-Signature"], [OLD, NEW])
    assert (verified.id, verified.type, verified.object["id"], verified.label) == (
        event["id"], "invoice.paid", "in_1", "invoice.paid")


def test_an_unhandled_type_is_labelled_other():
    body, headers = signed(stripe_event("customer.created", {"id": "cus_1"}), NEW)
    assert verify(body, headers["Stripe-Signature"], [NEW]).label == "other"


@pytest.mark.parametrize(
    "body,signature,detail",
    [
        (b"{}", None, "Send the Stripe-Signature header"),
        (b"{}", "garbage", "matches none"),
        (b"\xff{}", "t=1,v1=00", "not UTF-8"),
    ],
)
def test_what_no_secret_signed_is_refused(body, signature, detail):
    with pytest.raises(Problem) as refused:
        verify(body, signature, [OLD, NEW])
    assert kind(refused.value) == "400 invalid-signature" and detail in refused.value.detail


def test_a_signature_older_than_the_tolerance_is_refused():
    body, headers = signed(stripe_event("invoice.paid", {"id": "in_1"}), NEW, timestamp=int(time.time()) - 301)
    with pytest.raises(Problem) as refused:
        verify(body, headers["Stripe-Signature"], [OLD, NEW])
    assert kind(refused.value) == "400 invalid-signature" and "300 seconds old" in refused.value.detail
    body, headers = signed(stripe_event("invoice.paid", {"id": "in_1"}), NEW, timestamp=int(time.time()) - 200)
    assert verify(body, headers["Stripe-Signature"], [NEW]).type == "invoice.paid"


def test_a_signed_body_that_is_no_event_is_refused():
    body, headers = signed({"object": "event", "type": "invoice.paid"}, NEW)
    with pytest.raises(Problem) as refused:
        verify(body, headers["Stripe-Signature"], [NEW])
    assert kind(refused.value) == "400 invalid-webhook"
