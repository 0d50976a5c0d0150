"""The user service's public keys, held locally by any service that verifies access tokens
(the gateway, the streaming service): no call to the user service per request.

Keys are fetched at start-up, refreshed periodically, and refetched when a token names a key
id we do not know (a rotation). Those refetches draw from a small token bucket (a burst of
`REFETCH_BURST`, then one per `REFETCH_EVERY_SECONDS`) and run one at a time, so a flood of
forged key ids cannot turn into a flood of fetches, while a real rotation is seen at once.

Verified tokens are remembered (`VerifiedTokens`), as Envoy's JWT filter does: a client sends
the same access token on every request for its lifetime, and checking its Ed25519 signature
and claims again each time was the largest single cost of a request at the gateway. The
cache cannot accept what `tokens.verify` would refuse:

- only a token that passed the full check is stored, keyed by its exact text (header,
  claims and signature), so a changed `alg`, `kid`, claim or signature is a different key
  that is verified in full; issuer and audience are this verifier's, fixed;
- an entry lasts until the token's `exp` and no longer (not `exp` + the leeway): after that
  the token is verified in full again, which refuses it once the leeway is over too;
- it is emptied whenever the key set changes (a key added, replaced or withdrawn), so a
  withdrawn key stops vouching for its tokens on the next fetch, as before;
- it holds at most `size` tokens: when full, expired entries go first, then the oldest.

Revocation is not the cache's concern: a signed-out session is checked after it, on every
request (kit.revocation).
"""

from __future__ import annotations

import asyncio
import json
import time
from itertools import islice
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
CACHE_SIZE = 10_000  # tokens: one or two per active client within an access-token lifetime
# When the cache is full and nothing in it has expired, this share of it (the oldest) makes room.
CACHE_EVICT_SHARE = 10


class VerifiedTokens:
    """Claims of tokens that passed `tokens.verify`, each kept until its `exp` (see the module).

    The claims returned are shared by every request carrying that token: read them, never
    change them.
    """

    def __init__(self, size: int = CACHE_SIZE) -> None:
        if size < 1:
            raise ValueError("the cache must hold at least one token")
        self.size = size
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float) -> dict[str, Any] | None:
        """The claims of `token` if it was verified and `now` (epoch seconds) is before its exp."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        if now < entry[0]:
            return entry[1]
        del self._entries[token]
        return None

    def put(self, token: str, claims: dict[str, Any], now: float) -> None:
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= now:
            return  # accepted within the leeway only: verified in full each time, as before
        entries = self._entries
        if token not in entries and len(entries) >= self.size:
            self._make_room(now)
        entries[token] = (float(exp), claims)

    def clear(self) -> None:
        self._entries.clear()

    def _make_room(self, now: float) -> None:
        entries = self._entries
        for token in [token for token, (exp, _) in entries.items() if exp <= now]:
            del entries[token]
        if len(entries) >= self.size:
            # Dicts keep insertion order: the first ones are the oldest.
            for token in list(islice(entries, max(1, self.size // CACHE_EVICT_SHARE))):
                del entries[token]


class Jwks:
    def __init__(self, url: str, issuer: str, audience: str, cache_size: int = CACHE_SIZE) -> None:
        self.url = url
        self.issuer = issuer
        self.audience = audience
        self.keys: dict[str, Any] = {}
        self.verified = VerifiedTokens(cache_size)
        self._published: dict[str, str] = {}  # kid → the JWK as published, to see a change
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
            accepted = [
                jwk
                for jwk in body.get("keys", [])
                if jwk.get("kid") and jwk.get("alg", tokens.ALGORITHM) == tokens.ALGORITHM
            ]
            keys = {jwk["kid"]: jwt.PyJWK(jwk, algorithm=tokens.ALGORITHM).key for jwk in accepted}
            published = {jwk["kid"]: json.dumps(jwk, sort_keys=True) for jwk in accepted}
        except Exception:
            JWKS_FETCHES.labels("error").inc()
            raise
        JWKS_FETCHES.labels("ok").inc()
        if published != self._published:
            # A key added, replaced or withdrawn: what the old set vouched for is checked anew.
            self.verified.clear()
            self._published = published
        self.keys = keys  # replaced whole: retired keys stop verifying

    async def verify(self, token: str, session: aiohttp.ClientSession) -> dict[str, Any]:
        """The claims of a valid token (tokens.verify's rules), or InvalidToken. The claims may
        come from the cache: shared, read-only."""
        now = time.time()
        claims = self.verified.get(token, now)
        if claims is not None:
            return claims
        try:
            claims = tokens.verify(token, self.keys.get, self.issuer, self.audience)
        except tokens.UnknownKey:
            if not await self._refetch(session):
                raise
            claims = tokens.verify(token, self.keys.get, self.issuer, self.audience)
        self.verified.put(token, claims, time.time())
        return claims

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
