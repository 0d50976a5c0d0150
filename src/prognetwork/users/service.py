"""Accounts and sessions: the user service's logic, independent of HTTP routing.

Invariants:
- Whether an address has an account is never told to a caller: registration and password reset
  answer the same, and do the same work, either way; the owner of an address learns by email.
- An address is verified only by someone who both reads its mail (the link) and knows the
  password chosen at registration. Registering an unverified address again replaces that
  registration and voids its link, so whoever registered first cannot keep a claim on an address
  they do not own.
- Ending sessions (logout, refresh-token reuse, password reset, disabling) revokes their access
  tokens too, through the revocation set every verifier checks; revocation happens before the
  change commits, so a failure leaves the sessions ended rather than alive.
- Login failures are counted before the password is checked (increment first, decide on the count),
  so concurrent guesses cannot exceed a limit; see `login` for whom a lockout binds.
- Writes happen inside `async with db.begin():` here, never in routes; where a Redis side effect
  sits relative to that block is where it happens relative to the commit.
- A session may be switched into a tenant (`switch_tenant`): its access tokens then carry `tid` and
  `tenant_role`, re-read from the membership at every refresh, so a removed member's next token
  has no `tid` and a changed role shows at once. Membership reads run in a `tenancy.scope()`.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import structlog
from prometheus_client import Counter
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.kit import audit, events, tenancy, tokens
from prognetwork.kit.db import Database, Row
from prognetwork.kit.problems import Problem
from prognetwork.kit.revocation import Revocations
from prognetwork.kit.throttle import Counter as WindowCounter
from prognetwork.users import passwords, queries, tenant_queries
from prognetwork.users.keys import KeyRing
from prognetwork.users.models import User
from prognetwork.users.problems import (
    ACCOUNT_DISABLED,
    EMAIL_NOT_VERIFIED,
    INVALID_CREDENTIALS,
    INVALID_REFRESH_TOKEN,
    INVALID_RESET_LINK,
    INVALID_VERIFICATION_LINK,
    REFRESH_TOKEN_REUSED,
    TENANT_NOT_FOUND,
    TOO_MANY_ATTEMPTS,
    UNKNOWN_USER,
    VERIFICATION_PASSWORD_MISMATCH,
)
from prognetwork.users.sessions import Reused, Rotated, SessionStore, digest
from prognetwork.users.settings import UsersSettings

log = structlog.get_logger("prognetwork.users")
REGISTRATIONS = Counter("user_registrations", "Registration requests by outcome.", ("outcome",))
LOGINS = Counter("user_logins", "Login attempts by outcome.", ("outcome",))
REFRESHES = Counter("user_token_refreshes", "Refresh attempts by outcome.", ("outcome",))
PASSWORD_RESETS = Counter("user_password_resets", "Password reset steps by outcome.", ("outcome",))
MAIL_SUPPRESSED = Counter(
    "user_account_emails_suppressed",
    "Registration or reset requests dropped: too many emails to one address.",
)
VERIFY_PURPOSE = "verify-email"
RESET_PURPOSE = "password-reset"
MAIL_WINDOW_SECONDS = 3600
# Owns the decoy reset tokens issued for unknown addresses (no account has this id).
DECOY_USER = uuid.UUID(int=0)
# Every outcome exists from the start at 0, so rate() sees the first real one as growth.
for _outcome in ("created", "replaced", "existing"):
    REGISTRATIONS.labels(_outcome)
for _outcome in ("success", "invalid_credentials", "unverified", "disabled", "throttled"):
    LOGINS.labels(_outcome)
for _outcome in ("rotated", "reused", "invalid"):
    REFRESHES.labels(_outcome)
for _outcome in ("requested", "completed", "invalid"):
    PASSWORD_RESETS.labels(_outcome)


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a credential
    device_token: str | None = None  # login only: send it with this device's next login


@dataclass
class Accounts:
    """Everything the user service's operations need, built once per process."""

    settings: UsersSettings
    keys: KeyRing
    store: SessionStore
    throttle: WindowCounter
    revocations: Revocations

    # -- registration and verification ------------------------------------------------------

    async def register(self, db: AsyncSession, email: str, password: str, name: str) -> None:
        """Start (or restart) a registration; the answer never says whether the address was taken."""
        email = email.lower()
        # Hashed whatever happens next, so every outcome costs the same time.
        password_hash = await passwords.hash_password(password)
        if not await self._may_mail(email):
            return
        try:
            async with db.begin():
                user = await queries.user_by_email(db, email, for_update=True)
                if user is not None and user.email_verified_at is not None:
                    # The owner is told by email; the caller learns nothing.
                    await events.append(
                        db,
                        "user.registration_attempted",
                        {
                            "user_id": str(user.id),
                            "email": user.email,
                            "login_url": self._link("login"),
                            "reset_url": self._link("reset-password"),
                        },
                        user_id=user.id,
                    )
                    outcome = "existing"
                else:
                    outcome = await self._start_registration(db, user, email, password_hash, name)
        except IntegrityError:
            # A concurrent registration of the same address won the insert; it answers the same.
            return
        REGISTRATIONS.labels(outcome).inc()

    async def _start_registration(
        self, db: AsyncSession, user: User | None, email: str, password_hash: str, name: str
    ) -> str:
        if user is None:
            user = User(id=uuid.uuid4(), email=email, name=name, password_hash=password_hash)
            db.add(user)
            outcome, event_type = "created", "user.registered"
        else:
            # An unverified registration is nobody's yet: the latest registrant's password and name
            # replace it, and the link sent before stops working (issued below).
            user.password_hash, user.name, user.created_at = password_hash, name, datetime.now(UTC)
            outcome, event_type = "replaced", "user.registration_replaced"
        await db.flush()
        # The one-time token exists in Redis before the account commits: if Redis is down nothing
        # is written; if the commit fails the orphan token simply expires.
        token = await self.store.issue_one_time(
            VERIFY_PURPOSE, user.id, self.settings.email_token_ttl_seconds
        )
        public = {"user_id": str(user.id), "email": user.email, "name": user.name}
        await events.append(db, event_type, public, user_id=user.id)
        # No user-chosen text goes into mail to an address nobody has proved yet.
        await events.append(
            db,
            "user.email_verification_requested",
            {
                "user_id": str(user.id),
                "email": user.email,
                "token": token,
                "verify_url": self._link("verify-email", token),
                "expires_in": self.settings.email_token_ttl_seconds,
            },
            user_id=user.id,
            private=True,
        )
        log.info("registration started", user_id=str(user.id), outcome=outcome)
        return outcome

    async def _may_mail(self, email: str) -> bool:
        """Whether one more registration or reset email may go to this address now: a bounded number
        per hour, so neither flow can flood a mailbox or keep voiding its owner's links. Over the
        limit the request is dropped silently (the answer stays the same: no enumeration)."""
        window = await self.throttle.hit(
            "throttle:mail:" + hashlib.sha256(email.encode()).hexdigest(), MAIL_WINDOW_SECONDS
        )
        if window.count > self.settings.emails_per_address_per_hour:
            MAIL_SUPPRESSED.inc()
            return False
        return True

    def _link(self, page: str, token: str | None = None) -> str:
        return self.link(page, token=token) if token else self.link(page)

    def link(self, page: str, **query: str) -> str:
        """A link to a page of the web client (`APP_URL`), for emails."""
        url = f"{self.settings.app_url.rstrip('/')}/{page}"
        return f"{url}?{urlencode(query)}" if query else url

    def verify_url(self, token: str) -> str:
        return self._link("verify-email", token)

    async def verify_email(self, db: AsyncSession, token: str, password: str) -> User:
        # Claimed for the block; given back if it raises, so a failed change leaves the link usable.
        async with self.store.one_time(VERIFY_PURPOSE, token) as user_id, db.begin():
            user = await queries.user_by_id(db, user_id, for_update=True) if user_id else None
            if user is None:
                raise INVALID_VERIFICATION_LINK("This verification link is invalid or has expired.")
            if not await passwords.verify_password(user.password_hash, password):
                raise VERIFICATION_PASSWORD_MISMATCH(
                    "That is not the password chosen when this address was registered. If you did not register, "
                    "ignore the email; to start over, register again."
                )
            if user.email_verified_at is None:
                user.email_verified_at = datetime.now(UTC)
                await events.append(db, "user.email_verified", {"user_id": str(user.id)}, user_id=user.id)
        return user

    async def purge_unverified(self, db: AsyncSession) -> int:
        """Delete registrations never verified within `UNVERIFIED_ACCOUNT_TTL_SECONDS`."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.unverified_account_ttl_seconds)
        async with db.begin():
            gone = await queries.delete_unverified_before(db, cutoff)
            for user_id in gone:
                await events.append(
                    db, "user.registration_expired", {"user_id": str(user_id)}, user_id=user_id
                )
        return len(gone)

    # -- login and sessions -----------------------------------------------------------------

    async def login(
        self,
        db: AsyncSession,
        email: str,
        password: str,
        client: str,
        device_token: str | None = None,
        *,
        origin: audit.Origin | None = None,
    ) -> Tokens:
        """Check a password under the lockout policy (README, "Sign-in protection").

        Failures count against the account *from this address* (or from this known device),
        so a stranger elsewhere cannot lock the owner out; failures from all unknown devices
        together have a higher account-wide limit, which a known device (one that logged in
        before) and a completed password reset get past.

        Every sign-in and every refused one that got as far as a password check is audited;
        refusals by the throttle are not (they are counted in `user_logins`), or cheap refused
        requests would become writes.
        """
        s = self.settings
        origin = origin or audit.Origin(client_ip=client)
        by_address = await self.throttle.hit(f"throttle:login:addr:{client}", s.login_address_window_seconds)
        if by_address.count > s.login_attempts_per_address:
            LOGINS.labels("throttled").inc()
            raise _too_many(by_address.retry_after_seconds)
        email = email.lower()
        async with db.begin():  # a short read: the password check below holds no transaction open
            user = await queries.user_by_email(db, email)
        # Read before the password is: a reset or disable finishing meanwhile moves it (see below).
        epoch = await self.store.epoch(user.id) if user else 0
        # The device token, if it names a device this account logged in from before.
        known_device = (
            device_token
            if device_token and user and await self.store.device_owner(device_token) == user.id
            else None
        )
        if known_device is not None:
            limits = [(f"throttle:login:device:{digest(known_device)}", s.login_failures_per_account)]
        else:
            account = account_key(email)
            limits = [
                (f"{account}:addr:{client}", s.login_failures_per_account),
                (account, s.login_failures_per_account_unknown_devices),
            ]
        counted: list[str] = []
        for key, limit in limits:
            window = await self.throttle.hit(key, s.login_failure_window_seconds)
            counted.append(key)
            if window.count > limit:
                await self.throttle.undo(*counted)  # a refused attempt checked nothing
                LOGINS.labels("throttled").inc()
                raise _too_many(window.retry_after_seconds)

        # Checked (against a decoy hash) for unknown addresses too: the same time either way.
        verified = await passwords.verify_password(user.password_hash if user else None, password)
        if user is None or not verified:
            LOGINS.labels("invalid_credentials").inc()
            await self._login_refused(db, email, user, "invalid_credentials", origin, proven=False)
            raise INVALID_CREDENTIALS("The email or password is incorrect.")
        # The owner proved the password from here: this address's (or device's) count starts over.
        # The account-wide count only gets this attempt back, or a success would hand a
        # distributed guesser a fresh allowance.
        await self.throttle.reset(counted[0])
        await self.throttle.undo(*counted[1:])
        if user.email_verified_at is None:
            LOGINS.labels("unverified").inc()
            await self._login_refused(db, email, user, "email_not_verified", origin)
            raise EMAIL_NOT_VERIFIED(
                "Verify your email address before logging in; the link is in your inbox."
            )
        if user.disabled_at is not None:
            LOGINS.labels("disabled").inc()
            await self._login_refused(db, email, user, "account_disabled", origin)
            raise ACCOUNT_DISABLED("This account has been disabled; contact support.")
        rehashed = (
            await passwords.hash_password(password) if passwords.needs_rehash(user.password_hash) else None
        )
        family, refresh_token = await self.store.start(user.id)
        if await self.store.epoch(user.id) != epoch:
            # Every session was ended (a reset, a disable) while this password was being checked:
            # what it proved may no longer hold, so the session just started ends too.
            await self.store.end(family, user.id, refresh_token)
            LOGINS.labels("invalid_credentials").inc()
            await self._login_refused(db, email, user, "sessions_ended_meanwhile", origin)
            raise INVALID_CREDENTIALS("The email or password is incorrect.")
        device = await self.store.issue_device(user.id, s.device_token_ttl_seconds, replacing=known_device)
        async with db.begin():
            if rehashed is not None:
                await queries.set_password_hash(db, user.id, rehashed)
            await events.append(
                db, "user.logged_in", {"user_id": str(user.id), "session_id": family}, user_id=user.id
            )
            await audit.record(
                db,
                "auth.login",
                actor=_actor(user),
                target_type="user",
                target_id=str(user.id),
                origin=origin,
                details={"session_id": family, "known_device": known_device is not None},
            )
        LOGINS.labels("success").inc()
        return self._tokens(user, family, refresh_token, device)

    async def _login_refused(
        self,
        db: AsyncSession,
        email: str,
        user: User | None,
        reason: str,
        origin: audit.Origin,
        *,
        proven: bool = True,
    ) -> None:
        """Audit a refused sign-in in a transaction of its own: the request fails, the record stays.
        The address tried is kept (never the password); the actor is the account's owner only if
        the password was right (`proven`)."""
        async with db.begin():
            await audit.record(
                db,
                "auth.login_failed",
                actor=_actor(user) if user is not None and proven else audit.ANONYMOUS,
                target_type="user",
                target_id=str(user.id) if user is not None else None,
                origin=origin,
                details={"email": email, "reason": reason},
                outcome="failure",
            )

    async def refresh(
        self, db: AsyncSession, refresh_token: str, *, origin: audit.Origin | None = None
    ) -> Tokens:
        # What PostgreSQL must say is read before the token is spent: if it cannot answer (an
        # outage), the 503 leaves the token unspent, so the client's retry is not taken for a
        # stolen token's reuse, which would end the whole session.
        session = await self.store.session_of(refresh_token)
        if session is None or not await self.store.is_live(refresh_token):
            await self._rotate(db, refresh_token, origin)  # unknown: invalid; spent: reuse, ends the family
            raise INVALID_REFRESH_TOKEN("The refresh token is invalid or has expired.")
        family, user_id = session
        async with db.begin():
            user = await self._active_user(db, user_id)
            tenant_id = await self.store.tenant_of(family)
            role = await self._tenant_role(db, tenant_id, user.id) if tenant_id else None
        rotation = await self._rotate(db, refresh_token, origin)
        if tenant_id and role is None:
            # No longer a member: this session leaves the tenant, and its tokens say so.
            await self.store.set_tenant(rotation.family, None)
        tenant = (tenant_id, role) if tenant_id and role else None
        if tenant is not None:
            await self._note_tenant_token(rotation.family, user.id, tenant[0])
        return self._tokens(user, rotation.family, rotation.refresh_token, tenant=tenant)

    async def switch_tenant(
        self,
        db: AsyncSession,
        refresh_token: str,
        tenant_id: uuid.UUID,
        *,
        origin: audit.Origin | None = None,
    ) -> Tokens:
        """Rotate the session's refresh token into a pair whose access token carries the tenant."""
        session = await self.store.session_of(refresh_token)
        if session is None:
            REFRESHES.labels("invalid").inc()
            raise INVALID_REFRESH_TOKEN("The refresh token is invalid or has expired.")
        # Refused before the token is spent, so the caller keeps a working session; a spent token
        # still goes through the rotation below, whose reuse detection ends the session.
        async with db.begin():
            role = await self._tenant_role(db, tenant_id, session[1])
        if role is None and await self.store.is_live(refresh_token):
            raise _no_such_tenant()
        rotation = await self._rotate(db, refresh_token, origin)
        await self.store.set_tenant(rotation.family, tenant_id)
        async with db.begin():
            user = await self._active_user(db, rotation.user_id)
            # Read again now that the session names the tenant: a removal committing after this read
            # finds the session and ends it; one committed before it is seen here.
            role = await self._tenant_role(db, tenant_id, user.id)
            if role is not None:
                await events.append(
                    db,
                    "tenant.switched",
                    {
                        "tenant_id": str(tenant_id),
                        "user_id": str(user.id),
                        "session_id": rotation.family,
                        "role": role,
                    },
                    user_id=user.id,
                    tenant_id=tenant_id,
                )
        if role is None:
            # Removed while switching: the session was on its way in, so it ends as theirs do.
            await self.end_sessions(user.id, [rotation.family])
            raise _no_such_tenant()
        await self._note_tenant_token(rotation.family, user.id, tenant_id)
        return self._tokens(user, rotation.family, rotation.refresh_token, tenant=(tenant_id, role))

    async def _rotate(
        self, db: AsyncSession, refresh_token: str, origin: audit.Origin | None = None
    ) -> Rotated:
        """Spend a refresh token for the next of its family; a spent one ends the whole family."""
        rotation = await self.store.rotate(refresh_token)
        REFRESHES.labels(rotation.outcome.value).inc()
        if isinstance(rotation, Reused):
            # The stolen-token case: whoever holds the family's access tokens is locked out now too.
            await self.revocations.revoke([rotation.family], self.settings.access_token_ttl_seconds)
            async with db.begin():
                await events.append(
                    db,
                    "user.session_revoked",
                    {
                        "user_id": str(rotation.user_id),
                        "session_id": rotation.family,
                        "reason": "refresh_token_reuse",
                    },
                    user_id=rotation.user_id,
                )
                # The platform revoked it; the origin is whoever replayed the spent token.
                await audit.record(
                    db,
                    "auth.session_revoked",
                    actor=audit.SYSTEM,
                    target_type="user",
                    target_id=str(rotation.user_id),
                    origin=origin,
                    details={"session_id": rotation.family, "reason": "refresh_token_reuse"},
                )
            log.warning("refresh token reuse; session revoked", user_id=str(rotation.user_id))
            raise REFRESH_TOKEN_REUSED(
                "This refresh token was already used; the session has been revoked. Log in again."
            )
        if not isinstance(rotation, Rotated):
            raise INVALID_REFRESH_TOKEN("The refresh token is invalid or has expired.")
        return rotation

    async def _active_user(self, db: AsyncSession, user_id: uuid.UUID) -> User:
        user = await queries.user_by_id(db, user_id)
        if user is None or user.disabled_at is not None:
            raise INVALID_REFRESH_TOKEN("The refresh token is invalid or has expired.")
        return user

    async def _note_tenant_token(self, family: str, user_id: uuid.UUID, tenant_id: uuid.UUID) -> None:
        ttl = self.settings.access_token_ttl_seconds + tokens.LEEWAY_SECONDS
        await self.store.note_tenant_token(family, user_id, tenant_id, ttl)

    async def _tenant_role(self, db: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID) -> str | None:
        """The user's role in the tenant, None if not a member. Scopes the caller's transaction."""
        await tenancy.scope(db, tenant_id, user_id)
        return await tenant_queries.role_of(db, tenant_id, user_id)

    async def logout(
        self, db: AsyncSession, refresh_token: str, *, origin: audit.Origin | None = None
    ) -> None:
        session = await self.store.session_of(refresh_token)
        if session is None:
            return  # logging out twice is not an error
        family, user_id = session
        # Access tokens first: if that fails, the session is still whole and a retry ends it all.
        await self.revocations.revoke([family], self.settings.access_token_ttl_seconds)
        await self.store.end(family, user_id, refresh_token)
        async with db.begin():
            await events.append(
                db, "user.logged_out", {"user_id": str(user_id), "session_id": family}, user_id=user_id
            )
            user = await queries.user_by_id(db, user_id)
            await audit.record(
                db,
                "auth.logout",
                actor=_actor(user) if user is not None else audit.Actor(user_id, str(user_id)),
                target_type="user",
                target_id=str(user_id),
                origin=origin,
                details={"session_id": family},
            )

    async def end_sessions(self, user_id: uuid.UUID, families: list[str]) -> None:
        """End these sessions of a user: access tokens first, then the refresh tokens."""
        if families:
            await self.revocations.revoke(families, self.settings.access_token_ttl_seconds)
            await self.store.end_families(user_id, families)

    async def end_tenant_sessions(self, user_id: uuid.UUID, tenant_id: uuid.UUID) -> list[str]:
        """End the user's sessions switched into this tenant, and those switched elsewhere since
        that still hold an unexpired token for it (their member was removed or demoted)."""
        ttl = self.settings.access_token_ttl_seconds + tokens.LEEWAY_SECONDS
        switched = await self.store.families_in_tenant(user_id, tenant_id)
        holding = await self.store.families_holding(user_id, tenant_id, ttl)
        families = sorted(set(switched) | set(holding))
        await self.end_sessions(user_id, families)
        return families

    async def leave_tenant_sessions(self, user_id: uuid.UUID, tenant_id: uuid.UUID) -> list[str]:
        """Take the user's sessions out of this tenant: their next refresh carries no `tid`."""
        families = await self.store.families_in_tenant(user_id, tenant_id)
        for family in families:
            await self.store.set_tenant(family, None)
        return families

    async def end_all_sessions(self, user_id: uuid.UUID) -> list[str]:
        """Revoke every session of a user: refresh tokens stop rotating, access tokens stop verifying."""
        families = await self.store.revoke_all(user_id)
        if families:
            await self.revocations.revoke(families, self.settings.access_token_ttl_seconds)
        # Devices that once proved the old password must not keep their way past the lockout.
        await self.store.forget_devices(user_id)
        return families

    # -- password reset and account state ---------------------------------------------------

    async def request_password_reset(
        self, db: AsyncSession, email: str, *, origin: audit.Origin | None = None
    ) -> None:
        """Email a reset link to a verified account; the same work and answer for any address."""
        email = email.lower()
        if not await self._may_mail(email):
            return
        async with db.begin():
            user = await queries.user_by_email(db, email)
            payload: dict[str, object] = {"email": email}
            # A real token, or a decoy for an unknown address: the same Redis work either way.
            owner = user.id if user is not None and user.email_verified_at is not None else DECOY_USER
            token = await self.store.issue_one_time(
                RESET_PURPOSE, owner, self.settings.password_reset_ttl_seconds
            )
            if owner != DECOY_USER:
                payload |= {
                    "user_id": str(owner),
                    "token": token,
                    "reset_url": self._link("reset-password", token),
                    "expires_in": self.settings.password_reset_ttl_seconds,
                }
            # Recorded for unknown addresses too (private, no token): the same writes either way, and an
            # audit trail of who is being targeted.
            await events.append(
                db,
                "user.password_reset_requested",
                payload,
                user_id=user.id if user is not None else None,
                private=True,
            )
            await audit.record(
                db,
                "auth.password_reset_requested",
                actor=audit.ANONYMOUS,
                target_type="user",
                target_id=str(user.id) if user is not None else None,
                origin=origin,
                details={"email": email, "link_sent": owner != DECOY_USER},
            )
        PASSWORD_RESETS.labels("requested").inc()

    async def reset_password(
        self, db: AsyncSession, token: str, password: str, *, origin: audit.Origin | None = None
    ) -> None:
        password_hash = await passwords.hash_password(password)
        async with self.store.one_time(RESET_PURPOSE, token) as user_id, db.begin():
            user = await queries.user_by_id(db, user_id, for_update=True) if user_id else None
            if user is None:
                PASSWORD_RESETS.labels("invalid").inc()
                raise INVALID_RESET_LINK("This password reset link is invalid or has expired.")
            user.password_hash = password_hash
            ended = await self.end_all_sessions(user.id)  # before the commit: a failure leaves them ended
            await events.append(
                db,
                "user.password_reset",
                {"user_id": str(user.id), "sessions_ended": len(ended)},
                user_id=user.id,
            )
            # By whoever holds the link: the address's owner, as far as anyone can tell.
            await audit.record(
                db,
                "auth.password_reset",
                actor=_actor(user),
                target_type="user",
                target_id=str(user.id),
                origin=origin,
                details={"sessions_ended": len(ended)},
            )
        # Again once the new password is visible: a login that read the old one before the commit
        # may have started its session after the first round; this ends it (see `login`'s epoch).
        await self.end_all_sessions(user.id)
        # Whoever holds the link owns the address: the account-wide lockout no longer binds them.
        await self.throttle.reset(account_key(user.email))
        PASSWORD_RESETS.labels("completed").inc()
        log.info("password reset", user_id=str(user.id), sessions_ended=len(ended))

    async def set_disabled(
        self,
        db: AsyncSession,
        email: str,
        disabled: bool,
        *,
        actor: audit.Actor = audit.SYSTEM,
        origin: audit.Origin | None = None,
    ) -> User:
        """Disable (ending every session at once) or enable an account; audited when it changes."""
        async with db.begin():
            user = await queries.user_by_email(db, email, for_update=True)
            if user is None:
                raise UNKNOWN_USER(f"No account has the address {email.lower()}.")
            if disabled and user.disabled_at is None:
                ended = await self.end_all_sessions(user.id)  # before the commit: a failure leaves them ended
                user.disabled_at = datetime.now(UTC)
                await events.append(
                    db,
                    "user.disabled",
                    {"user_id": str(user.id), "sessions_ended": len(ended)},
                    user_id=user.id,
                )
                await audit.record(
                    db,
                    "user.disabled",
                    actor=actor,
                    target_type="user",
                    target_id=str(user.id),
                    origin=origin,
                    details={"email": user.email, "sessions_ended": len(ended)},
                )
            elif not disabled and user.disabled_at is not None:
                user.disabled_at = None
                await events.append(db, "user.enabled", {"user_id": str(user.id)}, user_id=user.id)
                await audit.record(
                    db,
                    "user.enabled",
                    actor=actor,
                    target_type="user",
                    target_id=str(user.id),
                    origin=origin,
                    details={"email": user.email},
                )
        if disabled:
            # Again once `disabled_at` is visible: a login that read the account before the commit
            # may have started its session after the first round (see `login`'s epoch).
            await self.end_all_sessions(user.id)
        return user

    async def me(self, database: Database, user_id: uuid.UUID) -> Row:
        """The caller's profile row (queries.PROFILE's columns), read without a session."""
        profile = await queries.profile_by_id(database, user_id)
        if profile is None:
            raise UNKNOWN_USER("This account no longer exists.")
        return profile

    def _tokens(
        self,
        user: User,
        family: str,
        refresh_token: str,
        device_token: str | None = None,
        *,
        tenant: tuple[uuid.UUID, str] | None = None,
    ) -> Tokens:
        ttl = self.settings.access_token_ttl_seconds
        # `role` is the platform role (user, operator, admin); the tenant's is `tenant_role`.
        claims: dict[str, Any] = {"sub": str(user.id), "sid": family, "role": user.role, "email": user.email}
        if tenant is not None:
            claims["tid"], claims["tenant_role"] = str(tenant[0]), tenant[1]
        return Tokens(self.keys.sign(claims, ttl), refresh_token, ttl, device_token=device_token)


def _actor(user: User) -> audit.Actor:
    """A user as the actor of an audit record."""
    return audit.Actor(user.id, user.email, user.role)


def account_key(email: str) -> str:
    """The throttle key of an account's failures (a digest: Redis never holds addresses)."""
    return "throttle:login:acct:" + hashlib.sha256(email.lower().encode()).hexdigest()


def _no_such_tenant() -> Problem:
    return TENANT_NOT_FOUND("You are not a member of a tenant with this id.")


def _too_many(retry_after: int) -> Problem:
    return TOO_MANY_ATTEMPTS(
        f"Too many login attempts; try again in {retry_after} seconds.",
        headers={"Retry-After": str(retry_after)},
    )
