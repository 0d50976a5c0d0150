"""Accounts and sessions: the user service's logic, independent of HTTP routing."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from prometheus_client import Counter
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.kit import events
from prognetwork.kit.problems import Problem
from prognetwork.kit.settings import Settings
from prognetwork.kit.throttle import Counter as WindowCounter
from prognetwork.users import passwords
from prognetwork.users.keys import KeyRing
from prognetwork.users.models import User
from prognetwork.users.sessions import Outcome, SessionStore

log = structlog.get_logger("prognetwork.users")
REGISTRATIONS = Counter("user_registrations", "Accounts registered.")
LOGINS = Counter("user_logins", "Login attempts by outcome.", ("outcome",))
REFRESHES = Counter("user_token_refreshes", "Refresh attempts by outcome.", ("outcome",))
VERIFY_PURPOSE = "verify-email"
# Every outcome exists from the start at 0, so rate() sees the first real one as growth.
for _outcome in ("success", "invalid_credentials", "unverified", "throttled"):
    LOGINS.labels(_outcome)
for _outcome in ("rotated", "reused", "invalid"):
    REFRESHES.labels(_outcome)


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"


@dataclass
class Accounts:
    """Everything the user service's operations need, built once per process."""

    settings: Settings
    keys: KeyRing
    store: SessionStore
    throttle: WindowCounter

    async def register(self, db: AsyncSession, email: str, password: str, name: str) -> User:
        password_hash = await passwords.hash_password(password)
        user = User(id=uuid.uuid4(), email=email.lower(), name=name, password_hash=password_hash)
        # The one-time token exists in Redis before the account commits: if Redis is down
        # nothing is written; if the commit fails the orphan token simply expires.
        token = await self.store.issue_one_time(VERIFY_PURPOSE, user.id, self.settings.email_token_ttl_seconds)
        db.add(user)
        try:
            await db.flush()
        except IntegrityError:
            await db.rollback()
            raise Problem(409, "An account with this email already exists.", kind="email-taken") from None
        public = {"user_id": str(user.id), "email": user.email, "name": user.name}
        await events.append(db, "user.registered", public, user_id=user.id)
        await events.append(
            db, "user.email_verification_requested",
            {**public, "token": token, "verify_url": self.verify_url(token),
             "expires_in": self.settings.email_token_ttl_seconds},
            user_id=user.id, private=True,
        )
        await db.commit()
        REGISTRATIONS.inc()
        log.info("user registered", user_id=str(user.id))
        return user

    def verify_url(self, token: str) -> str:
        return f"{self.settings.app_url.rstrip('/')}/verify-email?token={token}"

    async def verify_email(self, db: AsyncSession, token: str) -> User:
        user_id = await self.store.peek_one_time(VERIFY_PURPOSE, token)
        if user_id is None:
            raise Problem(400, "This verification link is invalid or has expired.", kind="invalid-token")
        verified_at = datetime.now(UTC)
        changed = (
            await db.execute(
                update(User)
                .where(User.id == user_id, User.email_verified_at.is_(None))
                .values(email_verified_at=verified_at)
                .returning(User.id)
            )
        ).scalar()
        if changed is not None:
            await events.append(db, "user.email_verified", {"user_id": str(user_id)}, user_id=user_id)
        await db.commit()
        # Spent only after the change is durable, so a failed commit leaves the link usable.
        await self.store.spend_one_time(VERIFY_PURPOSE, token)
        user = await db.get(User, user_id)
        if user is None:
            raise Problem(400, "This verification link is invalid or has expired.", kind="invalid-token")
        return user

    async def login(self, db: AsyncSession, email: str, password: str, client: str) -> Tokens:
        s = self.settings
        by_address = await self.throttle.hit(f"throttle:login:addr:{client}", s.login_address_window_seconds)
        if by_address.count > s.login_attempts_per_address:
            LOGINS.labels("throttled").inc()
            raise _too_many(by_address.retry_after_seconds)
        account_key = "throttle:login:acct:" + hashlib.sha256(email.lower().encode()).hexdigest()
        failures = await self.throttle.peek(account_key)
        if failures.count >= s.login_failures_per_account:
            LOGINS.labels("throttled").inc()
            raise _too_many(failures.retry_after_seconds)

        user = (await db.execute(select(User).where(User.email == email.lower()))).scalar_one_or_none()
        if not await passwords.verify_password(user.password_hash if user else None, password):
            await self.throttle.hit(account_key, s.login_failure_window_seconds)
            LOGINS.labels("invalid_credentials").inc()
            raise Problem(401, "The email or password is incorrect.", kind="invalid-credentials")
        assert user is not None
        if user.email_verified_at is None:
            LOGINS.labels("unverified").inc()
            raise Problem(
                403, "Verify your email address before logging in; the link is in your inbox.",
                kind="email-not-verified",
            )
        if passwords.needs_rehash(user.password_hash):
            user.password_hash = await passwords.hash_password(password)
        await self.throttle.reset(account_key)
        family, refresh_token = await self.store.start(user.id)
        await events.append(db, "user.logged_in", {"user_id": str(user.id), "session_id": family}, user_id=user.id)
        await db.commit()
        LOGINS.labels("success").inc()
        return self._tokens(user, family, refresh_token)

    async def refresh(self, db: AsyncSession, refresh_token: str) -> Tokens:
        rotation = await self.store.rotate(refresh_token)
        REFRESHES.labels(rotation.outcome.value).inc()
        if rotation.outcome is Outcome.REUSED:
            await events.append(
                db, "user.session_revoked",
                {"user_id": str(rotation.user_id), "session_id": rotation.family, "reason": "refresh_token_reuse"},
                user_id=rotation.user_id,
            )
            await db.commit()
            log.warning("refresh token reuse; session revoked", user_id=str(rotation.user_id))
            raise Problem(
                401, "This refresh token was already used; the session has been revoked. Log in again.",
                kind="refresh-token-reused",
            )
        user = await db.get(User, rotation.user_id) if rotation.user_id else None
        if rotation.outcome is not Outcome.ROTATED or user is None:
            raise Problem(401, "The refresh token is invalid or has expired.", kind="invalid-token")
        assert rotation.family and rotation.refresh_token
        return self._tokens(user, rotation.family, rotation.refresh_token)

    async def logout(self, db: AsyncSession, refresh_token: str) -> None:
        ended = await self.store.revoke(refresh_token)
        if ended is None:
            return  # logging out twice is not an error
        family, user_id = ended
        await events.append(db, "user.logged_out", {"user_id": str(user_id), "session_id": family}, user_id=user_id)
        await db.commit()

    async def me(self, db: AsyncSession, user_id: uuid.UUID) -> User:
        user = await db.get(User, user_id)
        if user is None:
            raise Problem(404, "This account no longer exists.", kind="unknown-user")
        return user

    def _tokens(self, user: User, family: str, refresh_token: str) -> Tokens:
        ttl = self.settings.access_token_ttl_seconds
        claims = {"sub": str(user.id), "sid": family, "role": user.role, "email": user.email}
        if user.tenant_id:
            claims["tid"] = str(user.tenant_id)
        return Tokens(self.keys.sign(claims, ttl), refresh_token, ttl)


def _too_many(retry_after: int) -> Problem:
    return Problem(
        429, f"Too many login attempts; try again in {retry_after} seconds.", kind="too-many-attempts",
        headers={"Retry-After": str(retry_after)},
    )
