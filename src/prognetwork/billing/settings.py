"""The billing service's settings: Stripe (keys, webhook secrets, API address), plans and links.

The Stripe secret key and webhook secret(s) are secrets, read through the secrets provider on
every use (its cache expires), so a rotated key or an added webhook secret is picked up without a
restart. `STRIPE_WEBHOOK_SECRET` may hold several secrets separated by commas: during a rotation
the endpoint's old and new secrets both verify. In development all three have defaults that
point at the local Stripe fake `prog up` starts (the constants below, which the CLI passes to it).
"""

from __future__ import annotations

import json
from functools import cached_property

from pydantic import Field, field_validator

from prognetwork.billing.plans import DEFAULT_PLANS, Catalogue, Plan, catalogue_problems
from prognetwork.kit.secrets import MissingSecret
from prognetwork.kit.settings import Settings, https_problems

STRIPE_SECRET_KEY = "STRIPE_SECRET_KEY"  # noqa: S105 - the secret's name, not its value
STRIPE_WEBHOOK_SECRET = "STRIPE_WEBHOOK_SECRET"  # noqa: S105 - the secret's name, not its value

# What development uses when nothing is set: the Stripe fake, with these credentials.
DEV_STRIPE_SECRET_KEY = "sk_test_prognetwork_development"  # noqa: S105 - a test-mode key for the local fake
DEV_STRIPE_WEBHOOK_SECRET = "whsec_prognetwork_development"  # noqa: S105 - the local fake's signing secret
DEV_STRIPE_API_BASE = "http://127.0.0.1:12111"
STRIPE_API_BASE = "https://api.stripe.com"
# Object shapes the code reads (`items.data[0].current_period_end`, invoices' `parent`) are this
# version's: pinned, so an SDK upgrade does not change them underneath us.
STRIPE_API_VERSION = "2026-10-28.endive"
LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")
TEST_KEY_PREFIXES = ("sk_test_", "rk_test_")
# The default plans' prices are the fake's seeded ones; a real account's ids look like price_1Q….
DEVELOPMENT_PRICE_IDS = frozenset(plan.price_id for plan in DEFAULT_PLANS if plan.price_id)


class BillingSettings(Settings):
    # Unset: the Stripe fake in development, Stripe itself everywhere else.
    stripe_api_base: str | None = Field(None, alias="STRIPE_API_BASE")
    stripe_timeout_seconds: float = Field(10.0, alias="STRIPE_TIMEOUT_SECONDS", gt=0, le=80)
    # Stripe's SDK retries connection failures, 409s and 5xx with backoff (0.5 s doubling, jittered).
    stripe_max_network_retries: int = Field(2, alias="STRIPE_MAX_NETWORK_RETRIES", ge=0, le=10)
    billing_plans: list[Plan] = Field(default_factory=lambda: list(DEFAULT_PLANS), alias="BILLING_PLANS")
    # The web client, where Checkout and the billing portal send the customer back (the same
    # setting the user service builds its email links from).
    app_url: str = Field("http://localhost:3000", alias="APP_URL")

    @field_validator("billing_plans", mode="before")
    @classmethod
    def _json_text(cls, value: object) -> object:
        # The environment source decodes JSON itself; the same text given as an argument
        # (`prog config check` over an env file, tests) is decoded here.
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("billing_plans")
    @classmethod
    def _usable_catalogue(cls, plans: list[Plan]) -> list[Plan]:
        problems = catalogue_problems(plans)
        if problems:
            raise ValueError("BILLING_PLANS: " + "; ".join(problems))
        return plans

    @cached_property
    def catalogue(self) -> Catalogue:
        return Catalogue(self.billing_plans)

    @property
    def stripe_api_address(self) -> str:
        if self.stripe_api_base:
            return self.stripe_api_base.rstrip("/")
        return DEV_STRIPE_API_BASE if self.is_development else STRIPE_API_BASE

    def stripe_secret_key(self) -> str:
        value = self.secrets.get(STRIPE_SECRET_KEY)
        if value is not None:
            return value.get_secret_value()
        if self.is_development:
            return DEV_STRIPE_SECRET_KEY
        raise MissingSecret(STRIPE_SECRET_KEY)

    def stripe_webhook_secrets(self) -> list[str]:
        """Every secret a webhook signature may be made with (one, or two during a rotation)."""
        value = self.secrets.get(STRIPE_WEBHOOK_SECRET)
        if value is None:
            if self.is_development:
                return [DEV_STRIPE_WEBHOOK_SECRET]
            raise MissingSecret(STRIPE_WEBHOOK_SECRET)
        return split_secrets(value.get_secret_value())

    @property
    def checkout_success_url(self) -> str:
        # Stripe fills in {CHECKOUT_SESSION_ID}, so the page can say which checkout finished.
        return f"{self.app_url.rstrip('/')}/billing/success?session_id={{CHECKOUT_SESSION_ID}}"

    @property
    def checkout_cancel_url(self) -> str:
        return f"{self.app_url.rstrip('/')}/billing/canceled"

    @property
    def portal_return_url(self) -> str:
        return f"{self.app_url.rstrip('/')}/billing"

    def own_problems(self) -> list[str]:
        found = https_problems("APP_URL", self.app_url)
        key = self.secrets.get(STRIPE_SECRET_KEY)  # missing: the kit's secret check says so
        # Production charges real cards; staging may rehearse against Stripe's test mode.
        wanted, kinds = (
            (LIVE_KEY_PREFIXES, "a live secret or restricted key (sk_live_… or rk_live_…)")
            if self.env == "production"
            else (LIVE_KEY_PREFIXES + TEST_KEY_PREFIXES, "a Stripe secret or restricted key (sk_… or rk_…)")
        )
        if key is not None and not key.get_secret_value().strip().startswith(wanted):
            found.append(f"STRIPE_SECRET_KEY must be {kinds} in {self.env}")
        secrets = self.secrets.get(STRIPE_WEBHOOK_SECRET)
        if secrets is not None:
            parts = split_secrets(secrets.get_secret_value())
            if not parts or any(not part.startswith("whsec_") for part in parts):
                found.append(
                    "STRIPE_WEBHOOK_SECRET must be one or more comma-separated webhook signing secrets, "
                    "each starting with whsec_"
                )
        placeholders = sorted(
            plan.price_id for plan in self.billing_plans if plan.price_id in DEVELOPMENT_PRICE_IDS
        )
        if placeholders:
            found.append(
                f"BILLING_PLANS must name the account's Stripe price ids in {self.env}: "
                f"{', '.join(placeholders)} exist only in the development fake"
            )
        if self.stripe_api_base and self.stripe_api_base.rstrip("/") != STRIPE_API_BASE:
            found.append(
                f"STRIPE_API_BASE must be unset (or {STRIPE_API_BASE}) in {self.env}: "
                f"it points at {self.stripe_api_base!r}, not Stripe"
            )
        return found


def split_secrets(value: str) -> list[str]:
    """`whsec_a, whsec_b` → both; blanks between commas are dropped."""
    return [part.strip() for part in value.split(",") if part.strip()]
