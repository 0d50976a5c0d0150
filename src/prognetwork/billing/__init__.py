"""The billing service (port 3003): owns the Stripe relationship — each tenant's Stripe customer,
its subscription as Stripe describes it, Checkout and the billing portal, Stripe's webhooks — and
publishes what a tenant is entitled to as events (`billing.entitlements_changed`)."""

from prognetwork.billing.settings import STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET, BillingSettings
from prognetwork.kit.service import ServiceSpec

# Redis holds the signed-out sessions every verifier checks.
SPEC = ServiceSpec(
    name="billing-service",
    package=__name__,
    port=3003,
    settings=BillingSettings,
    needs=frozenset({"postgres", "redis"}),
    secrets=(STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET),
    models=(f"{__name__}.models",),
)
