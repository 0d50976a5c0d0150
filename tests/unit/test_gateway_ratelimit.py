"""Rate-limit decisions when Redis cannot be reached, and the answers a refusal becomes.

Redis here is a real client (built as the gateway builds it) pointed at a local port that is
bound but not listening, so every connection is refused at once: an outage without a network.
Counting against a live Redis is tests/integration/test_gateway_ratelimit.py's.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from prognetwork.gateway.ratelimit import Decision, RateLimiter, refusal
from prognetwork.gateway.settings import RateLimit
from prognetwork.kit.cache import create_redis

LIMITS = {"default": RateLimit(requests=10, window_seconds=60)}
READS = ("GET", "HEAD", "OPTIONS")
WRITES = ("POST", "PUT", "PATCH", "DELETE")


@pytest.fixture
async def limiter_without_redis() -> AsyncIterator[RateLimiter]:
    # Bound and never listening: the port stays ours, and connecting to it is refused.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        redis = create_redis(f"redis://127.0.0.1:{closed.getsockname()[1]}/0")
        try:
            yield RateLimiter(redis, LIMITS)
        finally:
            await redis.aclose()


def degraded(decision: str) -> float:
    return REGISTRY.get_sample_value("gateway_ratelimit_unavailable_total", {"decision": decision}) or 0.0


def outage_warnings(caplog) -> list[dict]:
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "rate limiter unavailable"]


@pytest.mark.parametrize("method", READS)
async def test_reads_are_served_while_redis_is_down(limiter_without_redis, method):
    decision = await limiter_without_redis.check("default", "a:203.0.113.7", method)
    assert decision == Decision(True, degraded=True)


@pytest.mark.parametrize("method", WRITES)
async def test_writes_are_refused_while_redis_is_down(limiter_without_redis, method):
    decision = await limiter_without_redis.check("default", "u:alice", method)
    assert decision == Decision(False, degraded=True)


async def test_an_outage_is_noticed_once_then_the_breaker_decides_without_asking_redis(limiter_without_redis, caplog):
    allowed, refused = degraded("allowed"), degraded("refused")
    with caplog.at_level(logging.WARNING, logger="prognetwork.gateway.ratelimit"):
        decisions = [await limiter_without_redis.check("default", f"a:10.0.0.{n}", method)
                     for n, method in enumerate(["GET", "POST", "GET", "DELETE", "HEAD"])]
    assert [d.allowed for d in decisions] == [True, False, True, False, True]
    assert all(d.degraded for d in decisions)
    # One failed round trip opens the breaker; the four requests after it do not try Redis again.
    warnings = outage_warnings(caplog)
    assert len(warnings) == 1 and warnings[0]["error"] == "ConnectionError"
    # Every decision made without Redis is counted, by what it decided.
    assert (degraded("allowed") - allowed, degraded("refused") - refused) == (3.0, 2.0)


def test_a_write_refused_during_an_outage_is_a_503_asking_to_retry_shortly():
    problem = refusal(Decision(False, degraded=True))
    assert (problem.status, problem.kind) == (503, "rate-limiter-unavailable")
    assert problem.headers == {"Retry-After": "1"}
    assert "writes are paused" in problem.detail


def test_a_request_over_its_limit_is_a_429_saying_when_to_retry():
    problem = refusal(Decision(False, limit=30, remaining=0, reset_seconds=42))
    assert (problem.status, problem.kind) == (429, "rate-limited")
    assert problem.headers == {"Retry-After": "42", "RateLimit-Limit": "30", "RateLimit-Remaining": "0",
                               "RateLimit-Reset": "42"}
    assert "42 seconds" in problem.detail
