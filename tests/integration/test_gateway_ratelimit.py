"""Rate-limit decisions against a real Redis: each subject's window counts down, then refuses;
with several replicas, the limit still binds within the documented bound."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from prognetwork.gateway.ratelimit import RateLimiter, lease_size
from prognetwork.gateway.settings import RateLimit
from prognetwork.kit.cache import create_redis

WINDOW_SECONDS = 60
LIMITS = {"tight": RateLimit(requests=3, window_seconds=WINDOW_SECONDS),
          "roomy": RateLimit(requests=100, window_seconds=WINDOW_SECONDS)}


@pytest.fixture
async def limiter(redis_url) -> AsyncIterator[RateLimiter]:
    redis = create_redis(redis_url)
    yield RateLimiter(redis, LIMITS)
    for group in LIMITS:
        async for key in redis.scan_iter(match=f"rl:{group}:test-*"):
            await redis.delete(key)
    await redis.aclose()


def subject() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def rejections(group: str) -> float:
    return REGISTRY.get_sample_value("gateway_ratelimit_rejections_total", {"group": group}) or 0.0


async def test_requests_within_the_limit_count_down_and_the_next_one_is_refused(limiter):
    who, before = subject(), rejections("tight")
    decisions = [await limiter.check("tight", who, method) for method in ("GET", "POST", "GET", "DELETE")]
    assert [(d.allowed, d.limit, d.remaining) for d in decisions] == [
        (True, 3, 2), (True, 3, 1), (True, 3, 0), (False, 3, 0)]
    assert all(not d.degraded and 1 <= d.reset_seconds <= WINDOW_SECONDS for d in decisions)
    assert rejections("tight") == before + 1


async def test_each_subject_and_each_group_is_counted_apart(limiter):
    spent, fresh = subject(), subject()
    for _ in range(4):
        await limiter.check("tight", spent, "GET")
    assert not (await limiter.check("tight", spent, "GET")).allowed
    assert (await limiter.check("tight", fresh, "GET")).remaining == 2
    assert (await limiter.check("roomy", spent, "GET")).remaining == 99


# --- leases: most requests are decided without a round trip, and the limit still binds ----------

LEASED = RateLimit(requests=1000, window_seconds=WINDOW_SECONDS)  # lease_size: 10 hits


@pytest.fixture
async def replicas(redis_url) -> AsyncIterator[list[RateLimiter]]:
    """Two gateway replicas' limiters on one Redis, as two processes would have them."""
    clients = [create_redis(redis_url) for _ in range(2)]
    yield [RateLimiter(client, {"leased": LEASED}) for client in clients]
    async for key in clients[0].scan_iter(match="rl:leased:test-*"):
        await clients[0].delete(key)
    for client in clients:
        await client.aclose()


async def test_one_replica_serves_exactly_the_limit_reserving_a_lease_at_a_time(replicas, redis_url):
    limiter, who = replicas[0], subject()
    redis = create_redis(redis_url)
    try:
        first = await limiter.check("leased", who, "GET")
        # One round trip reserved a whole lease in the shared window.
        assert int(await redis.get(f"rl:leased:{who}")) == lease_size(LEASED.requests)
        decisions = [first] + [await limiter.check("leased", who, "GET") for _ in range(LEASED.requests + 4)]
        assert [d.allowed for d in decisions] == [True] * LEASED.requests + [False] * 5
        # One replica's remaining count is exact: its own lease is the only unspent reservation.
        assert [d.remaining for d in decisions[:3]] == [999, 998, 997]
        # Once the window was spent, refusals were decided here: Redis was not asked again.
        assert int(await redis.get(f"rl:leased:{who}")) == LEASED.requests
    finally:
        await redis.aclose()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_two_replicas_never_serve_more_than_the_limit_and_refuse_early_at_most_by_the_bound(replicas, seed):
    who, lease = subject(), lease_size(LEASED.requests)
    rng = random.Random(seed)
    served, first_refusal = 0, None
    for _ in range(2 * LEASED.requests):
        if (await rng.choice(replicas).check("leased", who, "GET")).allowed:
            served += 1
        elif first_refusal is None:
            first_refusal = served
    assert served == LEASED.requests  # every lease was spent by the end: exactly the limit, never more
    # Refused at the latest after the limit, at the earliest (N - 1) x (b - 1) requests before it.
    assert LEASED.requests - (len(replicas) - 1) * (lease - 1) <= first_refusal <= LEASED.requests


async def test_concurrent_requests_of_one_subject_share_one_reservation(replicas):
    limiter, who = replicas[0], subject()
    decisions = await asyncio.gather(*(limiter.check("leased", who, "GET") for _ in range(25)))
    assert all(d.allowed for d in decisions)
    # 25 requests, leases of 10: three reservations, not one per request.
    assert sorted(d.remaining for d in decisions) == list(range(LEASED.requests - 25, LEASED.requests))
