"""End-to-end fixtures: services as real processes."""

from __future__ import annotations

import pytest

from tests.helpers.processes import start_service


@pytest.fixture(autouse=True)
def fresh_rate_limits(redis_url):
    """Every test starts with empty rate-limit and login-throttle windows: the processes of one
    run share a Redis database, and the client address of them all is 127.0.0.1."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        for pattern in ("rl:*", "throttle:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def users(service_env, tmp_path):
    """The user service as a process (here `users` is a process, not an in-process client)."""
    process = start_service("user-service", service_env, tmp_path)
    yield process
    process.stop()
