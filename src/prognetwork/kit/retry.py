"""Retrying the long-running loops inside a process: backoff with full jitter, waits that end early.

A `Backoff` paces the retries of one loop; `run_forever` is the loop most of them are.

Invariants:

- The n-th consecutive failure waits a delay drawn uniformly from [0, min(cap, base * 2**(n-1))]
  ("full jitter"): never more than `cap`, and replicas that failed together retry spread apart.
- A success (`Backoff.reset`) makes the next failure start again from `base`.
- Every wait ends as soon as `stop` is set, so a backoff never holds up a shutdown, and as soon as
  its `wake` event is set: the caller's sign that trying again may now succeed (PostgreSQL
  reachable again, new work committed). A wake that ends a wait is consumed (cleared): each
  wake-up buys one early attempt, so retries never come faster than the wake-ups do. A wake-up
  that is a sign of recovery (`restart`: a listener reconnected) also starts the pace again from
  `base`: the first attempt after a dependency returns often fails once more (a pooled
  connection from before the outage), and its retry must not wait out a delay grown during the
  outage. A wake-up that only means "new work" does not, or a lasting failure would be retried
  at every new piece of work.
- Every failure is logged with the loop's name, the attempt number and the delay before the next
  attempt, and counted in `loop_retries_total{loop=...}`.

Neither `tenacity` nor `backoff` is used. `backoff` sleeps with `asyncio.sleep`, which only
cancelling the whole task interrupts. `tenacity` takes a custom sleep, but it retries one call
until that call succeeds and does not learn why a sleep ended: stopping, waking early and
idling between successes would all be code around it, not in it.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections import Counter as Tally
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import Counter

log = structlog.get_logger("prognetwork.retry")
RETRIES = Counter(
    "loop_retries", "Failures after which an in-process loop backed off and tried again.", ("loop",)
)
# 2**62 times any sensible base is far beyond any cap; a larger exponent would overflow a float.
_MAX_DOUBLINGS = 62


class Resumed(enum.Enum):
    """Why a wait ended."""

    ELAPSED = "elapsed"  # the whole delay passed
    STOPPED = "stopped"  # `stop` was set
    WOKEN = "woken"  # `wake` was set


async def pause(seconds: float, stop: asyncio.Event, wake: asyncio.Event | None = None) -> Resumed:
    """Wait `seconds`, or less if `stop` or `wake` is set first (or already); `stop` wins a tie.

    Leaves both events as they are: the caller decides whether a wake-up is consumed.
    """
    if not (stop.is_set() or (wake is not None and wake.is_set())) and seconds > 0:
        waiters = [asyncio.ensure_future(event.wait()) for event in (stop, wake) if event is not None]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
    if stop.is_set():
        return Resumed.STOPPED
    if wake is not None and wake.is_set():
        return Resumed.WOKEN
    return Resumed.ELAPSED


async def wait_for(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set or `timeout` passes; True if it was set."""
    return await pause(timeout, event) is Resumed.STOPPED


class Backoff:
    """The pace of one loop's retries: call `wait` after each failure, `reset` after a success."""

    def __init__(
        self,
        name: str,
        *,
        base: float = 0.2,
        cap: float = 30.0,
        traceback: bool = False,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """`name` labels logs and the metric; `traceback` logs each failure's traceback (for
        failures that may be bugs, not only outages); `jitter` draws the fraction of the
        ceiling to wait, from [0, 1)."""
        if not 0 < base <= cap:
            raise ValueError(f"need 0 < base <= cap, got base={base} cap={cap}")
        self.name = name
        self.base = base
        self.cap = cap
        self.traceback = traceback
        self._jitter = jitter
        self.attempt = 0  # consecutive failures so far
        self.delay = 0.0  # the delay drawn after the latest failure
        self.resumed: Tally[Resumed] = Tally()  # how the waits ended, for tests and debugging
        RETRIES.labels(name)  # exported (as 0) before the first failure, so a rate has a baseline

    def ceiling(self) -> float:
        """The longest the next failure may wait."""
        return min(self.cap, self.base * 2.0 ** min(self.attempt, _MAX_DOUBLINGS))

    def failed(self, error: BaseException) -> float:
        """Count and log a failure; returns the delay to wait before the next attempt."""
        ceiling = self.ceiling()
        self.attempt += 1
        self.delay = ceiling * self._jitter()
        RETRIES.labels(self.name).inc()
        log.warning(
            "loop failed; retrying",
            loop=self.name,
            attempt=self.attempt,
            retry_in=round(self.delay, 3),
            error_type=type(error).__name__,
            error=str(error)[:500],
            exc_info=error if self.traceback else None,
        )
        return self.delay

    async def wait(
        self,
        error: BaseException,
        stop: asyncio.Event,
        wake: asyncio.Event | None = None,
        *,
        restart: bool = False,
    ) -> Resumed:
        """After a failure: count it, log it and wait out the delay, or until `stop` or `wake`
        (with `restart`, a wake-up also starts the pace again from `base`)."""
        resumed = await pause(self.failed(error), stop, wake)
        if resumed is Resumed.WOKEN and wake is not None:
            wake.clear()
            if restart:
                self.attempt = 0
        self.resumed[resumed] += 1
        return resumed

    def reset(self) -> None:
        """After a success: the next failure waits at most `base` again."""
        if self.attempt:
            log.info("loop recovered", loop=self.name, failures=self.attempt)
        self.attempt = 0


async def run_forever(
    backoff: Backoff,
    step: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    *,
    idle: float,
    wake: asyncio.Event | None = None,
    recovered: asyncio.Event | None = None,
) -> None:
    """Call `step` until `stop` is set.

    A truthy result means more work is waiting: `step` runs again at once. Otherwise the loop
    idles `idle` seconds, or until `wake` is set. An exception backs off (`backoff`) until the
    delay passes or `recovered` is set (by default `wake`: when new work is a sign that the
    failure has passed, as a commit by the producer proves the database is back). Pass a
    separate `recovered` when `wake` fires regardless of the failure (a NOTIFY per event would
    not fix a failing handler, only make it fail faster). Cancellation propagates.
    """
    restart = recovered is not None and recovered is not wake  # a sign of recovery, not of work
    recovered = wake if recovered is None else recovered
    while not stop.is_set():
        try:
            more = await step()
        except Exception as exc:  # any failure of a step is retried: the loop outlives it
            await backoff.wait(exc, stop, recovered, restart=restart)
            continue
        backoff.reset()
        if not more and await pause(idle, stop, wake) is Resumed.WOKEN and wake is not None:
            wake.clear()
