"""The billing service's ASGI app: its routes, its runtime and its background jobs.

Readiness is PostgreSQL and Redis (the kit's checks), not Stripe and not the token issuer's keys:
Stripe being down must not take every replica out of rotation (webhooks would then be refused at
the load balancer instead of answered 503 one by one), and the webhook endpoint needs no keys.
A token with a key id not yet known triggers a fetch of the keys (kit.jwks).
"""

from __future__ import annotations

from fastapi import FastAPI

from prognetwork.billing import SPEC, admin_api, api
from prognetwork.billing.runtime import Runtime, open_runtime
from prognetwork.billing.settings import BillingSettings
from prognetwork.kit.app import Lifecycle, create_service_app


async def keep_keys_fresh(runtime: Runtime, lifecycle: Lifecycle) -> None:
    await runtime.jwks.keep_fresh(runtime.http, runtime.settings.jwks_refresh_seconds, lifecycle.stop)


async def follow_revocations(runtime: Runtime, lifecycle: Lifecycle) -> None:
    # Signed-out sessions answered from a followed copy (kit.revocation): no Redis round trip per
    # request, so neither a slow nor a hung Redis reaches the request path.
    await runtime.revocations.follow(lifecycle.stop)


def create_app(settings: BillingSettings | None = None) -> FastAPI:
    settings = settings or BillingSettings()
    return create_service_app(
        SPEC,
        settings,
        [api.router, admin_api.router],
        runtime=open_runtime,
        background=[keep_keys_fresh, follow_revocations],
    )
