"""The streaming service over real HTTP (uvicorn in a thread) and real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prometheus_client import REGISTRY

from prognetwork.streaming.app import create_app
from prognetwork.streaming.settings import StreamingSettings
from tests.helpers.events import append_events
from tests.helpers.polling import eventually_async
from tests.helpers.sse import open_stream
from tests.helpers.threads import ThreadServer
from tests.helpers.tokens import bearer, mint


def start_streaming(database_url: str, redis_url: str, jwks_url: str, tmp, **overrides: str) -> ThreadServer:
    settings = StreamingSettings(**{
        "PROG_ENV": "development", "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "JWKS_URL": jwks_url + "/.well-known/jwks.json",
        "PROG_STATE_DIR": str(tmp), "STREAM_POLL_SECONDS": "1", **overrides,
    })
    server = ThreadServer(create_app(settings))
    from tests.helpers.http import http_status
    from tests.helpers.polling import eventually

    eventually(lambda: http_status(server.url + "/readiness") == 200, timeout=20, what="streaming ready")
    return server


@pytest.fixture(scope="module")
def streaming(database_url, redis_url, jwks_server, tmp_path_factory):
    server = start_streaming(database_url, redis_url, jwks_server.url, tmp_path_factory.mktemp("streaming"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def tight(database_url, redis_url, jwks_server, tmp_path_factory):
    """Small queues, fast heartbeats and a small payload limit, to reach each limit quickly."""
    server = start_streaming(database_url, redis_url, jwks_server.url, tmp_path_factory.mktemp("tight"),
                             STREAM_QUEUE_LIMIT="4", STREAM_HEARTBEAT_SECONDS="0.2", STREAM_MAX_PAYLOAD_BYTES="1024")
    yield server
    server.close()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_stream_headers_retry_and_heartbeats(tight, http, signing_key):
    stream = await open_stream(http, tight.url, mint(signing_key, uuid.uuid4()))
    try:
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        assert stream.response.headers["Cache-Control"] == "no-cache"
        assert stream.response.headers["X-Accel-Buffering"] == "no"
        await stream.wait_for(lambda s: s.retry == 3000 and s.comments.count("keep-alive") >= 2, what="heartbeats")
    finally:
        await stream.close()


async def test_a_stream_needs_a_valid_token(streaming, http, signing_key):
    from prognetwork.users.keys import generate_pem

    async with http.get(f"{streaming.url}/v1/events/stream") as response:
        assert response.status == 401 and (await response.json())["type"].endswith("/unauthenticated")
    forged = mint(generate_pem(), uuid.uuid4(), role="admin")
    for path in ("/v1/events/stream", "/v1/events"):
        async with http.get(f"{streaming.url}{path}", headers=bearer(forged)) as response:
            assert response.status == 401 and (await response.json())["type"].endswith("/invalid-token")


async def test_a_signed_out_session_is_refused(streaming, http, signing_key, redis_url):
    from redis.asyncio import Redis

    from prognetwork.kit.revocation import Revocations

    sid = uuid.uuid4().hex
    token = mint(signing_key, uuid.uuid4(), sid=sid)
    async with http.get(f"{streaming.url}/v1/events", headers=bearer(token)) as response:
        assert response.status == 200
    redis = Redis.from_url(redis_url)
    try:
        await Revocations(redis).revoke([sid], 60)
    finally:
        await redis.aclose()
    for path in ("/v1/events/stream", "/v1/events"):
        async with http.get(f"{streaming.url}{path}", headers=bearer(token)) as response:
            problem = await response.json()
            assert response.status == 401 and "signed out" in problem["detail"], problem


async def test_an_open_stream_ends_when_its_session_is_signed_out(tight, http, signing_key, redis_url):
    from redis.asyncio import Redis

    from prognetwork.kit.revocation import Revocations

    sid = uuid.uuid4().hex
    stream = await open_stream(http, tight.url, mint(signing_key, uuid.uuid4(), sid=sid))
    try:
        await stream.wait_for(lambda s: s.comments.count("keep-alive") >= 1, what="a heartbeat")
        redis = Redis.from_url(redis_url)
        try:
            await Revocations(redis).revoke([sid], 60)
        finally:
            await redis.aclose()
        await stream.wait_for(lambda s: s.ended and s.messages[-1].event == "signed-out", what="the stream to end")
    finally:
        await stream.close()


async def test_an_open_stream_ends_when_its_token_expires(tight, http, signing_key):
    stream = await open_stream(http, tight.url, mint(signing_key, uuid.uuid4(), lifetime=1))
    try:
        await stream.wait_for(lambda s: s.ended and s.messages[-1].event == "token-expired", what="the stream to end")
    finally:
        await stream.close()


async def test_each_viewer_sees_exactly_what_it_may(streaming, http, sessions, signing_key):
    ada, bob, cid, tenant = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    tokens = {
        "ada": mint(signing_key, ada),
        "bob": mint(signing_key, bob, tid=tenant),
        "cid": mint(signing_key, cid, tid=tenant),
        "operator": mint(signing_key, uuid.uuid4(), role="operator"),
        "admin": mint(signing_key, uuid.uuid4(), role="admin"),
    }
    streams = {name: await open_stream(http, streaming.url, token) for name, token in tokens.items()}
    try:
        [about_ada] = await append_events(sessions, 1, type="test.about_ada", user_id=ada)
        [about_bob] = await append_events(sessions, 1, type="test.about_bob", user_id=bob, tenant_id=tenant)
        [tenant_wide] = await append_events(sessions, 1, type="test.tenant_wide", tenant_id=tenant)
        [platform] = await append_events(sessions, 1, type="test.platform")
        [secret] = await append_events(sessions, 1, type="test.secret", user_id=ada, tenant_id=tenant, private=True)
        # One last event each viewer may see: once it arrives, everything before it has.
        ends = {
            "ada": (await append_events(sessions, 1, type="test.end", user_id=ada))[0],
            "bob": (await append_events(sessions, 1, type="test.end", user_id=bob))[0],
            "cid": (await append_events(sessions, 1, type="test.end", user_id=cid))[0],
        }
        ends["operator"] = ends["admin"] = ends["cid"]
        expected = {
            "ada": [about_ada, ends["ada"]],
            "bob": [about_bob, tenant_wide, ends["bob"]],
            "cid": [about_bob, tenant_wide, ends["cid"]],
            "operator": [about_ada, about_bob, tenant_wide, platform, ends["ada"], ends["bob"], ends["cid"]],
        }
        expected["admin"] = expected["operator"]
        for name, stream in streams.items():
            await stream.wait_for_seq(ends[name])
            assert stream.seqs == expected[name], name
            assert secret not in stream.seqs
        first = streams["bob"].events[0]
        assert first.event == "test.about_bob"
        body = first.json
        assert body["seq"] == about_bob and body["type"] == "test.about_bob" and body["payload"] == {"n": 0}
        assert body["user_id"] == str(bob) and body["tenant_id"] == str(tenant)
        assert set(body) == {"id", "seq", "type", "user_id", "tenant_id", "payload", "occurred_at"}

        # Polling answers with the same rules.
        for name, token in tokens.items():
            async with http.get(f"{streaming.url}/v1/events", params={"after": about_ada - 1, "limit": 500},
                                headers=bearer(token)) as response:
                assert response.status == 200
                page = await response.json()
            seqs = [e["seq"] for e in page["events"]]
            assert [s for s in seqs if s <= ends["cid"]] == expected[name], name
            assert page["next_after"] == seqs[-1]
    finally:
        for stream in streams.values():
            await stream.close()


async def test_types_filter(streaming, http, sessions, signing_key):
    user = uuid.uuid4()
    stream = await open_stream(http, streaming.url, mint(signing_key, user), types="test.wanted,test.end")
    try:
        seqs = await append_events(sessions, 1, type="test.wanted", user_id=user)
        await append_events(sessions, 1, type="test.unwanted", user_id=user)
        seqs += await append_events(sessions, 1, type="test.end", user_id=user)
        await stream.wait_for_seq(seqs[-1])
        assert stream.seqs == seqs
    finally:
        await stream.close()
    async with http.get(f"{streaming.url}/v1/events/stream", params={"types": "Not A Type"},
                        headers=bearer(mint(signing_key, user))) as response:
        assert response.status == 400


async def test_private_events_never_leave(streaming, http, sessions, signing_key):
    user = uuid.uuid4()
    before = await append_events(sessions, 1, type="test.before", user_id=user)
    admin = mint(signing_key, uuid.uuid4(), role="admin")
    live = await open_stream(http, streaming.url, admin)
    mine = await open_stream(http, streaming.url, mint(signing_key, user))
    try:
        await append_events(sessions, 3, type="user.email_verification_requested", user_id=user, private=True,
                            payload={"token": "one-time-secret-token"})
        end = await append_events(sessions, 1, type="test.end", user_id=user)
        replay = await open_stream(http, streaming.url, admin, last_event_id=before[0] - 1)
        for stream in (live, mine, replay):
            await stream.wait_for_seq(end[0])
            assert all("one-time-secret-token" not in m.data for m in stream.messages)
            assert all(m.event != "user.email_verification_requested" for m in stream.messages)
        await replay.close()
        async with http.get(f"{streaming.url}/v1/events", params={"after": before[0] - 1, "limit": 500},
                            headers=bearer(admin)) as response:
            assert "one-time-secret-token" not in await response.text()
    finally:
        await live.close()
        await mine.close()


async def test_replay_after_a_disconnect_in_the_middle_of_a_burst(streaming, http, sessions, signing_key):
    user = uuid.uuid4()
    token = mint(signing_key, user)
    first = await open_stream(http, streaming.url, token)
    expected = await append_events(sessions, 100, user_id=user, per_transaction=7)
    await first.wait_for(lambda s: len(s.seqs) >= 50, what="half the first burst")
    await first.close()  # leaves in the middle: events keep coming
    received = first.seqs
    expected += await append_events(sessions, 100, user_id=user, per_transaction=3)
    # Reconnect while a third burst is being appended, so the replay meets live events at the seam.
    third = asyncio.create_task(append_events(sessions, 150, user_id=user, per_transaction=2))
    second = await open_stream(http, streaming.url, token, last_event_id=received[-1])
    expected += await third
    try:
        await second.wait_for_seq(expected[-1])
        combined = received + second.seqs
        assert combined == expected  # nothing lost, nothing twice, in order
    finally:
        await second.close()
    # The query-string form, for clients that cannot set headers.
    resumed = await open_stream(http, streaming.url, token, last_event_id=expected[-10], query_id=True)
    try:
        await resumed.wait_for_seq(expected[-1])
        assert resumed.seqs == expected[-9:]
    finally:
        await resumed.close()


async def test_a_slow_subscriber_is_cut_off_and_resumes(tight, http, sessions, signing_key):
    user = uuid.uuid4()
    token = mint(signing_key, user)
    cut_before = metric("stream_subscribers_cut_off_total")
    slow = await open_stream(http, tight.url, token, read=False)  # connected, but reads nothing
    big = {"filler": "x" * 16_000}
    appended: list[int] = []

    async def cut_off() -> bool:
        if metric("stream_subscribers_cut_off_total") > cut_before:
            return True
        if len(appended) > 5000:
            raise AssertionError("never cut off")
        appended.extend(await append_events(sessions, 20, user_id=user, per_transaction=20, payload=big))
        return False

    await eventually_async(cut_off, timeout=60, what="the slow subscriber to be cut off")
    slow.start_reading()
    try:
        await slow.wait_for(lambda s: s.ended, what="the stream to end")
        notice = slow.messages[-1]
        assert notice.event == "overflow" and notice.id is None
        got = slow.seqs
        assert got == appended[: len(got)] and notice.json["last_event_id"] == got[-1]
        assert "Last-Event-ID" in notice.json["detail"]
    finally:
        await slow.close()
    resumed = await open_stream(http, tight.url, token, last_event_id=got[-1])
    try:
        await resumed.wait_for_seq(appended[-1], timeout=30)
        assert got + resumed.seqs == appended
    finally:
        await resumed.close()


async def test_publish_validation_and_idempotency(streaming, tight, http, signing_key, db):
    user, tenant = uuid.uuid4(), uuid.uuid4()
    token = mint(signing_key, user, tid=tenant)
    url = f"{streaming.url}/v1/events"

    async def post(body, key: str | None = "k-1", who: str = token, base: str = url):
        headers = bearer(who) | ({"Idempotency-Key": key} if key is not None else {})
        async with http.post(base, json=body, headers=headers) as response:
            return response.status, await response.json()

    stream = await open_stream(http, streaming.url, token)
    note = {"type": "app.note_added", "payload": {"text": "hello"}}
    status, event = await post(note)
    assert status == 201
    assert event["type"] == "app.note_added" and event["payload"] == {"text": "hello"}
    assert event["user_id"] == str(user) and event["tenant_id"] == str(tenant)
    # A retry stores nothing new and answers with the same event.
    status, again = await post(note)
    assert status == 200 and again == event
    assert await db.fetchval("SELECT count(*) FROM events WHERE id = $1", uuid.UUID(event["id"])) == 1
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'app.note_added' AND user_id = $1", user) == 1
    # Same key, different body: refused, nothing stored.
    status, problem = await post({**note, "payload": {"text": "other"}})
    assert status == 422 and problem["type"].endswith("/idempotency-key-reused")
    # Published events stream like any other.
    await stream.wait_for_seq(event["seq"])
    assert stream.events[-1].json == event
    await stream.close()

    # Concurrent retries of one publish store it once.
    results = await asyncio.gather(*(post({"type": "app.raced", "payload": {}}, key="race") for _ in range(5)))
    assert sorted(s for s, _ in results) == [200, 200, 200, 200, 201]
    assert len({e["id"] for _, e in results}) == 1

    refusals = [
        (note, None, 400, "idempotency-key-required"),
        (note, "k" * 201, 400, "idempotency-key-invalid"),
        ({"type": "user.registered", "payload": {}}, "k-2", 403, "event-type-not-allowed"),
        ({"type": "partner.thing", "payload": {}}, "k-3", 403, "event-type-not-allowed"),
        ({"type": "app.about_someone", "payload": {}, "user_id": str(uuid.uuid4())}, "k-4", 403, None),
        ({"type": "App.Note", "payload": {}}, "k-5", 422, "invalid-request"),
        ({"type": "nonamespace", "payload": {}}, "k-6", 422, "invalid-request"),
        ({"type": "app.x", "payload": [1, 2]}, "k-7", 422, "invalid-request"),
        ({"type": "app.x", "payload": {}, "private": True}, "k-8", 422, "invalid-request"),
    ]
    for body, key, status_wanted, kind in refusals:
        status, problem = await post(body, key=key)
        assert status == status_wanted, (body, key, problem)
        assert kind is None or problem["type"].endswith(kind), problem
    status, problem = await post({"type": "app.big", "payload": {"x": "y" * 2000}}, key="k-9",
                                 base=f"{tight.url}/v1/events")
    assert status == 413 and problem["type"].endswith("/payload-too-large")

    # Operators publish into other namespaces, never the platform's own.
    operator = mint(signing_key, uuid.uuid4(), role="operator")
    status, event = await post({"type": "partner.order_shipped", "payload": {"order": 7}, "user_id": str(user)},
                               key="op-1", who=operator)
    assert status == 201 and event["user_id"] == str(user) and event["tenant_id"] is None
    for reserved in ("user.deleted", "tenant.member_invited", "billing.charged", "notification.sent", "system.restarted"):
        status, _ = await post({"type": reserved, "payload": {}}, key=f"op-{reserved}", who=operator)
        assert status == 403, reserved
    async with http.post(url, json=note, headers={"Idempotency-Key": "x"}) as response:
        assert response.status == 401


async def test_polling_pages_with_after_and_limit(streaming, http, sessions, signing_key):
    user = uuid.uuid4()
    token = mint(signing_key, user)
    seqs = await append_events(sessions, 7, type="test.polled", user_id=user, per_transaction=7)
    pages, after = [], seqs[0] - 1
    while True:
        async with http.get(f"{streaming.url}/v1/events", params={"after": after, "limit": 3},
                            headers=bearer(token)) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "application/json"
            page = await response.json()
        if not page["events"]:
            assert page["next_after"] == after
            break
        pages.append([e["seq"] for e in page["events"]])
        after = page["next_after"]
    assert pages == [seqs[:3], seqs[3:6], seqs[6:]]
    async with http.get(f"{streaming.url}/v1/events", params={"limit": 501}, headers=bearer(token)) as response:
        assert response.status == 422


async def test_metrics_count_subscribers_deliveries_and_latency(streaming, http, sessions, signing_key):
    user = uuid.uuid4()
    delivered = metric("stream_events_delivered_total")
    subscribers = metric("stream_subscribers")
    stream = await open_stream(http, streaming.url, mint(signing_key, user))
    assert metric("stream_subscribers") == subscribers + 1
    seqs = await append_events(sessions, 3, user_id=user)
    await stream.wait_for_seq(seqs[-1])
    await stream.close()

    async def gone() -> bool:
        return metric("stream_subscribers") == subscribers

    await eventually_async(gone, what="the subscriber to be gone")
    assert metric("stream_events_delivered_total") >= delivered + 3
    async with http.get(f"{streaming.url}/metrics") as response:
        text = await response.text()
    for name in ("stream_subscribers ", "stream_events_delivered_total", "stream_delivery_latency_seconds_bucket",
                 "stream_subscribers_cut_off_total", "stream_events_published_total"):
        assert name in text, name


async def test_a_publication_the_previous_release_recorded_by_seq_still_replays(streaming, http, signing_key, db):
    # Until migration 0011 a publication named its event by seq; during a rolling deploy such rows
    # keep being written, and a retry that reaches the new release must still find the event.
    token = mint(signing_key, uuid.uuid4(), tid=uuid.uuid4())
    url, body = f"{streaming.url}/v1/events", {"type": "app.migrated", "payload": {"n": 1}}
    headers = bearer(token) | {"Idempotency-Key": "before-0011"}
    async with http.post(url, json=body, headers=headers) as response:
        assert response.status == 201
        event = await response.json()
    await db.execute(
        "UPDATE event_publications SET event_id = NULL, event_seq = $1 WHERE idempotency_key = 'before-0011'",
        event["seq"],
    )
    async with http.post(url, json=body, headers=headers) as response:
        assert response.status == 200
        assert await response.json() == event
