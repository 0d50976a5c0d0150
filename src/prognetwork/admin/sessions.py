"""Sign-in sessions, kept server-side in Redis: the browser holds only a random id.

The cookie `prog_admin` carries 32 random bytes; Redis keys the session by their SHA-256, so a
copy of Redis names no cookie that would open a session. A session holds the operator's token
pair (never sent to the browser), who they are and their CSRF token; its one-shot notices (shown
on the next page) sit beside it, in a list of their own, so adding one never rewrites the session
with a copy that another request's refresh has made stale. It ends
after `idle` seconds without a request (the key's TTL, renewed on each request), after `lifetime`
seconds whatever happens, on logout, and when its tokens stop working.

Refreshing the token pair is serialised per session (a Redis lock): a refresh token works once,
and a second use of it would end the session everywhere (the user service's reuse detection),
so two requests of the same browser must never both refresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field

from prognetwork.kit.cache import TextRedis

COOKIE = "prog_admin"
KEY_PREFIX = "admin:session:"
NOTICES_SUFFIX = ":notices"
LOCK_PREFIX = "admin:refresh-lock:"
LOCK_SECONDS = 15
LOCK_POLL_SECONDS = 0.05
MAX_NOTICES = 5


@dataclass
class Session:
    user_id: str
    email: str
    role: str  # the platform role of the access token: admin or operator
    access_token: str
    refresh_token: str
    access_expires_at: float  # epoch seconds
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created_at: float = field(default_factory=time.time)
    key: str = field(default="", compare=False)  # the Redis key (not stored)

    @property
    def may_act(self) -> bool:
        return self.role == "admin"

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("key")
        return json.dumps(data)


def _key(session_id: str) -> str:
    return KEY_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    def __init__(self, redis: TextRedis, idle_seconds: int, lifetime_seconds: int) -> None:
        self.redis = redis
        self.idle_seconds = idle_seconds
        self.lifetime_seconds = lifetime_seconds

    async def create(self, session: Session) -> str:
        """Store a new session; the id for the cookie."""
        session_id = secrets.token_urlsafe(32)
        session.key = _key(session_id)
        await self.redis.set(session.key, session.to_json(), ex=self.idle_seconds)
        return session_id

    async def load(self, session_id: str | None) -> Session | None:
        """The session of this cookie value, its idle time renewed; None if it ended."""
        if not session_id or len(session_id) > 128:
            return None
        key = _key(session_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.expire(key, self.idle_seconds)
            raw, _ = await pipe.execute()
        session = self._parse(key, raw)
        if session is not None and time.time() - session.created_at > self.lifetime_seconds:
            await self.redis.delete(key)
            return None
        return session

    async def reload(self, session: Session) -> Session | None:
        return self._parse(session.key, await self.redis.get(session.key))

    async def save(self, session: Session) -> None:
        """Write the session back, keeping its remaining idle time (nothing if it ended meanwhile).
        Only a refresh does, holding the refresh lock, with the copy it has just reloaded."""
        await self.redis.set(session.key, session.to_json(), xx=True, keepttl=True)

    async def delete(self, session: Session) -> None:
        await self.redis.delete(session.key, session.key + NOTICES_SUFFIX)

    async def notify(self, session: Session, notice: str) -> None:
        """A message for the next page this session sees (after a redirect)."""
        key = session.key + NOTICES_SUFFIX
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, notice)
            pipe.ltrim(key, -MAX_NOTICES, -1)
            pipe.expire(key, self.idle_seconds)
            await pipe.execute()

    async def take_notices(self, session: Session) -> list[str]:
        key = session.key + NOTICES_SUFFIX
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(key, 0, -1)
            pipe.delete(key)
            notices, _ = await pipe.execute()
        return [str(n) for n in notices]

    @asynccontextmanager
    async def refresh_lock(self, session: Session, wait_seconds: float) -> AsyncIterator[bool]:
        """Hold the session's refresh lock; yields False if another request held it throughout
        `wait_seconds` (it is refreshing: reload the session to see its result)."""
        lock = LOCK_PREFIX + session.key
        owner = secrets.token_hex(8)
        deadline = time.monotonic() + wait_seconds
        acquired = False
        while not (acquired := bool(await self.redis.set(lock, owner, nx=True, ex=LOCK_SECONDS))):
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(LOCK_POLL_SECONDS)  # the holder's refresh takes one round trip
        try:
            yield acquired
        finally:
            if acquired and await self.redis.get(lock) == owner:
                await self.redis.delete(lock)

    @staticmethod
    def _parse(key: str, raw: str | None) -> Session | None:
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return Session(**data, key=key)
        except (TypeError, ValueError):
            return None  # written by an incompatible version: treated as signed out
