"""What a running gateway holds, opened and closed by its lifespan: the proxy and its clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prognetwork.gateway.proxy import Proxy, retry_session, upstream_session
from prognetwork.gateway.ratelimit import RateLimiter
from prognetwork.gateway.settings import GatewaySettings
from prognetwork.kit.app import Connections
from prognetwork.kit.jwks import Jwks
from prognetwork.kit.revocation import Revocations


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: GatewaySettings
    proxy: Proxy


@asynccontextmanager
async def open_runtime(settings: GatewaySettings, connections: Connections) -> AsyncIterator[Runtime]:
    redis = connections.redis
    async with upstream_session() as session, retry_session() as retries:
        jwks = Jwks(settings.jwks_url, settings.jwt_issuer, settings.jwt_audience)
        limiter = RateLimiter(redis, settings.gateway_rate_limits)
        yield Runtime(settings, Proxy(session, limiter, Revocations(redis), jwks, retries))
