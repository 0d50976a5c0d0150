"""Stripe's object shapes for API version 2026-10-28.endive, built as plain JSON-ready dicts.

Only the fields a subscription billing integration reads are filled with meaning; the others carry
Stripe's neutral values (None, [], False) so that code reading them finds what Stripe would send.
In this API version a subscription's billing period lives on its items (`current_period_start`,
`current_period_end`), and an invoice names its subscription under
`parent.subscription_details.subscription`, not at the top level.
"""

from __future__ import annotations

import secrets
import string
import time

from prognetwork.fakes.stripe.params import Obj

API_VERSION = "2026-10-28.endive"
PERIOD_SECONDS = 30 * 24 * 3600
CHECKOUT_EXPIRY_SECONDS = 24 * 3600

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}_{''.join(secrets.choice(_ALPHABET) for _ in range(length))}"


def now() -> int:
    return int(time.time())


def product(product_id: str, name: str) -> Obj:
    return {
        "id": product_id,
        "object": "product",
        "active": True,
        "created": now(),
        "default_price": None,
        "description": None,
        "images": [],
        "livemode": False,
        "marketing_features": [],
        "metadata": {},
        "name": name,
        "package_dimensions": None,
        "shippable": None,
        "statement_descriptor": None,
        "tax_code": None,
        "type": "service",
        "unit_label": None,
        "updated": now(),
        "url": None,
    }


def monthly_price(price_id: str, product_id: str, unit_amount: int, nickname: str, lookup_key: str) -> Obj:
    return {
        "id": price_id,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": now(),
        "currency": "usd",
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": lookup_key,
        "metadata": {},
        "nickname": nickname,
        "product": product_id,
        "recurring": {
            "interval": "month",
            "interval_count": 1,
            "meter": None,
            "trial_period_days": None,
            "usage_type": "licensed",
        },
        "tax_behavior": "unspecified",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring",
        "unit_amount": unit_amount,
        "unit_amount_decimal": str(unit_amount),
    }


def customer(fields: Obj) -> Obj:
    """A customer with the given (already validated) email, name, description, phone, metadata."""
    return {
        "id": new_id("cus", 14),
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": now(),
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": None,
        "discount": None,
        "email": None,
        "invoice_prefix": "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(8)),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": {},
        "name": None,
        "next_invoice_sequence": 1,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
        **fields,
    }


def checkout_session(
    *,
    public_url: str,
    customer_id: str | None,
    customer_email: str | None,
    currency: str,
    amount: int,
    success_url: str | None,
    cancel_url: str | None,
    client_reference_id: str | None,
    metadata: dict[str, str],
) -> Obj:
    session_id = new_id("cs_test", 58)
    created = now()
    return {
        "id": session_id,
        "object": "checkout.session",
        "amount_subtotal": amount,
        "amount_total": amount,
        "cancel_url": cancel_url,
        "client_reference_id": client_reference_id,
        "created": created,
        "currency": currency,
        "customer": customer_id,
        "customer_creation": None if customer_id else "always",
        "customer_details": None,
        "customer_email": customer_email,
        "expires_at": created + CHECKOUT_EXPIRY_SECONDS,
        "invoice": None,
        "livemode": False,
        "locale": None,
        "metadata": metadata,
        "mode": "subscription",
        "payment_intent": None,
        "payment_method_types": ["card"],
        "payment_status": "unpaid",
        "status": "open",
        "submit_type": None,
        "subscription": None,
        "success_url": success_url,
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted",
        "url": f"{public_url}/checkout/{session_id}",
    }


def subscription_item(subscription_id: str, price: Obj, quantity: int, period_start: int) -> Obj:
    return {
        "id": new_id("si", 14),
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": period_start,
        "current_period_end": period_start + PERIOD_SECONDS,
        "current_period_start": period_start,
        "discounts": [],
        "metadata": {},
        "price": dict(price),
        "quantity": quantity,
        "subscription": subscription_id,
        "tax_rates": [],
    }


def subscription(
    subscription_id: str,
    customer_id: str,
    lines: list[tuple[Obj, int]],
    status: str,
    metadata: dict[str, str],
) -> Obj:
    started = now()
    items = [subscription_item(subscription_id, price, quantity, started) for price, quantity in lines]
    return {
        "id": subscription_id,
        "object": "subscription",
        "application": None,
        "billing_cycle_anchor": started,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": started,
        "currency": lines[0][0]["currency"],
        "customer": customer_id,
        "days_until_due": None,
        "default_payment_method": None,
        "description": None,
        "discounts": [],
        "ended_at": None,
        "items": {
            "object": "list",
            "data": items,
            "has_more": False,
            "total_count": len(items),
            "url": f"/v1/subscription_items?subscription={subscription_id}",
        },
        "latest_invoice": None,
        "livemode": False,
        "metadata": metadata,
        "pause_collection": None,
        "pending_setup_intent": None,
        "pending_update": None,
        "schedule": None,
        "start_date": started,
        "status": status,
        "test_clock": None,
        "trial_end": None,
        "trial_start": None,
    }


def subscription_amount(sub: Obj) -> int:
    return sum(int(item["price"]["unit_amount"]) * int(item["quantity"]) for item in sub["items"]["data"])


def invoice(sub: Obj, customer: Obj, *, public_url: str, billing_reason: str, paid: bool) -> Obj:
    """The invoice for `sub`'s current period: paid, or open after one failed attempt."""
    invoice_id = new_id("in")
    created = now()
    first_item = sub["items"]["data"][0]
    amount = subscription_amount(sub)
    number = f"{customer['invoice_prefix']}-{customer['next_invoice_sequence']:04d}"
    customer["next_invoice_sequence"] += 1
    lines = [
        {
            "id": new_id("il"),
            "object": "line_item",
            "amount": int(item["price"]["unit_amount"]) * int(item["quantity"]),
            "currency": sub["currency"],
            "description": f"{item['quantity']} × {item['price']['nickname']}",
            "discount_amounts": [],
            "discountable": True,
            "invoice": invoice_id,
            "livemode": False,
            "metadata": {},
            "parent": {
                "type": "subscription_item_details",
                "invoice_item_details": None,
                "subscription_item_details": {
                    "invoice_item": None,
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": sub["id"],
                    "subscription_item": item["id"],
                },
            },
            "period": {"start": item["current_period_start"], "end": item["current_period_end"]},
            "pricing": {
                "type": "price_details",
                "price_details": {"price": item["price"]["id"], "product": item["price"]["product"]},
                "unit_amount_decimal": item["price"]["unit_amount_decimal"],
            },
            "quantity": item["quantity"],
            "taxes": [],
        }
        for item in sub["items"]["data"]
    ]
    return {
        "id": invoice_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "ProgNetwork (development)",
        "amount_due": amount,
        "amount_overpaid": 0,
        "amount_paid": amount if paid else 0,
        "amount_remaining": 0 if paid else amount,
        "attempt_count": 1,
        "attempted": True,
        "auto_advance": not paid,
        "billing_reason": billing_reason,
        "collection_method": "charge_automatically",
        "created": created,
        "currency": sub["currency"],
        "customer": customer["id"],
        "customer_email": customer["email"],
        "customer_name": customer["name"],
        "description": None,
        "due_date": None,
        "ending_balance": 0,
        "hosted_invoice_url": f"{public_url}/invoices/{invoice_id}",
        "invoice_pdf": None,
        "lines": {
            "object": "list",
            "data": lines,
            "has_more": False,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None if paid else created + 3 * 24 * 3600,
        "number": number,
        "parent": {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": dict(sub["metadata"]), "subscription": sub["id"]},
        },
        "period_end": first_item["current_period_end"],
        "period_start": first_item["current_period_start"],
        "starting_balance": 0,
        "status": "paid" if paid else "open",
        "status_transitions": {
            "finalized_at": created,
            "marked_uncollectible_at": None,
            "paid_at": created if paid else None,
            "voided_at": None,
        },
        "subtotal": amount,
        "total": amount,
    }


def portal_session(public_url: str, customer_id: str, return_url: str | None) -> Obj:
    session_id = new_id("bps")
    return {
        "id": session_id,
        "object": "billing_portal.session",
        "configuration": "bpc_fake_default",
        "created": now(),
        "customer": customer_id,
        "flow": None,
        "livemode": False,
        "locale": None,
        "on_behalf_of": None,
        "return_url": return_url,
        "url": f"{public_url}/portal/{session_id}",
    }


def event(
    event_type: str,
    snapshot: Obj,
    *,
    previous: Obj | None,
    endpoints: int,
    request_id: str | None,
    idempotency_key: str | None,
) -> Obj:
    data: Obj = {"object": snapshot}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": now(),
        "data": data,
        "livemode": False,
        "pending_webhooks": endpoints,
        "request": {"id": request_id, "idempotency_key": idempotency_key},
        "type": event_type,
    }
