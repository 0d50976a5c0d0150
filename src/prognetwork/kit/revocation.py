"""Signed-out sessions, as every verifier sees them.

An access token cannot be recalled once issued, but it names its session (`sid`). Ending a
session — logout, refresh-token reuse, a password reset, a disabled account — writes
`auth:revoked:<sid>` to Redis for one access-token lifetime (plus the verifiers' clock leeway):
after that every token of the session has expired anyway, so the set stays small. Every
verifier (the gateway and each service) checks the set right after the signature, so a
signed-out token stops working everywhere at once.

How a verifier checks: by default, one EXISTS per request. A verifier that runs `follow`
(every service does: the gateway, where that round trip was a fixed share of every request,
and the services, so that a slow or hung Redis never sits on their request path) keeps a copy
of the set in memory instead: `revoke` also PUBLISHes the session ids on `CHANNEL`, the follower
subscribes, then loads every `auth:revoked:*` key (after subscribing, so nothing revoked in
between is missed: it is either in the scan or in a message), and from then on answers from
memory. Redis sends the message to every subscriber before it answers the PUBLISH, so by the
time `revoke` returns to the user service the message is on its way to every follower; what
remains is the time a follower's event loop takes to read it (well under a millisecond
unless the process is overloaded).

Whenever the subscription is not up (starting, Redis lost, resubscribing) the copy is not
used and every check is a round trip again. redis-py reconnects a subscription by itself and
resubscribes, and whatever was published in between would be lost to the copy: so any
(re)connection of the subscription sets the copy aside at once, and the follower starts over
(subscribe, then load). A connection that breaks is noticed as soon as its end is read; one
that hangs silently, by the follower's heartbeat: after HEARTBEAT_SECONDS without a message it
publishes one on HEARTBEAT_CHANNEL, and if nothing comes back through the subscription within
HEARTBEAT_TIMEOUT_SECONDS, the copy is set aside — the longest a copy can lag.

When Redis cannot be reached the check follows the gateway's rate-limit policy: safe methods
(GET, HEAD, OPTIONS) are served — a signed-out token may read for the length of the outage —
and everything else is refused with 503 (fail closed). Either way it is counted, and Redis is
not asked again for `BREAKER_SECONDS`, so an outage costs one timeout, not one per request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from prognetwork.kit import retry, tokens
from prognetwork.kit.auth import invalid_token
from prognetwork.kit.problems import REVOCATION_CHECK_UNAVAILABLE

log = structlog.get_logger("prognetwork.revocation")
KEY_PREFIX = "auth:revoked:"
CHANNEL = "auth:revoked"  # every revocation is also published here, for the followers
# Each follower publishes here every HEARTBEAT_SECONDS and must hear a heartbeat (its own or
# another's) on its subscription within HEARTBEAT_TIMEOUT_SECONDS: a subscription whose
# connection hangs silently (a partition, a stopped Redis) would otherwise keep a copy trusted
# that no longer learns of new revocations. A channel of its own, so a follower of an older
# version, subscribed to CHANNEL only, never sees these.
HEARTBEAT_CHANNEL = "auth:revoked:heartbeat"
HEARTBEAT_SECONDS = 5.0
HEARTBEAT_TIMEOUT_SECONDS = 3.0
PRUNE_EVERY_SECONDS = 30.0  # expired ids leave a follower's copy at least this often
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BREAKER_SECONDS = 1.0
REVOKED_SEEN = Counter("auth_revoked_tokens", "Requests refused because their session was signed out.")
UNCHECKED = Counter(
    "auth_revocation_unavailable", "Requests decided without the revocation set (Redis down).", ("decision",)
)
for _decision in ("allowed", "refused"):
    UNCHECKED.labels(_decision)


class Revocations:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._skip_until = 0.0
        # sid → when its key expires (time.monotonic()); None unless `follow` is subscribed.
        self._copy: dict[str, float] | None = None

    @property
    def following(self) -> bool:
        """Whether checks are answered from the followed copy (no round trip)."""
        return self._copy is not None

    async def revoke(self, session_ids: Iterable[str], access_token_ttl_seconds: int) -> None:
        """Make every access token of these sessions invalid from now on (raises if Redis is down)."""
        ttl = access_token_ttl_seconds + tokens.LEEWAY_SECONDS
        sids = list(session_ids)
        if not sids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.set(KEY_PREFIX + sid, "1", ex=ttl)
            # After the keys, in the same pipeline: a follower that sees the message can also
            # see the keys, and one that subscribes later finds them in its scan.
            pipe.publish(CHANNEL, json.dumps({"ttl": ttl, "sids": sids}))
            await pipe.execute()
        copy = self._copy
        if copy is not None:
            # This process's own copy knows at once; the others when their follower reads it.
            expires = time.monotonic() + ttl
            for sid in sids:
                copy[sid] = expires

    async def is_revoked(self, sid: str) -> bool | None:
        """Whether the session was signed out; None when Redis cannot say (see the module's policy)."""
        copy = self._copy
        if copy is not None:
            expires = copy.get(sid)
            return expires is not None and expires > time.monotonic()
        if time.monotonic() < self._skip_until:
            return None
        try:
            return bool(await self.redis.exists(KEY_PREFIX + sid))
        except (RedisError, OSError) as exc:
            self._skip_until = time.monotonic() + BREAKER_SECONDS
            log.warning("revocation set unavailable", error=type(exc).__name__)
            return None

    async def ensure_active(self, claims: dict[str, Any], method: str) -> None:
        """Raise a 401 problem if the token's session was signed out (503 when that cannot be known)."""
        sid = claims.get("sid")
        if not isinstance(sid, str) or not sid:
            raise invalid_token("it names no session")
        revoked = await self.is_revoked(sid)
        if revoked:
            REVOKED_SEEN.inc()
            raise invalid_token("its session has been signed out")
        if revoked is False:
            return
        if method in SAFE_METHODS:
            UNCHECKED.labels("allowed").inc()
            return
        UNCHECKED.labels("refused").inc()
        raise REVOCATION_CHECK_UNAVAILABLE(
            "Signed-out sessions cannot be checked right now, so changes are paused; retry shortly.",
            headers={"Retry-After": "1"},
        )

    async def follow(self, stop: asyncio.Event) -> None:
        """Keep the in-memory copy of the set (see the module) until `stop`; resubscribes, with
        backoff, whenever the subscription is lost."""
        await retry.run_forever(
            retry.Backoff("revocations.follow", base=0.2, cap=5.0), lambda: self._follow(stop), stop, idle=0
        )

    async def _follow(self, stop: asyncio.Event) -> bool:
        pubsub = _Subscription(self.redis, self._set_aside)
        try:
            await pubsub.subscribe(CHANNEL, HEARTBEAT_CHANNEL)
            connects = pubsub.connects
            copy = await self._load()
            # Messages that came during the scan wait in the connection: apply them before the
            # copy is trusted.
            while (message := await pubsub.get_message(timeout=0)) is not None:
                if message["channel"] == CHANNEL:
                    _apply(copy, message)
            if pubsub.connects != connects:
                raise SubscriptionLost("the subscription was remade while the copy was loaded")
            self._copy = copy
            log.info("following revocations", revoked=len(copy))
            pruned = heard = time.monotonic()
            beat: float | None = None  # when our unanswered heartbeat went out
            while not stop.is_set():
                message = await pubsub.get_message(timeout=1.0)
                if pubsub.connects != connects:
                    raise SubscriptionLost("the subscription was remade: messages may have been missed")
                now = time.monotonic()
                if message is not None:
                    heard = now
                    if message["channel"] == CHANNEL:
                        _apply(copy, message)
                if beat is not None and heard >= beat:
                    beat = None
                elif beat is not None and now - beat > HEARTBEAT_TIMEOUT_SECONDS:
                    raise SubscriptionLost("no heartbeat came back on the subscription: it may be hung")
                if beat is None and now - heard >= HEARTBEAT_SECONDS:
                    beat = now
                    await self.redis.publish(HEARTBEAT_CHANNEL, "1")
                if now - pruned >= PRUNE_EVERY_SECONDS:
                    for sid in [sid for sid, expires in copy.items() if expires <= now]:
                        del copy[sid]
                    pruned = now
            return False
        finally:
            self._copy = None  # back to a round trip per check until subscribed again
            await pubsub.aclose()

    def _set_aside(self) -> None:
        self._copy = None

    async def _load(self) -> dict[str, float]:
        """Every revoked session id now in Redis, with when its key expires."""
        keys = [key async for key in self.redis.scan_iter(match=KEY_PREFIX + "*", count=1000)]
        copy: dict[str, float] = {}
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in batch:
                    pipe.pttl(key)
                ttls = await pipe.execute()
            now = time.monotonic()
            for key, ttl_ms in zip(batch, ttls, strict=True):
                name = key.decode() if isinstance(key, bytes) else key
                if ttl_ms is None or ttl_ms == -2:
                    continue  # expired since the scan
                # -1 (no expiry) never happens for keys `revoke` wrote; treat it as a full lifetime.
                ttl = ttl_ms / 1000 if ttl_ms >= 0 else 24 * 3600.0
                copy[name[len(KEY_PREFIX) :]] = now + ttl
        return copy


class SubscriptionLost(ConnectionError):
    """The subscription's connection was remade: the copy may lack what was published meanwhile."""


class _Subscription(PubSub):
    """A subscription that counts its connections and, on each, first calls `on_connect`
    (before redis-py resubscribes): the copy must not be trusted across a reconnection."""

    def __init__(self, redis: Redis, on_connect: Callable[[], None]) -> None:
        super().__init__(redis.connection_pool, ignore_subscribe_messages=True)
        self.connects = 0
        self._on_connect = on_connect

    async def on_connect(self, connection: Connection) -> None:
        self.connects += 1
        self._on_connect()
        await super().on_connect(connection)


class UnreadableMessage(ValueError):
    """A message on CHANNEL that is not a revocation: the copy may now lack one, so it is rebuilt."""


def _apply(copy: dict[str, float], message: dict[str, Any]) -> None:
    try:
        revoked = json.loads(message["data"])
        expires = time.monotonic() + float(revoked["ttl"])
        sids = [str(sid) for sid in revoked["sids"]]
    except (TypeError, ValueError, KeyError) as exc:
        raise UnreadableMessage(f"unreadable message on {CHANNEL}: {type(exc).__name__}") from None
    for sid in sids:
        copy[sid] = expires
