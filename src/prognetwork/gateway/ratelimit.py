"""Rate limits shared by every gateway replica: fixed windows in Redis, spent through local leases.

Each (group, subject) has a fixed window in Redis (kit.throttle), as before. A replica does not
count every request there: it reserves a *lease* of `lease_size(limit)` hits in one round trip
(INCRBY) and spends it locally, reserving again when it is used up. The window's count in Redis
is therefore always at least what every replica has served, and a reservation is granted only
up to the limit, so:

- a subject is never served more than its limit in a window, with any number of replicas;
- with N replicas it may be refused up to (N - 1) x (b - 1) requests before reaching its limit,
  where b = lease_size(limit) = max(1, min(limit // 100, 100)): hits other replicas reserved
  and have not used yet. That is under 1% of the limit per extra replica, and none with one
  replica (or with a client that stays on one). Limits below 200 (the auth group's 30, for
  instance) get b = 1: one round trip per request, exact, as before.

Once a window is spent, its refusals are decided locally until it ends (a window's count only
grows), so a client hammering past its limit costs no round trips either. Reservations for one
subject are made one at a time; requests arriving meanwhile wait for that one.

When Redis cannot be reached for a decision (no lease left to spend), reads (GET, HEAD, OPTIONS)
fail open — serving them unlimited for a moment beats refusing every page view — and writes fail
closed with 503, since a write that must not be abused is exactly what a limiter protects.
Either way it is logged and counted, and Redis is not asked again for `BREAKER_SECONDS`, so an
outage costs one timeout, not one per request. A lease granted before the outage is still spent:
those hits were counted in Redis.
"""

from __future__ import annotations

import asyncio
import math
import time
from itertools import islice
from typing import NamedTuple

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
LEASE_SHARE = 100  # a lease is at most 1/LEASE_SHARE of the limit...
LEASE_MAX = 100  # ...and at most this many hits
MAX_SUBJECTS = 100_000  # leases kept; beyond it, ended windows go first, then the oldest
REJECTED = Counter("gateway_ratelimit_rejections", "Requests refused by a rate limit.", ("group",))
DEGRADED = Counter(
    "gateway_ratelimit_unavailable", "Requests decided without Redis (limiter down).", ("decision",)
)


def lease_size(limit: int) -> int:
    """How many hits a replica reserves at once for a subject whose limit is `limit`."""
    return max(1, min(limit // LEASE_SHARE, LEASE_MAX))


class Decision(NamedTuple):  # one per request: a tuple is the cheapest immutable record
    allowed: bool
    limit: int = 0
    remaining: int = 0
    reset_seconds: int = 0
    degraded: bool = False  # decided without Redis


class _Lease:
    """This replica's share of one subject's current window."""

    __slots__ = ("count", "ends", "left")

    def __init__(self, left: int, count: int, ends: float) -> None:
        self.left = left  # reserved here and not yet spent
        self.count = count  # the window's count in Redis after the latest reservation
        self.ends = ends  # time.monotonic() when the window ends


class RateLimiter:
    def __init__(self, redis: Redis, limits: dict[str, RateLimit], max_subjects: int = MAX_SUBJECTS) -> None:
        self.counter = WindowCounter(redis)
        self.limits = limits
        self.max_subjects = max_subjects
        self._skip_until = 0.0
        self._leases: dict[str, _Lease] = {}
        self._reserving: dict[str, asyncio.Future[None]] = {}

    async def check(self, group: str, subject: str, method: str) -> Decision:
        limit = self.limits[group]
        key = f"rl:{group}:{subject}"
        while True:
            lease = self._leases.get(key)
            now = time.monotonic()
            if lease is not None and now < lease.ends:
                if lease.left > 0:
                    lease.left -= 1
                    return _allowed(limit.requests, lease, now)
                if lease.count >= limit.requests:
                    return _refused(group, limit.requests, lease, now)
            reserving = self._reserving.get(key)
            if reserving is None:
                break
            await reserving  # another request of this subject is reserving: share its lease
        if now < self._skip_until:
            return _degraded(method)
        done = asyncio.get_running_loop().create_future()
        self._reserving[key] = done
        try:
            lease = await self._reserve(key, limit)
        finally:
            del self._reserving[key]
            done.set_result(None)
        if lease is None:
            return _degraded(method)
        now = time.monotonic()
        if lease.left > 0:
            lease.left -= 1
            return _allowed(limit.requests, lease, now)
        return _refused(group, limit.requests, lease, now)

    async def _reserve(self, key: str, limit: RateLimit) -> _Lease | None:
        size = lease_size(limit.requests)
        try:
            window = await self.counter.hit(key, limit.window_seconds, size)
        except (RedisError, OSError) as exc:
            self._skip_until = time.monotonic() + BREAKER_SECONDS
            log.warning("rate limiter unavailable", error=type(exc).__name__)
            return None
        # Only what still fits under the limit is granted; the rest of the batch is never served.
        granted = max(0, min(size, limit.requests - (window.count - size)))
        now = time.monotonic()
        lease = _Lease(granted, window.count, now + window.ends_in_seconds)
        leases = self._leases
        leases.pop(key, None)  # re-inserted last: the dict's order is the order of use
        if len(leases) >= self.max_subjects:
            self._make_room(now)
        leases[key] = lease
        return lease

    def _make_room(self, now: float) -> None:
        leases = self._leases
        for key in [key for key, lease in leases.items() if lease.ends <= now]:
            del leases[key]
        if len(leases) >= self.max_subjects:
            # Dropping a lease forgoes its unspent hits: at worst that subject is refused early.
            for key in list(islice(leases, max(1, self.max_subjects // 10))):
                del leases[key]


def _reset(lease: _Lease, now: float) -> int:
    return max(1, math.ceil(lease.ends - now))


def _allowed(limit: int, lease: _Lease, now: float) -> Decision:
    # Other replicas' unspent reservations are counted as spent: remaining errs low, never high.
    return Decision(True, limit, max(0, limit - lease.count + lease.left), _reset(lease, now))


def _refused(group: str, limit: int, lease: _Lease, now: float) -> Decision:
    REJECTED.labels(group).inc()
    return Decision(False, limit, 0, _reset(lease, now))


def _degraded(method: str) -> Decision:
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
