"""Every call this service makes to Stripe, through one `StripeClient` and its async methods.

Invariants:
- One client per process, on an aiohttp session the runtime opens and closes. The SDK would
  otherwise pick httpx for async calls whenever it is installed; aiohttp is what runs in production.
- Transient failures (connection errors, timeouts, 409, 5xx) are retried by the SDK itself,
  `STRIPE_MAX_NETWORK_RETRIES` times with backoff. Every create carries an idempotency key, so a
  retry (the SDK's, or a client's retried request) creates nothing twice; a key derived from the
  tenant (`customer:{tenant_id}`) makes "one customer per tenant" hold across concurrent requests.
- The secret key is read per call from the secrets provider (its cache expires): a rotated key is
  used without a restart.
- Failures come out as problems, never as a 500: Stripe unreachable, rate limiting or Stripe's own
  errors (5xx) → 503 `stripe-unavailable` with Retry-After; anything else Stripe refuses (our
  request or our key is wrong) → 502 `stripe-error`. Each call is counted in
  `billing_stripe_requests_total{operation, outcome}`, outcome ok | error | unavailable.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import stripe
import structlog
from prometheus_client import Counter

from prognetwork.billing.plans import Plan
from prognetwork.billing.problems import STRIPE_ERROR, STRIPE_UNAVAILABLE
from prognetwork.billing.settings import STRIPE_API_VERSION, BillingSettings
from prognetwork.billing.state import StripeSubscription, parse_subscription
from prognetwork.kit.problems import Problem

log = structlog.get_logger("prognetwork.billing.stripe")
T = TypeVar("T")
RETRY_AFTER_SECONDS = "5"
# A customer has a handful of subscriptions at most; one page covers them.
SUBSCRIPTIONS_PAGE = 100

OPERATIONS = (
    "customers.create",
    "customers.retrieve",
    "subscriptions.list",
    "checkout.sessions.create",
    "billing_portal.sessions.create",
)
STRIPE_REQUESTS = Counter(
    "billing_stripe_requests", "Calls to Stripe's API, by operation and outcome.", ("operation", "outcome")
)
for _operation in OPERATIONS:
    for _outcome in ("ok", "error", "unavailable"):
        STRIPE_REQUESTS.labels(_operation, _outcome)  # exported at 0, so rate() sees the first one


class AiohttpStripeClient(stripe.AIOHTTPClient):
    """Stripe's aiohttp client, except that a failure while reading a response's body is a
    connection error too (the SDK's wraps only sending the request), so it is retried and mapped
    like one instead of escaping as a bare aiohttp exception."""

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        try:
            return await super().request_async(method, url, headers, post_data)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise stripe.APIConnectionError(
                f"Network error while reading Stripe's answer ({type(exc).__name__})", should_retry=True
            ) from exc


def open_http(settings: BillingSettings) -> aiohttp.ClientSession:
    """The session Stripe calls go through (the caller closes it): Stripe's own CA bundle, as the
    SDK's default client uses, and no cookies."""
    tls = ssl.create_default_context(cafile=stripe.ca_bundle_path)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls), cookie_jar=aiohttp.DummyCookieJar())


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    url: str


class StripeApi:
    def __init__(self, settings: BillingSettings, http: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.client = stripe.StripeClient(
            # Checked now, so a missing key fails the start, not the first checkout; each call
            # passes the current key (see _options).
            settings.stripe_secret_key(),
            base_addresses={"api": settings.stripe_api_address},
            stripe_version=STRIPE_API_VERSION,
            max_network_retries=settings.stripe_max_network_retries,
            http_client=AiohttpStripeClient(
                timeout=aiohttp.ClientTimeout(total=settings.stripe_timeout_seconds), session=http
            ),
        )

    def _options(self, idempotency_key: str | None = None) -> stripe.RequestOptions:
        options: stripe.RequestOptions = {"api_key": self.settings.stripe_secret_key()}
        if idempotency_key:
            options["idempotency_key"] = idempotency_key
        return options

    async def create_customer(self, tenant_id: uuid.UUID) -> str:
        """The tenant's Stripe customer: the same one however often this is called (within
        Stripe's 24 hours of idempotency), so concurrent first checkouts share it."""
        customer = await _call(
            "customers.create",
            self.client.v1.customers.create_async(
                {"metadata": {"tenant_id": str(tenant_id)}},
                self._options(f"customer:{tenant_id}"),
            ),
        )
        return str(customer.id)

    async def customer_tenant(self, customer_id: str) -> uuid.UUID | None:
        """The tenant a customer was created for (its metadata); None for a deleted customer or one
        that is not ours."""
        try:
            customer = await _call(
                "customers.retrieve",
                self.client.v1.customers.retrieve_async(customer_id, None, self._options()),
            )
        except _Missing:
            return None
        data = customer.to_dict()
        metadata = data.get("metadata") or {}
        if data.get("deleted") or not isinstance(metadata.get("tenant_id"), str):
            return None
        try:
            return uuid.UUID(metadata["tenant_id"])
        except ValueError:
            return None

    async def subscriptions(self, customer_id: str) -> list[StripeSubscription]:
        """Every subscription of the customer, whatever its status, as Stripe sees them now."""
        page = await _call(
            "subscriptions.list",
            self.client.v1.subscriptions.list_async(
                {"customer": customer_id, "status": "all", "limit": SUBSCRIPTIONS_PAGE}, self._options()
            ),
        )
        return [parse_subscription(item.to_dict()) for item in page.data]

    async def create_checkout_session(
        self, tenant_id: uuid.UUID, customer_id: str, plan: Plan, idempotency_key: str
    ) -> CheckoutSession:
        assert plan.price_id is not None  # the service sells priced plans only
        tenant = str(tenant_id)
        session = await _call(
            "checkout.sessions.create",
            self.client.v1.checkout.sessions.create_async(
                {
                    "mode": "subscription",
                    "customer": customer_id,
                    "client_reference_id": tenant,
                    "line_items": [{"price": plan.price_id, "quantity": 1}],
                    "subscription_data": {"metadata": {"tenant_id": tenant, "plan": plan.name}},
                    "metadata": {"tenant_id": tenant, "plan": plan.name},
                    "success_url": self.settings.checkout_success_url,
                    "cancel_url": self.settings.checkout_cancel_url,
                },
                self._options(idempotency_key),
            ),
        )
        if not session.url:
            raise STRIPE_ERROR("Stripe created a checkout session without a payment page; retry shortly.")
        return CheckoutSession(id=str(session.id), url=str(session.url))

    async def create_portal_session(self, customer_id: str, idempotency_key: str) -> str:
        session = await _call(
            "billing_portal.sessions.create",
            self.client.v1.billing_portal.sessions.create_async(
                {"customer": customer_id, "return_url": self.settings.portal_return_url},
                self._options(idempotency_key),
            ),
        )
        return str(session.url)


class _Missing(Exception):
    """Stripe answered 404 for an object looked up by id."""


async def _call(operation: str, call: Awaitable[T]) -> T:
    """Await one Stripe call, counting it and turning its failure into a problem."""
    try:
        result = await call
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404 and operation == "customers.retrieve":
            STRIPE_REQUESTS.labels(operation, "ok").inc()
            raise _Missing from None
        raise _failure(operation, exc) from None
    except stripe.StripeError as exc:
        raise _failure(operation, exc) from None
    except (aiohttp.ClientError, TimeoutError) as exc:  # what the SDK lets through unwrapped
        raise _failure(operation, stripe.APIConnectionError(type(exc).__name__)) from None
    STRIPE_REQUESTS.labels(operation, "ok").inc()
    return result


def _failure(operation: str, exc: stripe.StripeError) -> Problem:
    unavailable = isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError) or (
        isinstance(exc, stripe.APIError) and (exc.http_status or 500) >= 500
    )
    outcome = "unavailable" if unavailable else "error"
    STRIPE_REQUESTS.labels(operation, outcome).inc()
    fields = dict(
        operation=operation,
        error_type=type(exc).__name__,
        http_status=exc.http_status,
        stripe_code=exc.code,
        stripe_request_id=exc.request_id,
        error=(exc.user_message or "")[:300],
    )
    if unavailable:
        log.warning("stripe unavailable", **fields)
        return STRIPE_UNAVAILABLE(
            "Stripe cannot be reached right now; nothing was changed. Retry shortly.",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    # Our request or our key is wrong: worth an operator's attention, not a retry.
    log.error("stripe refused a request", **fields)
    return STRIPE_ERROR("Stripe refused the request; nothing was changed. It has been logged.")
