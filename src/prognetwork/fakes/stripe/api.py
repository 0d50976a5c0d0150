"""Stripe's v1 HTTP API, the subset a subscription integration uses, as the SDK calls it.

A call passes, in order: the outage switch (`/_fake/outage`), the API key (`Authorization: Bearer`
or HTTP Basic, as Stripe accepts), the route, the `Idempotency-Key` check, then its handler. An
idempotency key seen before with the same endpoint and parameters replays the first answer (with
`Idempotent-Replayed: true`) and changes nothing; with other parameters it is an
`idempotency_error`. As at Stripe, only answers that got past validation (here: successes) are
saved, for 24 hours.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from prognetwork.fakes.stripe import objects
from prognetwork.fakes.stripe.params import (
    Obj,
    StripeError,
    as_bool,
    as_dict,
    as_int,
    as_list,
    as_str,
    check_known,
    expand,
    merged_metadata,
    metadata,
    optional_str,
    page,
    parse_form,
    required_str,
)
from prognetwork.fakes.stripe.state import SUBSCRIPTION_STATUSES, Origin, Store

IDEMPOTENCY_SECONDS = 24 * 3600
PAGING = ("limit", "starting_after", "ending_before")


@dataclass
class Call:
    store: Store
    params: Obj
    path_id: str
    origin: Origin


Handler = Callable[[Call], Obj]


@dataclass
class Saved:
    """The first answer to an idempotency key, and what it was an answer to."""

    method: str
    path: str
    params: Obj
    body: bytes
    request_id: str
    at: float


# -- customers -------------------------------------------------------------------------------

CUSTOMER_FIELDS = ("email", "name", "description", "phone")


def _customer_fields(params: Obj) -> Obj:
    check_known(params, [*CUSTOMER_FIELDS, "metadata"])
    fields: Obj = {name: optional_str(params, name) for name in CUSTOMER_FIELDS if name in params}
    return fields


def create_customer(call: Call) -> Obj:
    fields = _customer_fields(call.params)
    fields["metadata"] = metadata(call.params.get("metadata", {}))
    return call.store.create_customer(fields)


def retrieve_customer(call: Call) -> Obj:
    check_known(call.params, [])
    return call.store.get(call.store.customers, "customer", call.path_id)


def update_customer(call: Call) -> Obj:
    customer = call.store.get(call.store.customers, "customer", call.path_id)
    customer.update(_customer_fields(call.params))
    if "metadata" in call.params:
        customer["metadata"] = merged_metadata(customer["metadata"], call.params["metadata"])
    return customer


def list_customers(call: Call) -> Obj:
    check_known(call.params, ["email", *PAGING])
    items = call.store.newest_first(call.store.customers)
    if (email := optional_str(call.params, "email")) is not None:
        items = [c for c in items if c["email"] == email]
    return page(items, call.params, "/v1/customers")


# -- products and prices -----------------------------------------------------------------------


def _filter_active(items: list[Obj], params: Obj) -> list[Obj]:
    if "active" in params:
        active = as_bool(params["active"], "active")
        items = [item for item in items if item["active"] == active]
    return items


def retrieve_product(call: Call) -> Obj:
    check_known(call.params, [])
    return call.store.get(call.store.products, "product", call.path_id)


def list_products(call: Call) -> Obj:
    check_known(call.params, ["active", *PAGING])
    return page(
        _filter_active(call.store.newest_first(call.store.products), call.params), call.params, "/v1/products"
    )


def retrieve_price(call: Call) -> Obj:
    check_known(call.params, [])
    return call.store.get(call.store.prices, "price", call.path_id)


def list_prices(call: Call) -> Obj:
    check_known(call.params, ["active", "product", "type", "lookup_keys", *PAGING])
    items = _filter_active(call.store.newest_first(call.store.prices), call.params)
    for name in ("product", "type"):
        if (wanted := optional_str(call.params, name)) is not None:
            items = [item for item in items if item[name] == wanted]
    if "lookup_keys" in call.params:
        keys = {as_str(key, "lookup_keys") for key in as_list(call.params["lookup_keys"], "lookup_keys")}
        items = [item for item in items if item["lookup_key"] in keys]
    return page(items, call.params, "/v1/prices")


# -- checkout and the billing portal -----------------------------------------------------------


def _checkout_lines(store: Store, value: Any) -> list[tuple[Obj, int]]:
    lines: list[tuple[Obj, int]] = []
    for index, raw in enumerate(as_list(value, "line_items")):
        param = f"line_items[{index}]"
        item = as_dict(raw, param)
        check_known(item, ["price", "quantity"], prefix=param)
        if not item.get("price"):
            raise StripeError(
                400,
                f"Missing required param: {param}[price].",
                code="parameter_missing",
                param=f"{param}[price]",
            )
        price = store.get(store.prices, "price", as_str(item["price"], f"{param}[price]"), f"{param}[price]")
        if price["type"] != "recurring":
            raise StripeError(400, "A subscription's prices must all be recurring.", param=f"{param}[price]")
        quantity = as_int(item["quantity"], f"{param}[quantity]", minimum=1) if "quantity" in item else 1
        lines.append((price, quantity))
    if not lines:
        raise StripeError(
            400, "Missing required param: line_items.", code="parameter_missing", param="line_items"
        )
    if len({price["currency"] for price, _ in lines}) > 1:
        raise StripeError(
            400, "All prices in a checkout session must share one currency.", param="line_items"
        )
    return lines


def create_checkout_session(call: Call) -> Obj:
    params, store = call.params, call.store
    allowed = ["mode", "customer", "customer_email", "line_items", "success_url", "cancel_url"]
    check_known(params, [*allowed, "client_reference_id", "metadata", "subscription_data"])
    mode = required_str(params, "mode")
    if mode != "subscription":
        raise StripeError(400, "This development fake supports only mode=subscription.", param="mode")
    customer_id = optional_str(params, "customer")
    customer_email = optional_str(params, "customer_email")
    if customer_id and customer_email:
        raise StripeError(
            400, "You may only specify one of these parameters: customer, customer_email.", param="customer"
        )
    if customer_id is not None:
        store.get(store.customers, "customer", customer_id, "customer")
    if "line_items" not in params:
        raise StripeError(
            400, "Missing required param: line_items.", code="parameter_missing", param="line_items"
        )
    subscription_data = as_dict(params.get("subscription_data", {}), "subscription_data")
    check_known(subscription_data, ["metadata"], prefix="subscription_data")
    return store.create_checkout_session(
        customer_id=customer_id,
        customer_email=customer_email,
        lines=_checkout_lines(store, params["line_items"]),
        success_url=optional_str(params, "success_url"),
        cancel_url=optional_str(params, "cancel_url"),
        client_reference_id=optional_str(params, "client_reference_id"),
        metadata=metadata(params.get("metadata", {})),
        subscription_metadata=metadata(subscription_data.get("metadata", {}), "subscription_data[metadata]"),
    )


def retrieve_checkout_session(call: Call) -> Obj:
    check_known(call.params, [])
    return call.store.get(call.store.checkout_sessions, "checkout.session", call.path_id)


def list_checkout_sessions(call: Call) -> Obj:
    check_known(call.params, ["customer", "subscription", "status", *PAGING])
    items = call.store.newest_first(call.store.checkout_sessions)
    for name in ("customer", "subscription", "status"):
        if (wanted := optional_str(call.params, name)) is not None:
            items = [item for item in items if item[name] == wanted]
    return page(items, call.params, "/v1/checkout/sessions")


def create_portal_session(call: Call) -> Obj:
    check_known(call.params, ["customer", "return_url"])
    customer_id = required_str(call.params, "customer")
    call.store.get(call.store.customers, "customer", customer_id, "customer")
    return call.store.create_portal_session(customer_id, optional_str(call.params, "return_url"))


# -- subscriptions -----------------------------------------------------------------------------


def retrieve_subscription(call: Call) -> Obj:
    check_known(call.params, [])
    return call.store.get(call.store.subscriptions, "subscription", call.path_id)


def list_subscriptions(call: Call) -> Obj:
    params = call.params
    check_known(params, ["customer", "price", "status", *PAGING])
    items = call.store.newest_first(call.store.subscriptions)
    if (customer := optional_str(params, "customer")) is not None:
        items = [s for s in items if s["customer"] == customer]
    if (price := optional_str(params, "price")) is not None:
        items = [s for s in items if any(i["price"]["id"] == price for i in s["items"]["data"])]
    status = optional_str(params, "status")
    if status is None:  # Stripe's default: every subscription that has not ended
        items = [s for s in items if s["status"] not in ("canceled", "incomplete_expired")]
    elif status == "ended":
        items = [s for s in items if s["status"] in ("canceled", "incomplete_expired")]
    elif status in SUBSCRIPTION_STATUSES:
        items = [s for s in items if s["status"] == status]
    elif status != "all":
        raise StripeError(
            400,
            f"Invalid status: must be one of {', '.join([*SUBSCRIPTION_STATUSES, 'ended', 'all'])}",
            param="status",
        )
    return page(items, params, "/v1/subscriptions")


def update_subscription(call: Call) -> Obj:
    check_known(call.params, ["cancel_at_period_end", "metadata"])
    sub = call.store.get(call.store.subscriptions, "subscription", call.path_id)
    cancel = call.params.get("cancel_at_period_end")
    return call.store.update_subscription(
        sub,
        call.origin,
        cancel_at_period_end=None if cancel is None else as_bool(cancel, "cancel_at_period_end"),
        metadata=merged_metadata(sub["metadata"], call.params["metadata"])
        if "metadata" in call.params
        else None,
    )


def cancel_subscription(call: Call) -> Obj:
    check_known(call.params, ["cancellation_details"])
    sub = call.store.get(call.store.subscriptions, "subscription", call.path_id)
    details = as_dict(call.params.get("cancellation_details", {}), "cancellation_details")
    check_known(details, ["comment", "feedback"], prefix="cancellation_details")
    return call.store.cancel_subscription(
        sub, call.origin, {key: as_str(v, key) for key, v in details.items()}
    )


# -- invoices and events ---------------------------------------------------------------------


def retrieve_invoice(call: Call) -> Obj:
    check_known(call.params, [])
    return call.store.get(call.store.invoices, "invoice", call.path_id)


def list_invoices(call: Call) -> Obj:
    check_known(call.params, ["customer", "subscription", "status", *PAGING])
    items = call.store.newest_first(call.store.invoices)
    if (customer := optional_str(call.params, "customer")) is not None:
        items = [i for i in items if i["customer"] == customer]
    if (status := optional_str(call.params, "status")) is not None:
        items = [i for i in items if i["status"] == status]
    if (sub := optional_str(call.params, "subscription")) is not None:
        items = [i for i in items if i["parent"]["subscription_details"]["subscription"] == sub]
    return page(items, call.params, "/v1/invoices")


def retrieve_event(call: Call) -> Obj:
    check_known(call.params, [])
    return call.store.get(call.store.events, "event", call.path_id)


def list_events(call: Call) -> Obj:
    check_known(call.params, ["type", *PAGING])
    items = call.store.newest_first(call.store.events)
    if (event_type := optional_str(call.params, "type")) is not None:
        items = [e for e in items if e["type"] == event_type]
    return page(items, call.params, "/v1/events")


_ID = "([^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    (method, re.compile(f"^/v1/{path}$"), handler)
    for method, path, handler in [
        ("POST", "customers", create_customer),
        ("GET", "customers", list_customers),
        ("GET", f"customers/{_ID}", retrieve_customer),
        ("POST", f"customers/{_ID}", update_customer),
        ("GET", "products", list_products),
        ("GET", f"products/{_ID}", retrieve_product),
        ("GET", "prices", list_prices),
        ("GET", f"prices/{_ID}", retrieve_price),
        ("POST", "checkout/sessions", create_checkout_session),
        ("GET", "checkout/sessions", list_checkout_sessions),
        ("GET", f"checkout/sessions/{_ID}", retrieve_checkout_session),
        ("POST", "billing_portal/sessions", create_portal_session),
        ("GET", "subscriptions", list_subscriptions),
        ("GET", f"subscriptions/{_ID}", retrieve_subscription),
        ("POST", f"subscriptions/{_ID}", update_subscription),
        ("DELETE", f"subscriptions/{_ID}", cancel_subscription),
        ("GET", "invoices", list_invoices),
        ("GET", f"invoices/{_ID}", retrieve_invoice),
        ("GET", "events", list_events),
        ("GET", f"events/{_ID}", retrieve_event),
    ]
]


def _route(method: str, path: str) -> tuple[Handler, str]:
    for route_method, pattern, handler in ROUTES:
        if route_method == method and (match := pattern.match(path)):
            return handler, match.group(1) if pattern.groups else ""
    raise StripeError(
        404, f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs."
    )


def _redacted(key: str) -> str:
    return key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else "*" * len(key)


def _presented_key(header: str | None) -> str:
    """The API key from `Authorization`: Bearer, or Basic with the key as user name (curl -u)."""
    scheme, _, credential = (header or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(credential, validate=True).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return credential.strip() if scheme.lower() == "bearer" else ""


class Api:
    """The `/v1` endpoint: every Stripe API call goes through `handle`."""

    def __init__(self, store: Store, api_key: str, log: Callable[[Obj], None]) -> None:
        self.store = store
        self.api_key = api_key
        self.log = log
        self.outage_status: int | None = None
        self.saved: dict[str, Saved] = {}

    async def handle(self, request: Request) -> Response:
        request_id = objects.new_id("req", 14)
        key = request.headers.get("idempotency-key") if request.method == "POST" else None
        headers = {"Request-Id": request_id, "Stripe-Version": objects.API_VERSION}
        if key:
            headers["Idempotency-Key"] = key
        replay_of: str | None = None
        try:
            body, replay_of = await self._answer(request, request_id, key)
            status = 200
        except StripeError as exc:
            status, body = exc.status, json.dumps(exc.body(), indent=2).encode()
        except Exception:
            # A fault of the fake itself: answered as Stripe answers its own faults, so the SDK
            # raises APIError, with the traceback in the fake's log.
            traceback.print_exc()
            status = 500
            body = json.dumps(
                StripeError(500, "An error occurred in the Stripe fake.", type="api_error").body()
            ).encode()
        if replay_of is not None:
            headers.update(
                {"Idempotent-Replayed": "true", "Original-Request": replay_of, "Request-Id": replay_of}
            )
        self.log(
            {
                "kind": "api",
                "method": request.method,
                "path": request.url.path,
                "status": status,
                "request_id": headers["Request-Id"],
                "idempotency_key": key,
                "replayed": replay_of is not None,
            }
        )
        return Response(body, status, headers, media_type="application/json")

    async def _answer(self, request: Request, request_id: str, key: str | None) -> tuple[bytes, str | None]:
        """The answer's body, and the id of the request it replays (None when it is a new one)."""
        if self.outage_status is not None:
            raise StripeError(
                self.outage_status,
                "Stripe is unavailable (a simulated outage of the development fake).",
                type="api_error",
            )
        presented = _presented_key(request.headers.get("authorization"))
        if not presented:
            raise StripeError(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        if not hmac.compare_digest(presented.encode(), self.api_key.encode()):
            raise StripeError(401, f"Invalid API Key provided: {_redacted(presented)}")
        handler, path_id = _route(request.method, request.url.path)
        params = await _params(request)
        if key and (saved := self._saved_answer(key, request.method, request.url.path, params)):
            return saved.body, saved.request_id
        call = Call(self.store, params, path_id, Origin(request_id, key))
        result = handler(call)
        if "expand" in params:
            paths = [as_str(path, "expand") for path in as_list(params["expand"], "expand")]
            result = expand(result, paths, self.store.find)
        body = json.dumps(result, indent=2).encode()
        if key:
            self.saved[key] = Saved(request.method, request.url.path, params, body, request_id, time.time())
        return body, None

    def _saved_answer(self, key: str, method: str, path: str, params: Obj) -> Saved | None:
        cutoff = time.time() - IDEMPOTENCY_SECONDS
        for stale in [k for k, saved in self.saved.items() if saved.at < cutoff]:
            del self.saved[stale]
        saved = self.saved.get(key)
        if saved is None:
            return None
        if (saved.method, saved.path) != (method, path):
            raise StripeError(
                400,
                f"Keys for idempotent requests can only be used for the same endpoint they were first used for "
                f"('{saved.method} {saved.path}'). Try using a key other than '{key}' if you meant to execute "
                "a different request.",
                type="idempotency_error",
            )
        if saved.params != params:
            raise StripeError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they were first used "
                f"with. Try using a key other than '{key}' if you meant to execute a different request.",
                type="idempotency_error",
            )
        return saved


async def _params(request: Request) -> Obj:
    if request.method != "POST":
        return parse_form(request.query_params.multi_items())
    raw = await request.body()
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise StripeError(400, "The request body is not valid UTF-8 form data.") from None
    return parse_form(parse_qsl(text, keep_blank_values=True))
