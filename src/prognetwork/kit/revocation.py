"""Signed-out sessions, as every verifier sees them.

An access token cannot be recalled once issued, but it names its session (`sid`). Ending a
session — logout, refresh-token reuse, a password reset, a disabled account — writes
`auth:revoked:<sid>` to Redis for one access-token lifetime (plus the verifiers' clock leeway):
after that every token of the session has expired anyway, so the set stays small. Every
verifier (the gateway and each service) checks the key right after the signature, so a
signed-out token stops working everywhere within one Redis round trip.

When Redis cannot be reached the check follows the gateway's rate-limit policy: safe methods
(GET, HEAD, OPTIONS) are served — a signed-out token may read for the length of the outage —
and everything else is refused with 503 (fail closed). Either way it is counted, and Redis is
not asked again for `BREAKER_SECONDS`, so an outage costs one timeout, not one per request.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import structlog
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from prognetwork.kit import tokens
from prognetwork.kit.auth import invalid_token
from prognetwork.kit.problems import REVOCATION_CHECK_UNAVAILABLE

log = structlog.get_logger("prognetwork.revocation")
KEY_PREFIX = "auth:revoked:"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BREAKER_SECONDS = 1.0
REVOKED_SEEN = Counter("auth_revoked_tokens", "Requests refused because their session was signed out.")
UNCHECKED = Counter(
    "auth_revocation_unavailable", "Requests decided without the revocation set (Redis down).", ("decision",)
)
for _decision in ("allowed", "refused"):
    UNCHECKED.labels(_decision)


class Revocations:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._skip_until = 0.0

    async def revoke(self, session_ids: Iterable[str], access_token_ttl_seconds: int) -> None:
        """Make every access token of these sessions invalid from now on (raises if Redis is down)."""
        ttl = access_token_ttl_seconds + tokens.LEEWAY_SECONDS
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.set(KEY_PREFIX + sid, "1", ex=ttl)
            await pipe.execute()

    async def is_revoked(self, sid: str) -> bool | None:
        """Whether the session was signed out; None when Redis cannot say (see the module's policy)."""
        if time.monotonic() < self._skip_until:
            return None
        try:
            return bool(await self.redis.exists(KEY_PREFIX + sid))
        except (RedisError, OSError) as exc:
            self._skip_until = time.monotonic() + BREAKER_SECONDS
            log.warning("revocation set unavailable", error=type(exc).__name__)
            return None

    async def ensure_active(self, claims: dict[str, Any], method: str) -> None:
        """Raise a 401 problem if the token's session was signed out (503 when that cannot be known)."""
        sid = claims.get("sid")
        if not isinstance(sid, str) or not sid:
            raise invalid_token("it names no session")
        revoked = await self.is_revoked(sid)
        if revoked:
            REVOKED_SEEN.inc()
            raise invalid_token("its session has been signed out")
        if revoked is False:
            return
        if method in SAFE_METHODS:
            UNCHECKED.labels("allowed").inc()
            return
        UNCHECKED.labels("refused").inc()
        raise REVOCATION_CHECK_UNAVAILABLE(
            "Signed-out sessions cannot be checked right now, so changes are paused; retry shortly.",
            headers={"Retry-After": "1"},
        )
