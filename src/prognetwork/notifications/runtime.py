"""What a running notification service holds, built once at start-up and closed by the same lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp

from prognetwork.kit.app import Connections, RuntimeFactory
from prognetwork.kit.db import Database
from prognetwork.kit.jwks import Jwks
from prognetwork.kit.revocation import Revocations
from prognetwork.notifications.email import EmailProvider
from prognetwork.notifications.settings import NotificationSettings


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: NotificationSettings
    database: Database
    provider: EmailProvider
    jwks: Jwks  # the token issuer's keys (the admin API verifies tokens)
    http: aiohttp.ClientSession  # fetches them
    revocations: Revocations
    # Set by the consumer after it commits new messages, so delivery starts without waiting a poll.
    wake_delivery: asyncio.Event = field(default_factory=asyncio.Event)


def runtime_factory(provider: EmailProvider) -> RuntimeFactory[NotificationSettings, Runtime]:
    @asynccontextmanager
    async def open_runtime(
        settings: NotificationSettings, connections: Connections
    ) -> AsyncIterator[Runtime]:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            yield Runtime(
                settings,
                connections.database,
                provider,
                Jwks(settings.jwks_url, settings.jwt_issuer, settings.jwt_audience),
                http,
                Revocations(connections.redis),
            )

    return open_runtime
