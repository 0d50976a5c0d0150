"""The retry helper of every in-process loop: capped exponential backoff with full jitter,
waits that end at once on stop or wake-up, each failure logged and counted."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import REGISTRY

from prognetwork.kit.retry import Backoff, Resumed, pause, run_forever
from tests.helpers.polling import eventually_async

HOUR = 3600.0  # a delay no test outlives: a wait that ends did not run out
ERROR = ConnectionRefusedError("connection refused")


def half() -> float:
    """Jitter that always waits half the ceiling: delays to compare exactly."""
    return 0.5


def test_delays_double_from_base_up_to_the_cap():
    backoff = Backoff("test.doubling", base=1.0, cap=10.0, jitter=half)
    assert [backoff.failed(ERROR) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.attempt == 6


def test_full_jitter_spreads_delays_between_zero_and_the_ceiling():
    backoff = Backoff("test.jitter", base=1.0, cap=8.0)
    fractions = []
    for _ in range(2000):
        ceiling = backoff.ceiling()
        delay = backoff.failed(ERROR)
        assert 0.0 <= delay < ceiling <= 8.0
        fractions.append(delay / ceiling)
    # Full jitter, not "equal jitter": delays reach near zero as well as near the ceiling.
    assert min(fractions) < 0.05 and max(fractions) > 0.95


def test_the_cap_holds_after_any_number_of_failures():
    backoff = Backoff("test.endless", base=0.2, cap=30.0, jitter=half)
    delays = [backoff.failed(ERROR) for _ in range(1100)]  # 2**1100 would overflow a float
    assert delays[-1] == 15.0 and max(delays) == 15.0


def test_a_success_starts_the_next_failure_from_base_again():
    backoff = Backoff("test.reset", base=1.0, cap=10.0, jitter=half)
    for _ in range(4):
        backoff.failed(ERROR)
    backoff.reset()
    assert backoff.attempt == 0 and backoff.failed(ERROR) == 0.5


def test_base_must_be_positive_and_within_the_cap():
    with pytest.raises(ValueError):
        Backoff("test.invalid", base=0.0, cap=1.0)
    with pytest.raises(ValueError):
        Backoff("test.invalid", base=2.0, cap=1.0)


def test_each_failure_is_counted_and_logged_with_attempt_and_delay(caplog):
    backoff = Backoff("test.observed", base=1.0, cap=10.0, jitter=half)
    before = REGISTRY.get_sample_value("loop_retries_total", {"loop": "test.observed"})
    assert before == 0.0  # exported before the first failure
    with caplog.at_level(logging.WARNING, logger="prognetwork.retry"):
        backoff.failed(ERROR)
        backoff.failed(ERROR)
    assert REGISTRY.get_sample_value("loop_retries_total", {"loop": "test.observed"}) == 2.0
    logged = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("loop") == "test.observed"]
    assert [(e["attempt"], e["retry_in"]) for e in logged] == [(1, 0.5), (2, 1.0)]
    assert logged[0]["error_type"] == "ConnectionRefusedError" and "refused" in logged[0]["error"]


async def test_stop_ends_a_backoff_wait_at_once():
    backoff = Backoff("test.stop", base=HOUR, cap=HOUR, jitter=half)
    stop = asyncio.Event()
    waiting = asyncio.create_task(backoff.wait(ERROR, stop))
    await eventually_async(lambda: _true(backoff.attempt == 1), what="the wait to begin")
    stop.set()
    await eventually_async(lambda: _true(waiting.done()), what="the wait to end on stop")
    assert waiting.result() is Resumed.STOPPED and backoff.resumed == {Resumed.STOPPED: 1}


async def test_a_wake_up_ends_a_backoff_wait_at_once_and_is_consumed():
    backoff = Backoff("test.wake", base=HOUR, cap=HOUR, jitter=half)
    stop, wake = asyncio.Event(), asyncio.Event()
    waiting = asyncio.create_task(backoff.wait(ERROR, stop, wake))
    await eventually_async(lambda: _true(backoff.attempt == 1), what="the wait to begin")
    wake.set()
    await eventually_async(lambda: _true(waiting.done()), what="the wait to end on the wake-up")
    assert waiting.result() is Resumed.WOKEN
    assert not wake.is_set()  # one wake-up buys one early retry, not a busy loop


async def test_stop_wins_over_a_wake_up_set_at_the_same_time():
    stop, wake = asyncio.Event(), asyncio.Event()
    stop.set()
    wake.set()
    assert await pause(HOUR, stop, wake) is Resumed.STOPPED
    assert wake.is_set()  # `pause` leaves consuming a wake-up to its caller


async def test_a_failing_step_resumes_on_each_wake_up_without_waiting_out_its_backoff():
    """The outage case: each retry is an hour away, and each wake-up brings it forward."""
    backoff = Backoff("test.outage", base=HOUR, cap=HOUR, jitter=half)
    stop, wake = asyncio.Event(), asyncio.Event()
    calls = 0

    async def step() -> bool:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise ERROR
        stop.set()
        return False

    loop = asyncio.create_task(run_forever(backoff, step, stop, idle=HOUR, wake=wake))
    for failures in (1, 2, 3):
        await eventually_async(lambda n=failures: _true(backoff.attempt == n), what=f"failure {failures}")
        wake.set()
    await eventually_async(lambda: _true(loop.done()), what="the step after the last wake-up")
    loop.result()
    assert calls == 4
    assert backoff.resumed == {Resumed.WOKEN: 3} and backoff.attempt == 0


async def test_a_wake_up_starts_the_pace_again_from_base():
    """After an outage the first attempt often fails once more (a pooled connection from before
    it); that retry must come after `base`, not after the delay the outage had grown to."""
    backoff = Backoff("test.pace", base=0.2, cap=HOUR, jitter=half)
    for _ in range(20):
        backoff.failed(ERROR)
    assert backoff.ceiling() == HOUR
    stop, wake = asyncio.Event(), asyncio.Event()
    wake.set()
    assert await backoff.wait(ERROR, stop, wake, restart=True) is Resumed.WOKEN
    assert not wake.is_set() and backoff.failed(ERROR) == 0.1
    # A wake-up that only means new work keeps the pace a lasting failure has reached.
    for _ in range(20):
        backoff.failed(ERROR)
    wake.set()
    assert await backoff.wait(ERROR, stop, wake) is Resumed.WOKEN
    assert backoff.ceiling() == HOUR


async def test_only_the_recovered_event_ends_a_retry_when_one_is_given():
    """A consumer's NOTIFY wake-up would not fix a failing handler: only a reconnection may cut
    its retry short."""
    backoff = Backoff("test.recovered", base=HOUR, cap=HOUR, jitter=half)
    stop, wake, recovered = asyncio.Event(), asyncio.Event(), asyncio.Event()
    wake.set()  # already set: had it been waited on, the retry would have run before any check
    calls = 0

    async def step() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ERROR
        stop.set()
        return False

    loop = asyncio.create_task(run_forever(backoff, step, stop, idle=HOUR, wake=wake, recovered=recovered))
    await eventually_async(lambda: _true(backoff.attempt == 1), what="the first failure")
    assert calls == 1 and not backoff.resumed
    recovered.set()
    await eventually_async(lambda: _true(loop.done()), what="the retry on recovery")
    loop.result()
    assert calls == 2 and backoff.resumed == {Resumed.WOKEN: 1}
    assert not recovered.is_set() and wake.is_set()


async def test_an_idle_loop_runs_again_on_wake_and_a_busy_one_at_once():
    backoff = Backoff("test.idle", base=HOUR, cap=HOUR)
    stop, wake = asyncio.Event(), asyncio.Event()
    results = [True, True, False, False]  # two full batches, then idle; then stop
    calls = 0

    async def step() -> bool:
        nonlocal calls
        calls += 1
        if calls == len(results):
            stop.set()
        return results[calls - 1]

    loop = asyncio.create_task(run_forever(backoff, step, stop, idle=HOUR, wake=wake))
    await eventually_async(lambda: _true(calls == 3), what="the busy steps and the first idle one")
    assert not loop.done()
    wake.set()
    await eventually_async(lambda: _true(loop.done()), what="the step on the wake-up")
    loop.result()
    assert calls == 4 and not wake.is_set() and not backoff.resumed


async def test_stop_ends_a_loop_that_is_backing_off():
    backoff = Backoff("test.shutdown", base=HOUR, cap=HOUR, jitter=half)
    stop = asyncio.Event()
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        raise ERROR

    loop = asyncio.create_task(run_forever(backoff, step, stop, idle=HOUR))
    await eventually_async(lambda: _true(backoff.attempt == 1), what="the first failure")
    stop.set()
    await eventually_async(lambda: _true(loop.done()), what="the loop to stop")
    loop.result()
    assert calls == 1 and backoff.resumed == {Resumed.STOPPED: 1}


async def _true(condition: bool) -> bool:
    return condition
