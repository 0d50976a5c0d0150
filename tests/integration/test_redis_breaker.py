"""A Redis that hangs or restarts, seen through kit.cache's client: bounded waits, then failing
fast, then back on its own — pooled connections from before a restart included."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from prognetwork.kit.cache import RedisUnavailable, create_redis
from tests.helpers.databases import DisposableRedis
from tests.helpers.polling import eventually_async


@pytest.fixture
def own_redis(tmp_path):
    redis = DisposableRedis(tmp_path)
    yield redis
    redis.stop()


async def _outcome(client) -> str:
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.incr("breaker:n")
            pipe.get("breaker:n")
            await pipe.execute()
    except RedisUnavailable:
        return "unavailable"
    except (RedisTimeoutError, RedisConnectionError) as exc:
        return type(exc).__name__
    return "ok"


async def test_a_hung_redis_opens_the_breaker_and_a_resumed_one_closes_it(own_redis):
    client = create_redis(own_redis.url, "test-hung")
    try:
        assert await _outcome(client) == "ok"
        own_redis.hang()
        seen = []

        async def fails_fast():
            seen.append(await _outcome(client))
            return seen[-1] == "unavailable"

        await eventually_async(fails_fast, what="the breaker to open on a hung Redis")
        # Before it opened, each command ended on the read timeout, never a longer wait.
        assert set(seen[:-1]) <= {"TimeoutError", "ConnectionError"} and client.breaker.is_open
        own_redis.resume()

        async def back():
            return await _outcome(client) == "ok"

        await eventually_async(back, what="commands to succeed once Redis answers")
        assert not client.breaker.is_open
    finally:
        await client.aclose()


async def test_after_a_restart_the_pool_recovers_without_help(own_redis):
    client = create_redis(own_redis.url, "test-restart")
    try:
        # Several pooled connections, all of them from before the restart.
        await asyncio.gather(*(client.ping() for _ in range(5)))
        own_redis.stop()

        async def refused_fast():
            return await _outcome(client) == "unavailable"

        await eventually_async(refused_fast, what="the breaker to open while Redis is down")
        own_redis.start()

        async def back():
            return await _outcome(client) == "ok"

        # The trial after the cool-down meets a pooled connection Redis no longer has; its retry
        # on a fresh connection must still count as the trial's answer.
        await eventually_async(back, what="commands to succeed after the restart")
        assert not client.breaker.is_open
    finally:
        await client.aclose()
