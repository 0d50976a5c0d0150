"""The Redis circuit breaker (kit.cache): consecutive failures open it, commands then fail at once,
and after the cool-down one trial decides."""

from __future__ import annotations

import pytest

from prognetwork.kit.cache import Breaker, RedisUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_failures_open_it_and_a_success_closes_it():
    clock = Clock()
    breaker = Breaker("test.consecutive", threshold=3, cooldown=1.0, clock=clock)
    for _ in range(2):
        breaker.admit()
        breaker.failed()
    breaker.admit()  # two failures: still closed
    breaker.succeeded()
    breaker.failed()
    breaker.failed()
    breaker.admit()  # a success in between: the count starts again
    breaker.failed()
    assert breaker.is_open
    with pytest.raises(RedisUnavailable):
        breaker.admit()


def test_after_the_cooldown_one_trial_goes_through_and_decides():
    clock = Clock()
    breaker = Breaker("test.trial", threshold=1, cooldown=1.0, clock=clock)
    breaker.failed()
    with pytest.raises(RedisUnavailable):
        breaker.admit()
    clock.now += 1.0
    breaker.admit()  # the trial
    with pytest.raises(RedisUnavailable):
        breaker.admit()  # the rest wait for its answer
    breaker.failed()  # the trial failed: open for another cool-down
    clock.now += 0.5
    with pytest.raises(RedisUnavailable):
        breaker.admit()
    clock.now += 0.5
    breaker.admit()
    breaker.succeeded()
    assert not breaker.is_open
    breaker.admit()
    breaker.admit()


def test_unavailable_is_a_redis_connection_error_so_every_caller_handles_it_already():
    from redis.exceptions import ConnectionError as RedisConnectionError

    assert issubclass(RedisUnavailable, RedisConnectionError)
