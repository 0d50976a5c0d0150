"""Rate-limit decisions against a real Redis: each subject's window counts down, then refuses."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from prognetwork.gateway.ratelimit import RateLimiter
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
