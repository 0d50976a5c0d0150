"""The Stripe fake's parts on their own: the SDK's form encoding read back, `expand`, the webhook
signature the SDK verifies, and a delivery that is given up after its last retry."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qsl, urlencode

import pytest
import stripe
from stripe._encode import _api_encode

from prognetwork.fakes.stripe import webhooks
from prognetwork.fakes.stripe.params import StripeError, as_list, expand, parse_form
from prognetwork.fakes.stripe.webhooks import Dispatcher, signature
from tests.helpers.polling import eventually_async
from tests.helpers.ports import free_port


def sdk_form(params: dict) -> list[tuple[str, str]]:
    """Parameters encoded exactly as the SDK puts them on the wire."""
    encoded = urlencode(list(_api_encode(params))).replace("%5B", "[").replace("%5D", "]")
    return parse_qsl(encoded, keep_blank_values=True)


def test_the_sdks_nested_encoding_reads_back_as_sent():
    sent = {
        "line_items": [{"price": "price_pro_monthly", "quantity": 2}, {"price": "price_x"}],
        "subscription_data": {"metadata": {"tenant_id": "t-1", "0": "digit key"}},
        "cancel_at_period_end": True,
        "expand": ["subscription", "customer"],
    }

    params = parse_form(sdk_form(sent))

    assert as_list(params["line_items"], "line_items") == [
        {"price": "price_pro_monthly", "quantity": "2"},
        {"price": "price_x"},
    ]
    assert params["subscription_data"]["metadata"] == {"tenant_id": "t-1", "0": "digit key"}
    assert params["cancel_at_period_end"] == "true"
    assert as_list(params["expand"], "expand") == ["subscription", "customer"]
    assert parse_form([("lookup_keys[]", "a"), ("lookup_keys[]", "b")]) == {"lookup_keys": ["a", "b"]}


def test_a_parameter_that_is_both_a_value_and_a_hash_is_refused():
    with pytest.raises(StripeError) as refused:
        parse_form([("metadata", "x"), ("metadata[a]", "b")])
    assert refused.value.status == 400


def test_expand_replaces_ids_and_refuses_unknown_paths():
    objects = {"sub_1": {"id": "sub_1", "object": "subscription"}}
    listed = {
        "object": "list",
        "data": [{"id": "cs_1", "subscription": "sub_1"}, {"id": "cs_2", "subscription": None}],
    }

    expanded = expand(listed, ["data.subscription"], objects.get)

    assert [s["subscription"] for s in expanded["data"]] == [objects["sub_1"], None]
    assert listed["data"][0]["subscription"] == "sub_1"
    with pytest.raises(StripeError, match="cannot be expanded"):
        expand(listed, ["data.nothing"], objects.get)


def test_the_webhook_signature_is_the_one_the_sdk_verifies():
    body = json.dumps(
        {"id": "evt_1", "object": "event", "type": "invoice.paid", "data": {"object": {}}}
    ).encode()
    header = signature(body, "whsec_abc", int(time.time()))

    assert stripe.Webhook.construct_event(body, header, "whsec_abc").id == "evt_1"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body + b" ", header, "whsec_abc")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(
            body, signature(body, "whsec_abc", int(time.time()) - 3600), "whsec_abc"
        )


async def test_a_delivery_nobody_accepts_is_retried_then_recorded_as_failed(monkeypatch):
    monkeypatch.setattr(webhooks, "RETRY_WAITS_SECONDS", (0.0, 0.0))
    unreachable = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    logged: list[dict] = []
    dispatcher = Dispatcher([unreachable], "whsec_abc", logged.append)
    dispatcher.start()
    try:
        dispatcher.publish({"id": "evt_1", "object": "event", "type": "invoice.paid", "data": {"object": {}}})

        async def failed() -> bool:
            return dispatcher.status("evt_1") == "failed"

        await eventually_async(failed, what="the delivery to be given up")
    finally:
        await dispatcher.stop()

    assert [(a["attempt"], a["status_code"]) for a in dispatcher.attempts] == [
        (1, None),
        (2, None),
        (3, None),
    ]
    assert all(a["error"] for a in dispatcher.attempts) and len(logged) == 3
