"""Following the revocation set (kit.revocation): a verifier's in-memory copy sees every session
signed out before or after it subscribed, is used only while subscribed, and is rebuilt whenever
a message may have been missed. Real Redis; every wait polls with a deadline."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from prognetwork.kit.cache import create_redis
from prognetwork.kit.revocation import CHANNEL, KEY_PREFIX, Revocations
from tests.helpers.polling import eventually_async

TTL = 60


def sid() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
async def writer(redis_url) -> AsyncIterator[Revocations]:
    """What the user service does on logout: `revoke`."""
    redis = create_redis(redis_url)
    yield Revocations(redis)
    async for key in redis.scan_iter(match=KEY_PREFIX + "test-*"):
        await redis.delete(key)
    await redis.aclose()


class Follower:
    """A verifier following the set, on a client named so that a test can cut its subscription."""

    def __init__(self, redis_url: str) -> None:
        self.name = f"follower-{uuid.uuid4().hex[:8]}"
        self.redis = Redis.from_url(redis_url, decode_responses=True, client_name=self.name, socket_timeout=2)
        self.revocations = Revocations(self.redis)
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.revocations.follow(self.stop))

    async def following(self) -> bool:
        return self.revocations.following

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        await self.redis.aclose()

    async def cut_subscription(self, admin: Redis) -> None:
        """Kill this follower's subscribed connection, as a network failure or a Redis restart would."""
        for client in await admin.client_list(_type="pubsub"):
            if client.get("name") == self.name:
                await admin.client_kill_filter(_id=client["id"])


@pytest.fixture
async def follower(redis_url) -> AsyncIterator[Follower]:
    following = Follower(redis_url)
    yield following
    await following.close()


async def test_before_it_follows_a_verifier_asks_redis_each_time(writer, follower):
    signed_out = sid()
    await writer.revoke([signed_out], TTL)
    assert not follower.revocations.following
    assert await follower.revocations.is_revoked(signed_out) is True
    assert await follower.revocations.is_revoked(sid()) is False


async def test_sessions_signed_out_before_it_subscribed_are_in_its_copy(writer, follower):
    earlier = sid()
    await writer.revoke([earlier], TTL)
    follower.start()
    await eventually_async(follower.following, what="the follower to subscribe")
    assert await follower.revocations.is_revoked(earlier) is True
    assert await follower.revocations.is_revoked(sid()) is False


async def test_a_session_signed_out_later_reaches_the_copy_and_is_answered_from_it(writer, follower, redis_url):
    follower.start()
    await eventually_async(follower.following, what="the follower to subscribe")
    later = sid()
    await writer.revoke([later], TTL)

    async def refused() -> bool:
        return await follower.revocations.is_revoked(later) is True

    await eventually_async(refused, what="the revocation to reach the follower")
    # Answered from memory: with the key gone from Redis, the copy still knows (until its TTL).
    await writer.redis.delete(KEY_PREFIX + later)
    assert await follower.revocations.is_revoked(later) is True


async def test_a_remade_subscription_is_never_trusted_to_have_missed_nothing(writer, follower, redis_url):
    follower.start()
    await eventually_async(follower.following, what="the follower to subscribe")
    # A revocation whose message this follower never got (written without publishing), as if it
    # had been published while its connection was down...
    missed = sid()
    await writer.redis.set(KEY_PREFIX + missed, "1", ex=TTL)
    assert await follower.revocations.is_revoked(missed) is False
    admin = create_redis(redis_url)
    try:
        # ...and the connection does go down. redis-py would quietly reconnect and resubscribe;
        # the follower must notice and load the set anew.
        await follower.cut_subscription(admin)
    finally:
        await admin.aclose()

    async def refused_and_following() -> bool:
        return follower.revocations.following and await follower.revocations.is_revoked(missed) is True

    await eventually_async(refused_and_following, what="the follower to rebuild its copy after reconnecting")


async def test_a_message_it_cannot_read_makes_it_rebuild_its_copy(writer, follower):
    follower.start()
    await eventually_async(follower.following, what="the follower to subscribe")
    # A revocation whose message never came (written without publishing): the copy lacks it...
    missed = sid()
    await writer.redis.set(KEY_PREFIX + missed, "1", ex=TTL)
    assert await follower.revocations.is_revoked(missed) is False
    # ...until something on the channel cannot be read, after which the copy is loaded anew.
    await writer.redis.publish(CHANNEL, "not a revocation")

    async def refused() -> bool:
        return follower.revocations.following and await follower.revocations.is_revoked(missed) is True

    await eventually_async(refused, what="the follower to rebuild its copy")


async def test_a_subscription_redis_py_remakes_on_its_own_is_reported_before_it_resubscribes(follower, redis_url):
    """redis-py reconnects a dropped subscription by itself (when the drop is found between reads)
    and resubscribes: messages published meanwhile are gone without an error. The follower's
    subscription reports every reconnection, which sets the copy aside."""
    from prognetwork.kit.revocation import _Subscription

    reports: list[int] = []
    subscription = _Subscription(follower.redis, lambda: reports.append(subscription.connects))
    await subscription.subscribe(f"test-channel-{uuid.uuid4().hex}")
    admin = create_redis(redis_url)
    try:
        await follower.cut_subscription(admin)

        async def remade() -> bool:
            await subscription.get_message(timeout=0.2)  # no error: redis-py reconnects quietly
            return bool(reports)

        await eventually_async(remade, what="the subscription to be remade")
        assert reports == [1]
    finally:
        await subscription.aclose()
        await admin.aclose()


async def test_a_hung_redis_sets_the_copy_aside_and_it_is_trusted_again_once_redis_answers(tmp_path):
    """A subscription whose connection hangs reads nothing, forever: the follower's heartbeat
    notices, and checks go back to asking Redis (fail closed for writes) instead of trusting a
    copy that no longer learns of revocations."""
    from tests.helpers.databases import DisposableRedis

    redis = DisposableRedis(tmp_path)
    hung = Follower(redis.url)
    try:
        hung.start()
        await eventually_async(hung.following, what="the follower to trust its copy")
        redis.hang()

        async def set_aside() -> bool:
            return not hung.revocations.following

        await eventually_async(set_aside, timeout=30, what="the copy set aside while Redis hangs")
        redis.resume()
        await eventually_async(hung.following, timeout=30, what="the copy trusted again")
    finally:
        redis.resume()
        await hung.close()
        redis.stop()
