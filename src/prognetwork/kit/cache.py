"""Redis access: one async client (with its own pool) per process, that fails fast when Redis hangs.

A Redis that stops answering (a stopped process whose connections stay open, a network
partition) must cost a request a bounded, small delay, not redis-py's defaults (no read timeout
here, and three retries with backoff in redis-py 6+: seconds per command). So:

- Every read waits at most REDIS_TIMEOUT_SECONDS (connects REDIS_CONNECT_TIMEOUT_SECONDS). A
  command that timed out is not retried: it may have run. A broken connection is retried once
  on a fresh one (a pooled connection Redis closed while idle, or one from before a restart).
- A circuit breaker per client: BREAKER_THRESHOLD consecutive failures (timeouts, refused or
  lost connections) open it, and for BREAKER_COOLDOWN_SECONDS every command fails at once with
  `RedisUnavailable` (a redis `ConnectionError`, so every caller's existing handling applies).
  Then one command is let through as a trial: success closes the breaker, failure opens it
  again. Pipelines, scripts and pub/sub go through the same connections, so the same breaker.
- `redis_breaker_open{service}` says whether it is open; /health reports Redis through it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge
from redis.asyncio import Connection, ConnectionPool, Redis, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from redis.typing import KeyT

# Redis answers a healthy command in well under a millisecond; a fifth of a second is a stall.
# Two of them in a row (the gateway's, then a service's) stay within half a second.
REDIS_TIMEOUT_SECONDS = 0.2
REDIS_CONNECT_TIMEOUT_SECONDS = 0.5
BREAKER_THRESHOLD = 5
BREAKER_COOLDOWN_SECONDS = 1.0

BREAKER_OPEN = Gauge(
    "redis_breaker_open", "1 while the Redis circuit breaker fails commands at once.", ("client",)
)
BREAKER_OPENINGS = Counter("redis_breaker_openings", "Times the Redis circuit breaker opened.", ("client",))


class RedisUnavailable(RedisConnectionError):
    """Raised without touching the network while the breaker is open."""


class Breaker:
    """Consecutive failures open it; after a cool-down one trial command decides."""

    def __init__(
        self,
        name: str,
        threshold: int = BREAKER_THRESHOLD,
        cooldown: float = BREAKER_COOLDOWN_SECONDS,
        clock: Any = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.open_until = 0.0  # while failures >= threshold: commands fail at once until then
        BREAKER_OPEN.labels(name).set(0)

    @property
    def is_open(self) -> bool:
        return self.failures >= self.threshold

    def admit(self) -> None:
        """Raise RedisUnavailable while open; after the cool-down, admit one trial."""
        if self.failures < self.threshold:
            return
        now = self.clock()
        if now < self.open_until:
            raise RedisUnavailable(f"Redis failed {self.failures} times in a row; not trying for a moment")
        # The trial: the commands behind it fail fast until it has answered.
        self.open_until = now + self.cooldown

    def failed(self) -> None:
        self.failures += 1
        if self.failures == self.threshold:
            BREAKER_OPENINGS.labels(self.name).inc()
            BREAKER_OPEN.labels(self.name).set(1)
        if self.failures >= self.threshold:
            self.open_until = self.clock() + self.cooldown

    def succeeded(self) -> None:
        if self.failures:
            self.failures = 0
            BREAKER_OPEN.labels(self.name).set(0)


class Guarded(AbstractConnection):
    """Mixed into a redis-py connection class: asks the client's breaker before it writes and
    tells it how reads went."""

    breaker: Breaker

    def __init__(self, *, breaker: Breaker, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.breaker = breaker
        # Set from the breaker's admission until the reply arrives: redis-py retries a command
        # whose connection broke on the same connection object, and that retry (on a fresh
        # connection) belongs to the admission — above all a trial's, or the breaker could
        # never learn that Redis is back while its pool still held connections from before.
        self.admitted = False

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        # Every connect goes through here: the pool's before a command, and a retry's.
        self._admit()
        try:
            await super().connect_check_health(check_health, retry_socket_connect)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._count(exc)
            raise
        except BaseException:
            self.admitted = False
            raise

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._admit()
        try:
            await super().send_packed_command(command, check_health)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            # A connection that breaks in use says little (Redis closed it while idle, or
            # restarted since): the retry on a fresh connection decides. A timeout says Redis
            # is not answering.
            if isinstance(exc, RedisTimeoutError | TimeoutError):
                self._count(exc)
            raise
        except BaseException:
            self.admitted = False
            raise

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        try:
            response = await super().read_response(
                disable_decoding, timeout, disconnect_on_error=disconnect_on_error, push_request=push_request
            )
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            # A read with a timeout of its own (pub/sub polling) may end quietly; only reads
            # bounded by the socket timeout say Redis is stalled.
            if timeout is None and isinstance(exc, RedisTimeoutError | TimeoutError):
                self._count(exc)
            raise
        except BaseException:
            self.admitted = False
            raise
        if response is None and timeout is not None:
            return response  # a poll that ended with nothing to read: no news of Redis either way
        self.admitted = False
        self.breaker.succeeded()
        return response

    def _admit(self) -> None:
        if not self.admitted:
            self.breaker.admit()
            self.admitted = True

    def _count(self, exc: BaseException) -> None:
        """One failure for the breaker, once per exception however many layers it crosses (a
        read inside a send inside a connect's health check)."""
        self.admitted = False
        if not getattr(exc, "counted_by_breaker", False):
            exc.counted_by_breaker = True  # type: ignore[attr-defined]
            self.breaker.failed()


class GuardedConnection(Guarded, Connection):
    pass


class GuardedSSLConnection(Guarded, SSLConnection):
    pass


class GuardedUnixDomainSocketConnection(Guarded, UnixDomainSocketConnection):
    pass


# What the pool builds instead of each of redis-py's classes (values are concrete classes).
GUARDED: dict[type, Any] = {
    Connection: GuardedConnection,
    SSLConnection: GuardedSSLConnection,
    UnixDomainSocketConnection: GuardedUnixDomainSocketConnection,
}


class TextRedis(Redis):
    """A client that decodes every reply to `str` (decode_responses=True): `create_redis` builds it.

    redis-py annotates replies as `bytes | str` whatever the client decodes; the commands whose
    replies the services read as text are declared here with the type they really have.
    """

    breaker: Breaker

    if TYPE_CHECKING:

        def get(self, name: KeyT) -> Awaitable[str | None]: ...

        # redis-py types SMEMBERS as set[bytes | str] whatever decode_responses says, and set is
        # invariant, so narrowing its members to str counts as an incompatible override.
        def smembers(self, name: KeyT) -> Awaitable[set[str]]: ...  # type: ignore[override]


def create_redis(url: str, name: str = "redis", auth: dict[str, Any] | None = None) -> TextRedis:
    """A client for `url`; `name` labels its breaker's metrics (the service's name); `auth`, the
    connection options that authenticate each new connection (kit.credentials.redis_auth)."""
    breaker = Breaker(name)
    pool = ConnectionPool.from_url(
        url,
        **(auth or {}),
        decode_responses=True,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        health_check_interval=15,
        # Once, and only for a broken connection: a command that timed out may have run.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        breaker=breaker,
    )
    # redis://, rediss:// and unix:// each have their connection class; the pool builds ours.
    pool.connection_class = GUARDED[pool.connection_class]
    client = TextRedis.from_pool(pool)  # the client owns the pool: aclose() closes both
    assert isinstance(client, TextRedis)  # from_pool builds `cls`; redis-py annotates the base
    client.breaker = breaker
    return client
