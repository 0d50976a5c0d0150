"""Refresh sessions and one-time tokens, kept in Redis with TTLs.

Only SHA-256 digests of tokens are stored, so a Redis dump grants nothing. A login starts a
session *family*; each refresh spends its token and issues the next one in the family. A
spent token presented again means it was stolen (or replayed): the whole family is revoked.
Each user's live families are indexed, so a password reset or a disabled account can end them all.
A family may be switched into a tenant: it remembers which, so every refresh can carry the tenant
on (after checking the membership again), and removing a member can find the sessions inside it.

A one-time token is the only live one of its purpose for its user (or other owner, such as an
invitation): issuing a new link voids the previous one. Device tokens mark a browser or app that
has logged in before (they let the owner through an account-wide login lockout; see `Accounts.login`).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum

from prognetwork.kit.cache import TextRedis


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _refresh_key(h: str) -> str:
    return f"auth:refresh:{h}"


def _spent_key(h: str) -> str:
    return f"auth:spent:{h}"


def _family_key(family: str) -> str:
    return f"auth:family:{family}"


def _family_tenant_key(family: str) -> str:
    return f"auth:family-tenant:{family}"


def _tenant_holders_key(tenant_id: uuid.UUID, user_id: uuid.UUID) -> str:
    # The user's sessions given an access token for this tenant (scored by when): a session
    # switched on to another tenant still holds its earlier token until that token expires.
    return f"auth:tenant-holders:{tenant_id}:{user_id}"


def _epoch_key(user_id: uuid.UUID) -> str:
    return f"auth:user-epoch:{user_id}"


def _user_families_key(user_id: uuid.UUID) -> str:
    return f"auth:user-families:{user_id}"


def _one_time_key(purpose: str, h: str) -> str:
    return f"auth:{purpose}:{h}"


def _latest_one_time_key(purpose: str, owner: str) -> str:
    return f"auth:{purpose}:latest:{owner}"


def _device_key(h: str) -> str:
    return f"auth:device:{h}"


def _user_devices_key(user_id: uuid.UUID) -> str:
    return f"auth:user-devices:{user_id}"


# Take a one-time token: its value and remaining lifetime, deleted in the same step.
_CLAIM = """
local value = redis.call('GET', KEYS[1])
if not value then return {false, 0} end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
return {value, ttl}
"""

# Spend a refresh token atomically: exactly one caller gets 'ok' for a given token.
_SPEND = """
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], value, 'PX', ARGV[1])
  return {'ok', value}
end
local spent = redis.call('GET', KEYS[2])
if spent then return {'reused', spent} end
return {'unknown', ''}
"""


class Outcome(Enum):
    ROTATED = "rotated"
    REUSED = "reused"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class Rotated:
    """The token was spent; `refresh_token` is the family's next one."""

    user_id: uuid.UUID
    family: str
    refresh_token: str
    outcome: Outcome = Outcome.ROTATED


@dataclass(frozen=True, slots=True)
class Reused:
    """A spent token came back: the family has been ended."""

    user_id: uuid.UUID
    family: str
    outcome: Outcome = Outcome.REUSED


@dataclass(frozen=True, slots=True)
class Invalid:
    """Unknown, expired, or of a family that was ended."""

    outcome: Outcome = Outcome.INVALID


Rotation = Rotated | Reused | Invalid


class SessionStore:
    def __init__(self, redis: TextRedis, refresh_ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl_ms = refresh_ttl_seconds * 1000
        self._spend = redis.register_script(_SPEND)
        self._claim = redis.register_script(_CLAIM)

    async def start(self, user_id: uuid.UUID) -> tuple[str, str]:
        """A new session family and its first refresh token."""
        family = uuid.uuid4().hex
        token = new_token()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(_family_key(family), str(user_id), px=self.ttl_ms)
            pipe.set(_refresh_key(digest(token)), f"{family}:{user_id}", px=self.ttl_ms)
            pipe.sadd(_user_families_key(user_id), family)
            pipe.pexpire(_user_families_key(user_id), self.ttl_ms)
            await pipe.execute()
        return family, token

    async def rotate(self, token: str) -> Rotation:
        h = digest(token)
        status, value = await self._spend(keys=[_refresh_key(h), _spent_key(h)], args=[self.ttl_ms])
        if status == "unknown":
            return Invalid()
        family, user = value.split(":", 1)
        user_id = uuid.UUID(user)
        if status == "reused":
            await self.redis.delete(_family_key(family))
            return Reused(user_id, family)
        if not await self.redis.exists(_family_key(family)):
            return Invalid()
        fresh = new_token()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(_refresh_key(digest(fresh)), f"{family}:{user_id}", px=self.ttl_ms)
            pipe.pexpire(_family_key(family), self.ttl_ms)
            pipe.pexpire(_family_tenant_key(family), self.ttl_ms)  # no-op when not switched into one
            # The index lives as long as its longest-lived family, or revoke_all would miss this one.
            pipe.pexpire(_user_families_key(user_id), self.ttl_ms)
            await pipe.execute()
        return Rotated(user_id, family, fresh)

    async def session_of(self, token: str) -> tuple[str, uuid.UUID] | None:
        """The (family, user) a refresh token belongs to, spent or not; None if unknown."""
        h = digest(token)
        value = await self.redis.get(_refresh_key(h)) or await self.redis.get(_spent_key(h))
        if not value:
            return None
        family, user = value.split(":", 1)
        return family, uuid.UUID(user)

    async def is_live(self, token: str) -> bool:
        """Whether a refresh token can still be spent (not spent, expired or of an ended family)."""
        value = await self.redis.get(_refresh_key(digest(token)))
        if not value:
            return False
        return bool(await self.redis.exists(_family_key(value.split(":", 1)[0])))

    async def end(self, family: str, user_id: uuid.UUID, token: str) -> None:
        """End a session: its refresh tokens stop rotating."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(_family_key(family), _family_tenant_key(family), _refresh_key(digest(token)))
            pipe.srem(_user_families_key(user_id), family)
            await pipe.execute()

    async def end_families(self, user_id: uuid.UUID, families: list[str]) -> None:
        """End these sessions of a user: their refresh tokens stop rotating."""
        if not families:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*(_family_key(f) for f in families), *(_family_tenant_key(f) for f in families))
            pipe.srem(_user_families_key(user_id), *families)
            await pipe.execute()

    async def set_tenant(self, family: str, tenant_id: uuid.UUID | None) -> None:
        """Remember the tenant a session is switched into (None: no tenant)."""
        if tenant_id is None:
            await self.redis.delete(_family_tenant_key(family))
        else:
            await self.redis.set(_family_tenant_key(family), str(tenant_id), px=self.ttl_ms)

    async def tenant_of(self, family: str) -> uuid.UUID | None:
        value = await self.redis.get(_family_tenant_key(family))
        return uuid.UUID(value) if value else None

    async def note_tenant_token(
        self, family: str, user_id: uuid.UUID, tenant_id: uuid.UUID, token_ttl_seconds: int
    ) -> None:
        """Record that this session was just given an access token carrying this tenant."""
        key = _tenant_holders_key(tenant_id, user_id)
        now = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {family: now})
            pipe.zremrangebyscore(key, "-inf", now - token_ttl_seconds)
            pipe.expire(key, token_ttl_seconds)
            await pipe.execute()

    async def families_holding(
        self, user_id: uuid.UUID, tenant_id: uuid.UUID, token_ttl_seconds: int
    ) -> list[str]:
        """The user's sessions that may still hold an unexpired access token for this tenant."""
        since = time.time() - token_ttl_seconds
        found = await self.redis.zrangebyscore(_tenant_holders_key(tenant_id, user_id), since, "+inf")
        return sorted(str(family) for family in found)

    async def families_in_tenant(self, user_id: uuid.UUID, tenant_id: uuid.UUID) -> list[str]:
        """The user's live sessions switched into this tenant."""
        families = sorted(await self.redis.smembers(_user_families_key(user_id)))
        if not families:
            return []
        tenants = await self.redis.mget([_family_tenant_key(f) for f in families])
        return [f for f, t in zip(families, tenants, strict=True) if t == str(tenant_id)]

    async def epoch(self, user_id: uuid.UUID) -> int:
        """How many times every session of this user was ended (a login compares it before and after)."""
        return int(await self.redis.get(_epoch_key(user_id)) or 0)

    async def revoke_all(self, user_id: uuid.UUID) -> list[str]:
        """End every session of a user; returns their family ids (their access tokens' `sid`)."""
        # The epoch moves first: a login that read the old one before this and starts its session
        # after the families are read below sees the change and ends what it started.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(_epoch_key(user_id))
            pipe.pexpire(_epoch_key(user_id), self.ttl_ms)
            await pipe.execute()
        families = sorted(await self.redis.smembers(_user_families_key(user_id)))
        if families:
            await self.redis.delete(
                *(_family_key(f) for f in families),
                *(_family_tenant_key(f) for f in families),
                _user_families_key(user_id),
            )
        return families

    async def issue_one_time(self, purpose: str, user_id: uuid.UUID, ttl_seconds: int) -> str:
        """A new one-time token; the user's previous token of this purpose stops working."""
        return await self.issue_one_time_text(purpose, str(user_id), str(user_id), ttl_seconds)

    async def issue_one_time_text(self, purpose: str, owner: str, value: str, ttl_seconds: int) -> str:
        """A new one-time token naming `value`; `owner`'s previous token of this purpose stops working."""
        token = new_token()
        h = digest(token)
        latest = _latest_one_time_key(purpose, owner)
        previous = await self.redis.get(latest)
        async with self.redis.pipeline(transaction=True) as pipe:
            if previous:
                pipe.delete(_one_time_key(purpose, previous))
            pipe.set(_one_time_key(purpose, h), value, ex=ttl_seconds)
            pipe.set(latest, h, ex=ttl_seconds)
            await pipe.execute()
        return token

    @asynccontextmanager
    async def one_time(self, purpose: str, token: str) -> AsyncIterator[uuid.UUID | None]:
        """Use a one-time token: the user it names (None if unknown or spent); see `one_time_text`."""
        async with self.one_time_text(purpose, token) as value:
            yield uuid.UUID(value) if value else None

    @asynccontextmanager
    async def one_time_text(self, purpose: str, token: str) -> AsyncIterator[str | None]:
        """Use a one-time token: the value it names (None if unknown or spent).

        It is claimed atomically on entry, so two concurrent uses cannot both succeed; if the
        block raises, it is put back with the time it had left, so a failed change leaves the
        link usable; if the block completes, it stays spent.
        """
        key = _one_time_key(purpose, digest(token))
        value, ttl_ms = await self._claim(keys=[key])
        try:
            yield value or None
        except BaseException:
            if value and int(ttl_ms) > 0:
                await self.redis.set(key, value, px=int(ttl_ms), nx=True)
            raise

    async def issue_device(self, user_id: uuid.UUID, ttl_seconds: int, replacing: str | None = None) -> str:
        """A device token for a client that just proved the password (the one it sent is replaced)."""
        token = new_token()
        devices = _user_devices_key(user_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            if replacing:
                pipe.delete(_device_key(digest(replacing)))
                pipe.srem(devices, digest(replacing))
            pipe.set(_device_key(digest(token)), str(user_id), ex=ttl_seconds)
            pipe.sadd(devices, digest(token))
            pipe.expire(devices, ttl_seconds)
            await pipe.execute()
        return token

    async def forget_devices(self, user_id: uuid.UUID) -> None:
        """Every device of a user becomes unknown again (after a password reset, when disabled)."""
        devices = _user_devices_key(user_id)
        known = await self.redis.smembers(devices)
        await self.redis.delete(*(_device_key(h) for h in known), devices)

    async def device_owner(self, token: str) -> uuid.UUID | None:
        value = await self.redis.get(_device_key(digest(token)))
        return uuid.UUID(value) if value else None

    async def live_sessions(self, user_id: uuid.UUID) -> list[tuple[str, uuid.UUID | None]]:
        """The user's sessions that can still refresh, each with the tenant it is switched into."""
        families = sorted(await self.redis.smembers(_user_families_key(user_id)))
        if not families:
            return []
        # The index outlives families that expired on their own: only those whose key exists count.
        alive = await self.redis.mget([_family_key(f) for f in families])
        tenants = await self.redis.mget([_family_tenant_key(f) for f in families])
        return [
            (family, uuid.UUID(str(tenant)) if tenant else None)
            for family, owner, tenant in zip(families, alive, tenants, strict=True)
            if owner is not None
        ]
