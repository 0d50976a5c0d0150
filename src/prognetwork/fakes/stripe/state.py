"""The fake's in-memory Stripe account: its objects, and the changes Stripe would make to them, each
with the webhook events Stripe would send, in Stripe's order.

Every change publishes its events through `publish` as it happens; an event carries a snapshot of
its object at that moment (later changes never alter it). Objects are kept in creation order;
lists answer newest first, as Stripe's do.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from prognetwork.fakes.stripe import objects
from prognetwork.fakes.stripe.params import Obj, StripeError, missing

SUBSCRIPTION_STATUSES = (
    "active",
    "past_due",
    "unpaid",
    "canceled",
    "incomplete",
    "incomplete_expired",
    "trialing",
    "paused",
)
RENEWABLE_STATUSES = ("active", "past_due", "trialing")
SEEDED_PRODUCTS = (("prod_pro", "ProgNetwork Pro"), ("prod_enterprise", "ProgNetwork Enterprise"))
SEEDED_PRICES = (
    ("price_pro_monthly", "prod_pro", 2900, "Pro monthly", "pro_monthly"),
    ("price_enterprise_monthly", "prod_enterprise", 49900, "Enterprise monthly", "enterprise_monthly"),
)


@dataclass(frozen=True)
class Origin:
    """The API request a change came from (`event.request`); both None for changes made on a
    hosted page or by Stripe itself (renewals)."""

    request_id: str | None = None
    idempotency_key: str | None = None


PAGE = Origin()


class AlreadyCompleted(Exception):
    """A checkout session or invoice was paid already; paying again changes nothing."""


@dataclass
class PendingCheckout:
    """What a checkout session will subscribe to, which Stripe keeps off the session object."""

    lines: list[tuple[Obj, int]]
    subscription_metadata: dict[str, str]
    subscription_id: str | None = None  # set by a declined attempt, paid by the next one


def changed(before: Obj, after: Obj) -> Obj:
    """`previous_attributes`: the earlier value of every top-level field that changed."""
    return {key: value for key, value in before.items() if after.get(key) != value}


class Store:
    def __init__(self, public_url: str, endpoints: int, publish: Callable[[Obj], None]) -> None:
        self.public_url = public_url
        self.endpoints = endpoints
        self.publish = publish
        self.products: dict[str, Obj] = {}
        self.prices: dict[str, Obj] = {}
        self.customers: dict[str, Obj] = {}
        self.checkout_sessions: dict[str, Obj] = {}
        self.portal_sessions: dict[str, Obj] = {}
        self.subscriptions: dict[str, Obj] = {}
        self.invoices: dict[str, Obj] = {}
        self.events: dict[str, Obj] = {}
        self.pending_checkouts: dict[str, PendingCheckout] = {}
        for product_id, name in SEEDED_PRODUCTS:
            self.products[product_id] = objects.product(product_id, name)
        for price_id, product_id, amount, nickname, lookup_key in SEEDED_PRICES:
            self.prices[price_id] = objects.monthly_price(price_id, product_id, amount, nickname, lookup_key)

    # -- lookups -------------------------------------------------------------------------------

    def _collections(self) -> tuple[dict[str, Obj], ...]:
        return (
            self.customers,
            self.subscriptions,
            self.invoices,
            self.checkout_sessions,
            self.portal_sessions,
            self.prices,
            self.products,
            self.events,
        )

    def find(self, object_id: str) -> Obj | None:
        """Any object by id (what `expand` replaces an id with)."""
        return next((c[object_id] for c in self._collections() if object_id in c), None)

    @staticmethod
    def get(collection: dict[str, Obj], what: str, object_id: str, param: str | None = None) -> Obj:
        if object_id not in collection:
            raise missing(what, object_id, param)
        return collection[object_id]

    @staticmethod
    def newest_first(collection: dict[str, Obj]) -> list[Obj]:
        return list(reversed(collection.values()))

    def emit(self, event_type: str, obj: Obj, origin: Origin, previous: Obj | None = None) -> None:
        event = objects.event(
            event_type,
            copy.deepcopy(obj),
            previous=copy.deepcopy(previous) if previous is not None else None,
            endpoints=self.endpoints,
            request_id=origin.request_id,
            idempotency_key=origin.idempotency_key,
        )
        self.events[event["id"]] = event
        self.publish(event)

    # -- API changes ---------------------------------------------------------------------------

    def create_customer(self, fields: Obj) -> Obj:
        customer = objects.customer(fields)
        self.customers[customer["id"]] = customer
        return customer

    def create_checkout_session(
        self,
        *,
        customer_id: str | None,
        customer_email: str | None,
        lines: list[tuple[Obj, int]],
        success_url: str | None,
        cancel_url: str | None,
        client_reference_id: str | None,
        metadata: dict[str, str],
        subscription_metadata: dict[str, str],
    ) -> Obj:
        session = objects.checkout_session(
            public_url=self.public_url,
            customer_id=customer_id,
            customer_email=customer_email,
            currency=lines[0][0]["currency"],
            amount=sum(int(price["unit_amount"]) * quantity for price, quantity in lines),
            success_url=success_url,
            cancel_url=cancel_url,
            client_reference_id=client_reference_id,
            metadata=metadata,
        )
        self.checkout_sessions[session["id"]] = session
        self.pending_checkouts[session["id"]] = PendingCheckout(lines, subscription_metadata)
        return session

    def create_portal_session(self, customer_id: str, return_url: str | None) -> Obj:
        session = objects.portal_session(self.public_url, customer_id, return_url)
        self.portal_sessions[session["id"]] = session
        return session

    def update_subscription(
        self, sub: Obj, origin: Origin, *, cancel_at_period_end: bool | None, metadata: dict[str, str] | None
    ) -> Obj:
        before = copy.deepcopy(sub)
        if cancel_at_period_end is not None:
            if sub["status"] == "canceled":
                raise StripeError(
                    400, "A canceled subscription can only update its cancellation_details and metadata."
                )
            sub["cancel_at_period_end"] = cancel_at_period_end
            sub["cancel_at"] = sub["items"]["data"][0]["current_period_end"] if cancel_at_period_end else None
            sub["canceled_at"] = objects.now() if cancel_at_period_end else None
            sub["cancellation_details"]["reason"] = "cancellation_requested" if cancel_at_period_end else None
        if metadata is not None:
            sub["metadata"] = metadata
        if previous := changed(before, sub):
            self.emit("customer.subscription.updated", sub, origin, previous)
        return sub

    def cancel_subscription(self, sub: Obj, origin: Origin, details: Obj | None = None) -> Obj:
        if sub["status"] == "canceled":
            raise StripeError(400, f"This subscription ({sub['id']}) has already been canceled.")
        when = objects.now()
        sub.update(status="canceled", canceled_at=when, ended_at=when, cancel_at=None)
        sub["cancellation_details"] = {"comment": None, "feedback": None, **(details or {})}
        sub["cancellation_details"]["reason"] = "cancellation_requested"
        self.emit("customer.subscription.deleted", sub, origin)
        return sub

    # -- what a person does on the hosted pages ------------------------------------------------

    def complete_checkout(self, session: Obj, paid: bool) -> None:
        """The payment form submitted: paid subscribes; declined leaves an incomplete subscription
        and an open invoice, which a later paid attempt pays."""
        if session["status"] == "complete":
            raise AlreadyCompleted(session["id"])
        pending = self.pending_checkouts[session["id"]]
        customer = self._checkout_customer(session)
        if pending.subscription_id is None:
            sub = objects.subscription(
                objects.new_id("sub"),
                customer["id"],
                pending.lines,
                "active" if paid else "incomplete",
                dict(pending.subscription_metadata),
            )
            invoice = objects.invoice(
                sub, customer, public_url=self.public_url, billing_reason="subscription_create", paid=paid
            )
            sub["latest_invoice"] = invoice["id"]
            self.subscriptions[sub["id"]] = sub
            self.invoices[invoice["id"]] = invoice
            pending.subscription_id = sub["id"]
            self.emit("customer.subscription.created", sub, PAGE)
        else:
            sub = self.subscriptions[pending.subscription_id]
            invoice = self.invoices[sub["latest_invoice"]]
            if paid:
                before = copy.deepcopy(sub)
                sub["status"] = "active"
                self._mark_paid(invoice)
                self.emit("customer.subscription.updated", sub, PAGE, changed(before, sub))
            else:
                invoice["attempt_count"] += 1
        if not paid:
            self.emit("invoice.payment_failed", invoice, PAGE)
            return
        session.update(
            status="complete",
            payment_status="paid",
            subscription=sub["id"],
            invoice=invoice["id"],
            customer=customer["id"],
            customer_details={"email": customer["email"], "name": customer["name"], "phone": None},
            url=None,
        )
        self.emit("checkout.session.completed", session, PAGE)
        self.emit("invoice.paid", invoice, PAGE)

    def _checkout_customer(self, session: Obj) -> Obj:
        if session["customer"]:
            return self.customers[session["customer"]]
        customer = self.create_customer({"email": session["customer_email"]})
        session["customer"] = customer["id"]
        return customer

    def pay_invoice(self, invoice: Obj) -> None:
        """An open invoice paid on its hosted page: the subscription is active again."""
        if invoice["status"] != "open":
            raise AlreadyCompleted(invoice["id"])
        self._mark_paid(invoice)
        self.emit("invoice.paid", invoice, PAGE)
        sub = self.subscriptions[invoice["parent"]["subscription_details"]["subscription"]]
        if sub["status"] in ("past_due", "unpaid", "incomplete"):
            before = copy.deepcopy(sub)
            sub["status"] = "active"
            self.emit("customer.subscription.updated", sub, PAGE, changed(before, sub))

    @staticmethod
    def _mark_paid(invoice: Obj) -> None:
        invoice.update(
            status="paid",
            amount_paid=invoice["amount_due"],
            amount_remaining=0,
            auto_advance=False,
            next_payment_attempt=None,
        )
        invoice["status_transitions"]["paid_at"] = objects.now()

    # -- what Stripe does on its own (driven by the control endpoints) ------------------------

    def fail_renewal(self, sub: Obj) -> None:
        """The next period starts and its payment fails: an open invoice, the subscription past_due."""
        if sub["status"] not in RENEWABLE_STATUSES:
            raise StripeError(400, f"A {sub['status']} subscription does not renew.", param="status")
        before = copy.deepcopy(sub)
        for item in sub["items"]["data"]:
            item["current_period_start"] = item["current_period_end"]
            item["current_period_end"] += objects.PERIOD_SECONDS
        customer = self.customers[sub["customer"]]
        invoice = objects.invoice(
            sub, customer, public_url=self.public_url, billing_reason="subscription_cycle", paid=False
        )
        self.invoices[invoice["id"]] = invoice
        sub.update(status="past_due", latest_invoice=invoice["id"])
        self.emit("invoice.payment_failed", invoice, PAGE)
        self.emit("customer.subscription.updated", sub, PAGE, changed(before, sub))

    def set_status(self, sub: Obj, status: str) -> None:
        if status == "canceled":
            self.cancel_subscription(sub, PAGE)
            return
        before = copy.deepcopy(sub)
        sub["status"] = status
        if before["status"] == "canceled":
            sub.update(canceled_at=None, ended_at=None)
        self.emit("customer.subscription.updated", sub, PAGE, changed(before, sub))
