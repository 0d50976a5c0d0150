"""The streaming service as real processes: restarts, replicas, and the gateway in front."""

from __future__ import annotations

import asyncio
import signal
import uuid

import aiohttp
import pytest

from tests.helpers.events import append_events
from tests.helpers.polling import eventually_async
from tests.helpers.ports import free_port
from tests.helpers.processes import issuer_env, start_service
from tests.helpers.sse import open_stream
from tests.helpers.tokens import bearer, mint

pytestmark = pytest.mark.e2e


@pytest.fixture
def streaming_env(service_env, users) -> dict[str, str]:
    return {**service_env, **issuer_env(users.url), "SHUTDOWN_DRAIN_SECONDS": "0", "STREAM_POLL_SECONDS": "1"}


@pytest.fixture
def replicas(streaming_env, tmp_path):
    started = []

    def start(port: int | None = None):
        process = start_service("event-streaming", streaming_env, tmp_path, port=port)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


async def test_client_resumes_after_the_service_restarts(replicas, http, sessions, signing_key):
    port = free_port()
    first = replicas(port)
    user = uuid.uuid4()
    token = mint(signing_key, user)
    stream = await open_stream(http, first.url, token)
    expected = await append_events(sessions, 40, user_id=user, per_transaction=4)
    await stream.wait_for(lambda s: len(s.seqs) >= 20, what="some events before the restart")

    # Events keep being appended while the service stops and starts again.
    appending = asyncio.create_task(append_events(sessions, 200, user_id=user, per_transaction=1))
    assert await asyncio.to_thread(first.stop, signal.SIGTERM) == 0
    await stream.wait_for(lambda s: s.ended, what="the stream to end with the process")
    second = await asyncio.to_thread(replicas, port)
    expected += await appending
    expected += await append_events(sessions, 10, user_id=user)

    resumed = await open_stream(http, second.url, token, last_event_id=stream.seqs[-1])
    try:
        await resumed.wait_for_seq(expected[-1])
        assert stream.seqs + resumed.seqs == expected
    finally:
        await stream.close()
        await resumed.close()


async def test_two_replicas_both_deliver_every_event(replicas, http, sessions, signing_key):
    one, two = replicas(), replicas()
    admin = mint(signing_key, uuid.uuid4(), role="admin")
    user = uuid.uuid4()
    mine = mint(signing_key, user)
    watchers = [await open_stream(http, one.url, admin), await open_stream(http, two.url, admin),
                await open_stream(http, one.url, mine), await open_stream(http, two.url, mine)]
    try:
        expected = await append_events(sessions, 150, user_id=user, per_transaction=5)
        # Published on one replica, delivered by both.
        async with http.post(f"{one.url}/v1/events", json={"type": "app.ping", "payload": {}},
                             headers=bearer(mine) | {"Idempotency-Key": "ping"}) as response:
            assert response.status == 201
            expected.append((await response.json())["seq"])
        for watcher in watchers:
            await watcher.wait_for_seq(expected[-1])
        for watcher in watchers[2:]:
            assert watcher.seqs == expected
        wanted = set(expected)
        for watcher in watchers[:2]:  # admins see other events too, but these all, in order, once
            assert [s for s in watcher.seqs if s in wanted] == expected
            assert len(watcher.seqs) == len(set(watcher.seqs))
    finally:
        for watcher in watchers:
            await watcher.close()


async def test_the_first_event_arrives_through_the_gateway(service_env, users, replicas, http, signing_key, tmp_path):
    streaming = replicas()
    gateway = start_service("api-gateway", {**service_env, **issuer_env(users.url), "EVENT_STREAMING_URL": streaming.url},
                            tmp_path)
    try:
        user = uuid.uuid4()
        token = mint(signing_key, user)
        response = await http.get(f"{gateway.url}/api/v1/events/stream", headers=bearer(token),
                                  timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        from tests.helpers.sse import SseStream

        stream = SseStream(response)
        stream.start_reading()
        async with http.post(f"{gateway.url}/api/v1/events", json={"type": "app.hello", "payload": {"n": 1}},
                             headers=bearer(token) | {"Idempotency-Key": "hello"}) as published:
            assert published.status == 201
            event = await published.json()
        await stream.wait_for_seq(event["seq"])
        assert stream.events[0].event == "app.hello" and stream.events[0].json == event

        async def polled() -> bool:
            async with http.get(f"{gateway.url}/api/v1/events", params={"after": event["seq"] - 1},
                                headers=bearer(token)) as answer:
                return answer.status == 200 and [e["id"] for e in (await answer.json())["events"]] == [event["id"]]

        await eventually_async(polled, what="the event through polling")
        await stream.close()
    finally:
        gateway.stop()
