"""Rate limits shared by every gateway replica (fixed windows in Redis).

When Redis cannot be reached, reads (GET, HEAD, OPTIONS) fail open — serving them unlimited
for a moment beats refusing every page view — and writes fail closed with 503, since a write
that must not be abused is exactly what a limiter protects. Either way it is logged and
counted, and Redis is not asked again for `BREAKER_SECONDS`, so an outage costs one timeout,
not one per request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from prognetwork.gateway.problems import RATE_LIMITED, RATE_LIMITER_UNAVAILABLE
from prognetwork.gateway.settings import RateLimit
from prognetwork.kit.problems import Problem
from prognetwork.kit.throttle import Counter as WindowCounter

log = structlog.get_logger("prognetwork.gateway.ratelimit")
BREAKER_SECONDS = 1.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REJECTED = Counter("gateway_ratelimit_rejections", "Requests refused by a rate limit.", ("group",))
DEGRADED = Counter(
    "gateway_ratelimit_unavailable", "Requests decided without Redis (limiter down).", ("decision",)
)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int = 0
    remaining: int = 0
    reset_seconds: int = 0
    degraded: bool = False  # decided without Redis


class RateLimiter:
    def __init__(self, redis: Redis, limits: dict[str, RateLimit]) -> None:
        self.counter = WindowCounter(redis)
        self.limits = limits
        self._skip_until = 0.0

    async def check(self, group: str, subject: str, method: str) -> Decision:
        limit = self.limits[group]
        if time.monotonic() >= self._skip_until:
            try:
                window = await self.counter.hit(f"rl:{group}:{subject}", limit.window_seconds)
            except (RedisError, OSError) as exc:
                self._skip_until = time.monotonic() + BREAKER_SECONDS
                log.warning("rate limiter unavailable", error=type(exc).__name__)
            else:
                allowed = window.count <= limit.requests
                if not allowed:
                    REJECTED.labels(group).inc()
                return Decision(
                    allowed, limit.requests, max(0, limit.requests - window.count), window.retry_after_seconds
                )
        allowed = method in SAFE_METHODS
        DEGRADED.labels("allowed" if allowed else "refused").inc()
        return Decision(allowed, degraded=True)


def refusal(decision: Decision) -> Problem:
    """The answer to a request `decision` did not allow: over its limit, or a write while Redis is down."""
    if decision.degraded:
        return RATE_LIMITER_UNAVAILABLE(
            "Rate limiting is unavailable, so writes are paused; retry shortly.", headers={"Retry-After": "1"}
        )
    return RATE_LIMITED(
        f"Too many requests; retry in {decision.reset_seconds} seconds.",
        headers={
            "Retry-After": str(decision.reset_seconds),
            "RateLimit-Limit": str(decision.limit),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(decision.reset_seconds),
        },
    )
