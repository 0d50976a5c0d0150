"""What a running billing service holds, built once at start-up and closed by the same lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from prognetwork.billing.service import Billing
from prognetwork.billing.settings import BillingSettings
from prognetwork.billing.stripe_api import StripeApi, open_http
from prognetwork.billing.webhooks import Webhooks
from prognetwork.kit.app import Connections
from prognetwork.kit.db import Database
from prognetwork.kit.jwks import Jwks
from prognetwork.kit.revocation import Revocations


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: BillingSettings
    database: Database
    billing: Billing
    webhooks: Webhooks
    jwks: Jwks  # the token issuer's keys
    http: aiohttp.ClientSession  # fetches them
    revocations: Revocations


@asynccontextmanager
async def open_runtime(settings: BillingSettings, connections: Connections) -> AsyncIterator[Runtime]:
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        open_http(settings) as stripe_http,
    ):
        billing = Billing(settings.catalogue, StripeApi(settings, stripe_http))
        yield Runtime(
            settings,
            connections.database,
            billing,
            Webhooks(billing, settings),
            Jwks(settings.jwks_url, settings.jwt_issuer, settings.jwt_audience),
            http,
            Revocations(connections.redis),
        )
