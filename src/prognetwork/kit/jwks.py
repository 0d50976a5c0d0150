"""The user service's public keys, held locally by any service that verifies access tokens
(the gateway, the streaming service): no call to the user service per request.

Keys are fetched at start-up, refreshed periodically, and refetched when a token names a key
id we do not know (a rotation). Those refetches draw from a small token bucket (a burst of
`REFETCH_BURST`, then one per `REFETCH_EVERY_SECONDS`) and run one at a time, so a flood of
forged key ids cannot turn into a flood of fetches, while a real rotation is seen at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import structlog
from prometheus_client import Counter

from prognetwork.kit import retry, tokens

log = structlog.get_logger("prognetwork.jwks")
REFETCH_BURST = 3.0
REFETCH_EVERY_SECONDS = 10.0
JWKS_FETCHES = Counter("jwks_fetches", "Fetches of the user service's key set.", ("outcome",))


class Jwks:
    def __init__(self, url: str, issuer: str, audience: str) -> None:
        self.url = url
        self.issuer = issuer
        self.audience = audience
        self.keys: dict[str, Any] = {}
        self._fetches = 0
        self._allowance = REFETCH_BURST
        self._allowance_at = time.monotonic()
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return bool(self.keys)

    async def fetch(self, session: aiohttp.ClientSession) -> None:
        self._fetches += 1
        try:
            async with session.get(self.url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                response.raise_for_status()
                body = await response.json()
            keys = {
                jwk["kid"]: jwt.PyJWK(jwk, algorithm=tokens.ALGORITHM).key
                for jwk in body.get("keys", [])
                if jwk.get("kid") and jwk.get("alg", tokens.ALGORITHM) == tokens.ALGORITHM
            }
        except Exception:
            JWKS_FETCHES.labels("error").inc()
            raise
        JWKS_FETCHES.labels("ok").inc()
        self.keys = keys  # replaced whole: retired keys stop verifying

    async def verify(self, token: str, session: aiohttp.ClientSession) -> dict[str, Any]:
        try:
            return tokens.verify(token, self.keys.get, self.issuer, self.audience)
        except tokens.UnknownKey:
            if not await self._refetch(session):
                raise
            return tokens.verify(token, self.keys.get, self.issuer, self.audience)

    async def _refetch(self, session: aiohttp.ClientSession) -> bool:
        now = time.monotonic()
        self._allowance = min(
            REFETCH_BURST, self._allowance + (now - self._allowance_at) / REFETCH_EVERY_SECONDS
        )
        self._allowance_at = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        seen = self._fetches
        async with self._lock:
            if self._fetches != seen:
                return True  # another request refetched while we waited: use its result
            try:
                await self.fetch(session)
            except Exception as exc:
                log.warning("key set refetch failed", error=str(exc))
                return False
        return True

    async def keep_fresh(self, session: aiohttp.ClientSession, every: float, stop: asyncio.Event) -> None:
        """Refetch the key set every `every` seconds until `stop`; a failed fetch is retried
        after 0.5 s doubling up to 10 s, whether or not keys are already loaded."""
        await retry.run_forever(
            retry.Backoff("jwks.refresh", base=0.5, cap=10.0), lambda: self.fetch(session), stop, idle=every
        )
