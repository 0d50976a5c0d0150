"""What a running admin console holds, built once at start-up and closed by the same lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from prognetwork.admin.admin_api import Known, Verdicts
from prognetwork.admin.gateway import Gateway
from prognetwork.admin.sessions import SessionStore
from prognetwork.admin.settings import AdminSettings
from prognetwork.admin.signin import Auth
from prognetwork.admin.stream import Relays
from prognetwork.admin.views import Views
from prognetwork.kit.app import Connections
from prognetwork.kit.jwks import Jwks

# One SSE data line holds a whole event (payloads up to 64 KiB, escaped): room for it in one read.
READ_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: AdminSettings
    http: aiohttp.ClientSession  # to the gateway, the issuer's keys, the ops ports and Prometheus
    gateway: Gateway
    jwks: Jwks  # the token issuer's keys: claims are read from verified tokens only
    sessions: SessionStore
    auth: Auth
    views: Views
    relays: Relays
    known: Known  # where the event log ended when last looked at (the Events page starts there)
    verdicts: Verdicts  # the audit chain's latest verification


@asynccontextmanager
async def open_runtime(settings: AdminSettings, connections: Connections) -> AsyncIterator[Runtime]:
    # No cookie jar: the console's own calls carry the operator's token, never a cookie.
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), read_bufsize=READ_BUFFER_BYTES
    ) as http:
        gateway = Gateway(http, settings.api_gateway_url, settings.admin_request_timeout_seconds)
        jwks = Jwks(settings.jwks_url, settings.jwt_issuer, settings.jwt_audience)
        sessions = SessionStore(
            connections.redis, settings.admin_session_idle_seconds, settings.admin_session_max_seconds
        )
        yield Runtime(
            settings,
            http,
            gateway,
            jwks,
            sessions,
            Auth(gateway, jwks, sessions, http),
            Views(),
            Relays(),
            Known(),
            Verdicts(),
        )
