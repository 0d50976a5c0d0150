"""The platform admin API's logic: what operators read and what admins change, independent of HTTP.

Who may call what is decided at the edge (admin_api: the token's platform role); this module
trusts its caller to have done so, and is what `prog users …` runs too (with a CLI actor).

Invariants:
- Every change is audited: `kit.audit.record` runs inside the change's own transaction, beside
  the event it appends, so an audit record exists if and only if its change committed. Disabling
  and enabling are `Accounts.set_disabled`, the service layer `prog users disable|enable` uses,
  which audits them as the actor it is given.
- Sessions end before the change commits (a failure leaves them ended, not alive) and again once
  it is visible, as `Accounts.set_disabled` does: a login that read the account before the commit
  may have started its session in between (see `Accounts.login`'s epoch).
- The platform keeps at least one enabled admin. Demoting an admin first locks every enabled
  admin's row, in one order, so two admins demoting each other at once cannot both succeed;
  disabling the last one is refused too (see `set_disabled` for how far that check goes).
- A role change signs the account out everywhere: its access tokens carry the role they were
  issued with, so the new role shows from its next login, and the old one stops at once.
- Tenants are read across tenants only inside `tenancy.scope_all_tenants()`, which can read every
  tenant's rows and write none.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar, get_args

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.kit import audit, events, tenancy
from prognetwork.kit.db import ReadSession
from prognetwork.kit.problems import Problem, ProblemType
from prognetwork.users import admin_queries as q
from prognetwork.users import passwords, queries, tenant_queries
from prognetwork.users.admin_queries import UserStatus
from prognetwork.users.models import User
from prognetwork.users.problems import (
    ALREADY_VERIFIED,
    LAST_ADMIN,
    TENANT_NOT_FOUND,
    TOO_MANY_EMAILS,
    UNKNOWN_USER,
)
from prognetwork.users.service import VERIFY_PURPOSE, Accounts
from prognetwork.users.tenants import Member

log = structlog.get_logger("prognetwork.users.admin")
PlatformRole = Literal["user", "operator", "admin"]
PLATFORM_ROLES: tuple[PlatformRole, ...] = get_args(PlatformRole)
# Who may read the admin API, and who may change anything through it.
READING_ROLES: tuple[PlatformRole, ...] = ("admin", "operator")
ACTING_ROLES: tuple[PlatformRole, ...] = ("admin",)
TARGET_USER = "user"
T = TypeVar("T")
# Only `prog users create` meets it (no route creates accounts this way), so it is declared here
# rather than in the API's catalogue (problems.py).
EMAIL_TAKEN = ProblemType(409, "email-taken", "An account has this address")


def status_of(user: User) -> UserStatus:
    if user.disabled_at is not None:
        return "disabled"
    return "unverified" if user.email_verified_at is None else "active"


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_after: str | None  # pass it as `after` for the next page; None when this is the last


@dataclass(frozen=True, slots=True)
class UserTenant:
    id: uuid.UUID
    name: str
    role: str


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str  # the family id: its access tokens' `sid`
    tenant_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class RecentEvent:
    id: uuid.UUID
    seq: int
    type: str
    tenant_id: uuid.UUID | None
    payload: dict[str, Any]
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class UserDetail:
    user: User
    tenants: list[UserTenant]
    sessions: list[Session]
    recent_events: list[RecentEvent]


@dataclass(frozen=True, slots=True)
class TenantSummary:
    id: uuid.UUID
    name: str
    slug: str
    plan: str
    seats: int
    members: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TenantDetail:
    tenant: TenantSummary
    members: list[Member]


@dataclass(frozen=True, slots=True)
class PlatformAdmin:
    accounts: Accounts

    # -- reading accounts ---------------------------------------------------------------------------

    async def users(
        self, db: ReadSession, query: str | None, status: UserStatus | None, limit: int, after: str | None
    ) -> Page[User]:
        found = await q.search_users(db, query, status, limit + 1, after)
        more = len(found) > limit
        page = found[:limit]
        return Page(page, page[-1].email if more else None)

    async def user(self, db: AsyncSession, user_id: uuid.UUID) -> UserDetail:
        async with db.begin():
            user = await q.user(db, user_id)
            if user is None:
                raise _unknown_user()
            recent = [RecentEvent(**row._mapping) for row in await q.recent_events(db, user_id)]
            await tenancy.scope_all_tenants(db)
            tenants = [UserTenant(*row) for row in await q.tenants_of(db, user_id)]
        sessions = [Session(*s) for s in await self.accounts.store.live_sessions(user_id)]
        return UserDetail(user, tenants, sessions, recent)

    # -- changing accounts --------------------------------------------------------------------------

    async def set_disabled(
        self,
        db: AsyncSession,
        actor: audit.Actor,
        user_id: uuid.UUID,
        disabled: bool,
        origin: audit.Origin | None = None,
    ) -> User:
        """Disable an account (every session ends at once, logins are refused) or enable it again:
        what `prog users disable|enable` does (`Accounts.set_disabled`, which audits the change),
        as this admin, and never to the last enabled admin."""
        async with db.begin():
            user = await q.user(db, user_id)
            if user is None:
                raise _unknown_user()
            if disabled:
                # Checked before the change's own transaction, so not under its locks: two last
                # admins disabling each other at the same instant could both succeed (`prog users
                # enable` undoes it). Demotion, the usual way to lose an admin, is checked atomically.
                self._keep_an_admin(user, await q.enabled_admins(db), "disabled")
        return await self.accounts.set_disabled(db, user.email, disabled, actor=actor, origin=origin)

    async def revoke_sessions(
        self, db: AsyncSession, actor: audit.Actor, user_id: uuid.UUID, origin: audit.Origin | None = None
    ) -> int:
        """End every session of an account (refresh and access tokens); how many there were."""
        async with db.begin():
            user = await self._locked(db, user_id)
            ended = await self.accounts.end_all_sessions(user.id)
            await events.append(
                db,
                "user.sessions_revoked",
                {"user_id": str(user.id), "sessions_ended": len(ended)},
                user_id=user.id,
            )
            await self._audit(
                db, "user.sessions_revoked", actor, user, origin, {"sessions_ended": len(ended)}
            )
        return len(ended)

    async def set_role(
        self,
        db: AsyncSession,
        actor: audit.Actor,
        user_id: uuid.UUID,
        role: PlatformRole,
        origin: audit.Origin | None = None,
    ) -> User:
        """Give an account a platform role; it is signed out everywhere, so its tokens carry the new
        one from its next login."""
        async with db.begin():
            enabled_admins = await q.lock_enabled_admins(db)
            user = await self._locked(db, user_id)
            previous = user.role
            if previous == role:
                return user
            if previous == "admin":
                self._keep_an_admin(user, enabled_admins, "demoted")
            ended = await self._sign_out(user.id)
            user.role = role
            await events.append(
                db,
                "user.role_changed",
                {
                    "user_id": str(user.id),
                    "role": role,
                    "previous_role": previous,
                    "changed_by": str(actor.id) if actor.id else None,
                    "sessions_ended": len(ended),
                },
                user_id=user.id,
            )
            details = {"role": role, "previous_role": previous, "sessions_ended": len(ended)}
            await self._audit(db, "user.role_changed", actor, user, origin, details)
        await self._sign_out(user.id)  # again, once the new role is visible
        log.info("platform role changed", user_id=str(user.id), role=role, previous_role=previous)
        return user

    async def resend_verification(
        self, db: AsyncSession, actor: audit.Actor, user_id: uuid.UUID, origin: audit.Origin | None = None
    ) -> User:
        """Send an unverified account a new verification link (the previous one stops working), within
        the registration emails' hourly limit per address."""
        async with db.begin():
            user = await self._locked(db, user_id)
            if user.email_verified_at is not None:
                raise ALREADY_VERIFIED(f"{user.email} is verified already; there is nothing to resend.")
            if not await self.accounts._may_mail(user.email):
                raise TOO_MANY_EMAILS(
                    f"{user.email} was sent {self.accounts.settings.emails_per_address_per_hour} account emails "
                    "in the last hour; try again later."
                )
            ttl = self.accounts.settings.email_token_ttl_seconds
            # In Redis before the commit, as at registration: if the commit fails, it only expires.
            token = await self.accounts.store.issue_one_time(VERIFY_PURPOSE, user.id, ttl)
            await events.append(
                db,
                "user.email_verification_requested",
                {
                    "user_id": str(user.id),
                    "email": user.email,
                    "token": token,
                    "verify_url": self.accounts.verify_url(token),
                    "expires_in": ttl,
                },
                user_id=user.id,
                private=True,
            )
            await self._audit(db, "user.verification_resent", actor, user, origin, {})
        return user

    async def create_user(
        self, db: AsyncSession, actor: audit.Actor, email: str, password: str, name: str, role: PlatformRole
    ) -> User:
        """An account that is verified from the start (how the first admin comes to exist)."""
        email = email.lower()
        password_hash = await passwords.hash_password(password)
        try:
            async with db.begin():
                existing = await queries.user_by_email(db, email)
                if existing is not None:
                    raise _email_taken(email, status_of(existing))
                user = User(
                    id=uuid.uuid4(),
                    email=email,
                    name=name,
                    password_hash=password_hash,
                    role=role,
                    email_verified_at=datetime.now(UTC),
                )
                db.add(user)
                await db.flush()
                await events.append(
                    db,
                    "user.created",
                    {"user_id": str(user.id), "email": email, "name": name, "role": role},
                    user_id=user.id,
                )
                await self._audit(db, "user.created", actor, user, None, {"role": role})
        except IntegrityError:
            raise _email_taken(email, None) from None  # registered meanwhile
        return user

    async def set_role_by_email(
        self, db: AsyncSession, actor: audit.Actor, email: str, role: PlatformRole
    ) -> User:
        async with db.begin():
            user = await queries.user_by_email(db, email)
        if user is None:
            raise UNKNOWN_USER(f"No account has the address {email.lower()}.")
        return await self.set_role(db, actor, user.id, role)

    # -- reading tenants ----------------------------------------------------------------------------

    async def tenants(
        self, db: AsyncSession, query: str | None, limit: int, after: str | None
    ) -> Page[TenantSummary]:
        async with db.begin():
            await tenancy.scope_all_tenants(db)
            rows = await q.search_tenants(db, query, limit + 1, after)
        found = [self._summary(row) for row in rows]
        more = len(found) > limit
        page = found[:limit]
        return Page(page, page[-1].slug if more else None)

    async def tenant(self, db: AsyncSession, tenant_id: uuid.UUID) -> TenantDetail:
        async with db.begin():
            await tenancy.scope_all_tenants(db)
            row = await q.tenant(db, tenant_id)
            if row is None:
                raise TENANT_NOT_FOUND("No tenant has this id.")
            members = [Member.of(m) for m in await tenant_queries.members(db, tenant_id)]
        return TenantDetail(self._summary(row), members)

    # -- helpers ------------------------------------------------------------------------------------

    def _summary(self, row: Any) -> TenantSummary:
        seats = row.seats if row.seats is not None else self.accounts.settings.free_plan_seats
        return TenantSummary(row.id, row.name, row.slug, row.plan, seats, row.members, row.created_at)

    async def _locked(self, db: AsyncSession, user_id: uuid.UUID) -> User:
        user = await q.user(db, user_id, for_update=True)
        if user is None:
            raise _unknown_user()
        return user

    def _keep_an_admin(self, user: User, enabled_admins: list[uuid.UUID], change: str) -> None:
        """Refuse a change that would leave no enabled admin (`enabled_admins` is locked)."""
        if user.role == "admin" and user.disabled_at is None and not set(enabled_admins) - {user.id}:
            raise LAST_ADMIN(
                f"{user.email} is the platform's last enabled admin and cannot be {change}: "
                "make another account an admin first."
            )

    async def _sign_out(self, user_id: uuid.UUID) -> list[str]:
        """End every session of the user (refresh tokens, then access tokens); unlike a password reset
        or disabling, the devices it logged in from stay known (nothing about the password changed)."""
        families = await self.accounts.store.revoke_all(user_id)
        if families:
            await self.accounts.revocations.revoke(families, self.accounts.settings.access_token_ttl_seconds)
        return families

    async def _audit(
        self,
        db: AsyncSession,
        action: str,
        actor: audit.Actor,
        user: User,
        origin: audit.Origin | None,
        details: dict[str, Any],
    ) -> None:
        await audit.record(
            db,
            action,
            actor=actor,
            target_type=TARGET_USER,
            target_id=str(user.id),
            origin=origin,
            details={"email": user.email, **details},
        )


def _unknown_user() -> Problem:
    return UNKNOWN_USER("No account has this id.")


def _email_taken(email: str, status: UserStatus | None) -> Problem:
    known = f" ({status})" if status else ""
    return EMAIL_TAKEN(
        f"An account with the address {email} exists already{known}; "
        "give it a role with `prog users set-role` instead."
    )
