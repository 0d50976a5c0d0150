"""What a running gateway holds, opened and closed by its lifespan: the proxy and its clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from prognetwork.gateway.proxy import Proxy
from prognetwork.gateway.ratelimit import RateLimiter
from prognetwork.gateway.settings import GatewaySettings
from prognetwork.gateway.upstream import UpstreamClient
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
    upstreams = UpstreamClient()
    try:
        # The key set is fetched rarely, with aiohttp (kit.jwks); requests go through `upstreams`.
        async with aiohttp.ClientSession() as session:
            jwks = Jwks(settings.jwks_url, settings.jwt_issuer, settings.jwt_audience)
            limiter = RateLimiter(redis, settings.gateway_rate_limits)
            yield Runtime(settings, Proxy(upstreams, limiter, Revocations(redis), jwks, session))
    finally:
        await upstreams.close()
