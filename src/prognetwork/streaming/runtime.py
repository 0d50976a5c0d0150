"""What a running streaming service holds, opened and closed by its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from prognetwork.kit.app import Connections
from prognetwork.kit.credentials import listener_dsn
from prognetwork.kit.db import Database
from prognetwork.kit.jwks import Jwks
from prognetwork.kit.revocation import Revocations
from prognetwork.streaming.hub import Hub
from prognetwork.streaming.settings import StreamingSettings


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: StreamingSettings
    database: Database
    hub: Hub  # the one tailer of this process and its subscribers
    jwks: Jwks  # the token issuer's keys
    http: aiohttp.ClientSession  # fetches them
    revocations: Revocations


@asynccontextmanager
async def open_runtime(settings: StreamingSettings, connections: Connections) -> AsyncIterator[Runtime]:
    hub = Hub(
        listener_dsn(settings),
        queue_limit=settings.stream_queue_limit,
        poll_seconds=settings.stream_poll_seconds,
        heartbeat_seconds=settings.stream_heartbeat_seconds,
    )
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        yield Runtime(
            settings,
            connections.database,
            hub,
            Jwks(settings.jwks_url, settings.jwt_issuer, settings.jwt_audience),
            http,
            Revocations(connections.redis),
        )
