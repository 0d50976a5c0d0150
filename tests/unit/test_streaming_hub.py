"""The streaming hub's fan-out, without its tailer: which subscriber is offered which frame, and
what a full queue, a heartbeat and a shutdown do to a subscriber's stream."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from prognetwork.streaming.hub import Frame, Hub, LatencyHistogram, Subscriber
from prognetwork.streaming.visibility import Viewer

QUEUE_LIMIT = 5
HOUR = 3600.0  # no test here waits for the tailer's poll or a production heartbeat
WAKE_TIMEOUT = 5.0  # a wake-up that works takes no time; this only bounds a broken one
ALICE, BOB, CAROL, DAVE = (uuid.uuid4() for _ in range(4))
TENANT = uuid.uuid4()


def frame(seq: int, *, type: str = "user.updated", user: uuid.UUID | None = None,
          tenant: uuid.UUID | None = None) -> Frame:
    return Frame(seq, type, user, tenant, time.time(), json.dumps({"n": seq}))


def queued(sub: Subscriber) -> list[int]:
    return [f.seq for f in sub.pending]


def subscribers_gauge() -> float:
    return REGISTRY.get_sample_value("stream_subscribers")


def cut_off_count() -> float:
    return REGISTRY.get_sample_value("stream_subscribers_cut_off_total")


async def until_waiting(task: asyncio.Task) -> None:
    """Let a just-created task run up to its first await (one pass of the loop, no timed wait)."""
    await asyncio.sleep(0)
    assert not task.done(), "the subscriber had something to act on already"


@pytest.fixture
def hub() -> Iterator[Hub]:
    hub = Hub("postgresql://unused/never-connected", queue_limit=QUEUE_LIMIT, poll_seconds=HOUR,
              heartbeat_seconds=HOUR)
    gauge = subscribers_gauge()
    yield hub
    # The subscriber gauge is process-wide: leave it as the test found it.
    for sub in list(hub._subscribers):
        hub.unsubscribe(sub)
    assert subscribers_gauge() == gauge


def test_a_frame_renders_as_one_sse_message_with_its_sequence_type_and_data():
    assert frame(42, type="user.registered").raw == b'id: 42\nevent: user.registered\ndata: {"n": 42}\n\n'


def test_users_get_their_own_events_members_their_tenants_and_admins_every_event(hub):
    alice = hub.subscribe(Viewer(ALICE, tenant_id=TENANT), None, 0)
    bob = hub.subscribe(Viewer(BOB), None, 0)
    carol = hub.subscribe(Viewer(CAROL, tenant_id=TENANT), None, 0)
    admin = hub.subscribe(Viewer(DAVE, role="admin"), None, 0)
    operator = hub.subscribe(Viewer(uuid.uuid4(), role="operator"), None, 0)
    hub.dispatch([
        frame(1, user=ALICE),
        frame(2, user=BOB),
        frame(3, tenant=TENANT),
        frame(4, user=uuid.uuid4()),
        frame(5),  # about nobody in particular: operators' and admins' only
    ])
    assert queued(alice) == [1, 3]
    assert queued(bob) == [2]
    assert queued(carol) == [3]
    assert queued(admin) == queued(operator) == [1, 2, 3, 4, 5]


def test_an_event_about_a_member_and_their_tenant_is_queued_for_them_once(hub):
    alice = hub.subscribe(Viewer(ALICE, tenant_id=TENANT), None, 0)
    hub.dispatch([frame(7, user=ALICE, tenant=TENANT)])
    assert queued(alice) == [7]


def test_a_members_events_and_their_tenants_reach_them_in_sequence_order(hub):
    alice = hub.subscribe(Viewer(ALICE, tenant_id=TENANT), None, 0)
    hub.dispatch([frame(1, tenant=TENANT), frame(2, user=ALICE), frame(3, user=BOB), frame(4, tenant=TENANT),
                  frame(5, user=ALICE, tenant=TENANT)])
    assert queued(alice) == [1, 2, 4, 5]


def test_a_type_filter_keeps_only_the_types_named(hub):
    sub = hub.subscribe(Viewer(ALICE), frozenset({"user.login"}), 0)
    hub.dispatch([frame(1, type="user.login", user=ALICE), frame(2, type="user.updated", user=ALICE),
                  frame(3, type="user.login", user=ALICE)])
    assert queued(sub) == [1, 3]


def test_events_up_to_the_resume_point_or_already_queued_are_not_queued_again(hub):
    sub = hub.subscribe(Viewer(ALICE), None, 5)  # resumed after 5 (Last-Event-ID)
    hub.dispatch([frame(4, user=ALICE), frame(5, user=ALICE), frame(6, user=ALICE)])
    hub.dispatch([frame(6, user=ALICE), frame(7, user=ALICE)])  # a batch overlapping the last
    assert queued(sub) == [6, 7]


async def test_take_hands_over_everything_queued_and_empties_the_queue(hub):
    sub = hub.subscribe(Viewer(ALICE), None, 0)
    hub.dispatch([frame(1, user=ALICE), frame(2, user=ALICE)])
    assert [f.seq for f in await sub.take()] == [1, 2]
    assert queued(sub) == []


async def test_a_waiting_subscriber_is_woken_by_its_next_frame_and_not_by_others(hub):
    sub = hub.subscribe(Viewer(ALICE), None, 0)
    taking = asyncio.create_task(sub.take())
    await until_waiting(taking)
    hub.dispatch([frame(1, user=BOB)])
    await until_waiting(taking)  # someone else's event leaves it waiting
    hub.dispatch([frame(2, user=ALICE)])
    assert [f.seq for f in await asyncio.wait_for(taking, WAKE_TIMEOUT)] == [2]


async def test_a_full_queue_cuts_its_subscriber_off_while_the_others_keep_receiving(hub):
    slow = hub.subscribe(Viewer(ALICE, role="admin"), None, 0)
    fast = hub.subscribe(Viewer(BOB, role="admin"), None, 0)
    cut_before, gauge_before = cut_off_count(), subscribers_gauge()
    full = list(range(1, QUEUE_LIMIT + 1))
    hub.dispatch([frame(seq, user=CAROL) for seq in full])
    assert [f.seq for f in await fast.take()] == full
    assert not slow.overflowed  # a queue exactly full is still served

    hub.dispatch([frame(QUEUE_LIMIT + 1, user=CAROL)])
    assert slow.overflowed and not fast.overflowed
    # What was queued before the queue filled is still written, then the client is told to resume.
    assert queued(slow) == full
    assert [f.seq for f in await fast.take()] == [QUEUE_LIMIT + 1]
    assert hub.subscriber_count == 1
    assert cut_off_count() == cut_before + 1
    assert subscribers_gauge() == gauge_before - 1

    hub.dispatch([frame(QUEUE_LIMIT + 2, user=CAROL)])
    assert queued(slow) == full
    assert [f.seq for f in await fast.take()] == [QUEUE_LIMIT + 2]
    assert cut_off_count() == cut_before + 1  # cut off once, not once per frame it missed


async def test_a_read_that_overfills_a_queue_queues_what_fits_and_cuts_off_once(hub):
    slow = hub.subscribe(Viewer(ALICE, role="admin"), None, 0)
    fast = hub.subscribe(Viewer(BOB, role="admin"), None, 0)
    cut_before = cut_off_count()
    hub.dispatch([frame(seq, user=CAROL) for seq in range(1, QUEUE_LIMIT - 1)])
    assert [f.seq for f in await fast.take()] == list(range(1, QUEUE_LIMIT - 1))
    # The next read holds more than the slow subscriber has room for: the frames that fit are
    # queued (written before the notice to resume), the rest not, and it is cut off once.
    hub.dispatch([frame(seq, user=CAROL) for seq in range(QUEUE_LIMIT - 1, QUEUE_LIMIT + 3)])
    assert queued(slow) == list(range(1, QUEUE_LIMIT + 1)) and slow.overflowed
    assert cut_off_count() == cut_before + 1 and hub.subscriber_count == 1
    assert [f.seq for f in await fast.take()] == list(range(QUEUE_LIMIT - 1, QUEUE_LIMIT + 3))


async def test_a_subscriber_cut_off_while_waiting_is_woken_to_end_its_stream(hub):
    sub = hub.subscribe(Viewer(ALICE), None, 0)
    taking = asyncio.create_task(sub.take())
    await until_waiting(taking)
    sub.cut_off()
    assert await asyncio.wait_for(taking, WAKE_TIMEOUT) == []
    assert sub.overflowed


async def test_a_heartbeat_wakes_a_waiting_subscriber_with_no_frames(hub):
    sub = hub.subscribe(Viewer(ALICE), None, 0)
    taking = asyncio.create_task(sub.take())
    await until_waiting(taking)
    sub.heartbeat()
    assert await asyncio.wait_for(taking, WAKE_TIMEOUT) == []
    assert sub.beat and not sub.closed


async def test_the_heartbeat_loop_reaches_every_subscriber_until_stopped():
    hub = Hub("postgresql://unused/never-connected", queue_limit=QUEUE_LIMIT, poll_seconds=HOUR,
              heartbeat_seconds=0.01)
    subs = [hub.subscribe(Viewer(user), None, 0) for user in (ALICE, BOB)]
    stop = asyncio.Event()
    beating = asyncio.create_task(hub.beat(stop))
    try:
        for sub in subs:
            assert await asyncio.wait_for(sub.take(), WAKE_TIMEOUT) == []
            assert sub.beat
    finally:
        stop.set()
        await asyncio.wait_for(beating, WAKE_TIMEOUT)
        for sub in subs:
            hub.unsubscribe(sub)


async def test_shutdown_ends_every_stream_and_the_hub_refuses_to_carry_on(hub):
    subs = [hub.subscribe(Viewer(user), None, 0) for user in (ALICE, BOB)]
    takes = [asyncio.create_task(sub.take()) for sub in subs]
    for task in takes:
        await until_waiting(task)
    hub.close_all()
    assert await asyncio.wait_for(asyncio.gather(*takes), WAKE_TIMEOUT) == [[], []]
    assert all(sub.closed for sub in subs) and hub.closed


def test_an_unsubscribed_stream_gets_nothing_and_a_second_unsubscribe_changes_nothing(hub):
    gauge = subscribers_gauge()
    sub = hub.subscribe(Viewer(ALICE, tenant_id=TENANT), None, 0)
    assert subscribers_gauge() == gauge + 1
    hub.unsubscribe(sub)
    hub.unsubscribe(sub)
    hub.dispatch([frame(1, user=ALICE), frame(2, tenant=TENANT)])
    assert queued(sub) == []
    assert hub.subscriber_count == 0 and subscribers_gauge() == gauge


def test_ending_one_of_a_users_two_streams_leaves_the_other_receiving(hub):
    first = hub.subscribe(Viewer(ALICE, tenant_id=TENANT), None, 0)
    second = hub.subscribe(Viewer(ALICE, tenant_id=TENANT), None, 0)
    hub.unsubscribe(first)
    hub.dispatch([frame(1, user=ALICE), frame(2, tenant=TENANT)])
    assert queued(first) == [] and queued(second) == [1, 2]


def test_the_delivery_latency_histogram_exports_cumulative_buckets_count_and_sum():
    registry = CollectorRegistry()
    latency = LatencyHistogram("test_latency_seconds", "Test.", buckets=(0.01, 0.1), registry=registry)
    for seconds in (0.005, 0.01, 0.05, 2.0):  # a bucket holds what is at most its bound
        latency.observe(seconds)
    assert registry.get_sample_value("test_latency_seconds_bucket", {"le": "0.01"}) == 2
    assert registry.get_sample_value("test_latency_seconds_bucket", {"le": "0.1"}) == 3
    assert registry.get_sample_value("test_latency_seconds_bucket", {"le": "+Inf"}) == 4
    assert registry.get_sample_value("test_latency_seconds_count") == 4
    assert registry.get_sample_value("test_latency_seconds_sum") == pytest.approx(2.065)
    assert b"# TYPE test_latency_seconds histogram" in generate_latest(registry)
