"""Tenants (organisations): creating them, their members and roles, invitations, and what billing says.

Invariants:
- Every statement on the tenant tables runs in a transaction that called `kit.tenancy.scope()`
  first (`_scoped`), so PostgreSQL's row-level security shows it one tenant's rows at most, even
  if a query here forgot its WHERE.
- Scoping to a tenant is not authorisation: the scope is whatever id the caller sent. Every
  operation on a tenant reads the caller's membership first; a non-member and a tenant that does
  not exist get the same 404, a member whose role falls short a 403 naming the role required.
- Membership changes (joining, role changes, removal) lock the tenant's row first, so counts they
  decide on (seats taken, owners left) cannot be raced: two accepts cannot take the last seat, two
  owners cannot demote each other into a tenant without one.
- An invitation's token lives in Redis (one-time, with a TTL; only its digest in the row, which
  says which token is current). A token is claimed when used and given back if accepting fails,
  so only a completed acceptance spends it; a token for someone else's address answers exactly
  like an unknown one.
- Removing a member ends their sessions switched into the tenant (revoked everywhere, before and
  again after the commit, as a password reset does); a member leaving of their own accord only
  takes their sessions out of it (their next refresh carries no `tid`), so leaving does not sign
  them out.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.kit import audit, events, tenancy
from prognetwork.kit.events import Event
from prognetwork.kit.problems import Problem
from prognetwork.users import queries
from prognetwork.users import tenant_queries as q
from prognetwork.users.models import TENANT_ROLES, TenantInvitation
from prognetwork.users.problems import (
    ALREADY_MEMBER,
    FORBIDDEN,
    INVITATION_NOT_FOUND,
    LAST_OWNER,
    MEMBER_NOT_FOUND,
    SEAT_LIMIT_REACHED,
    TENANT_NOT_FOUND,
    TOO_MANY_INVITATIONS,
    UNKNOWN_USER,
)
from prognetwork.users.service import Accounts
from prognetwork.users.sessions import digest
from prognetwork.users.settings import UsersSettings
from prognetwork.users.tenant_queries import MemberRow

log = structlog.get_logger("prognetwork.users.tenants")
INVITE_PURPOSE = "tenant-invitation"
ENTITLEMENTS_CHANGED = "billing.entitlements_changed"
PAYMENT_FAILED = "billing.payment_failed"
BILLING_EVENT_TYPES = frozenset({ENTITLEMENTS_CHANGED, PAYMENT_FAILED})
INVITE_WINDOW_SECONDS = 3600
SLUG_MAX = 48
SLUG_ATTEMPTS = 8
# Seats beyond any real plan; also keeps a bad event's number inside an INTEGER column.
MAX_SEATS = 1_000_000
_RANK: dict[str, int] = {role: len(TENANT_ROLES) - i for i, role in enumerate(TENANT_ROLES)}


@dataclass(frozen=True, slots=True)
class TenantSummary:
    id: uuid.UUID
    name: str
    slug: str
    role: str


@dataclass(frozen=True, slots=True)
class TenantDetail:
    id: uuid.UUID
    name: str
    slug: str
    role: str
    plan: str
    seats: int
    members: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Member:
    user_id: uuid.UUID
    email: str
    name: str
    role: str
    joined_at: datetime

    @classmethod
    def of(cls, row: MemberRow) -> Member:
        return cls(row.user_id, row.email, row.name, row.role, row.joined_at)


@dataclass(frozen=True, slots=True)
class Invitation:
    id: uuid.UUID
    email: str
    role: str
    expires_at: datetime
    created_at: datetime
    invited_by: uuid.UUID | None

    @classmethod
    def of(cls, row: TenantInvitation) -> Invitation:
        return cls(row.id, row.email, row.role, row.expires_at, row.created_at, row.invited_by)


@dataclass(frozen=True, slots=True)
class Accepted:
    tenant_id: uuid.UUID
    role: str


def slugify(name: str) -> str:
    """A URL-friendly form of a name: lower-case ASCII letters, digits and single hyphens."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")[:SLUG_MAX].strip("-")
    return slug or "tenant"


def outranks(role: str, required: str) -> bool:
    """Whether `role` may do what `required` may."""
    return _RANK[role] >= _RANK[required]


@asynccontextmanager
async def _scoped(
    db: AsyncSession, tenant_id: uuid.UUID | None, user_id: uuid.UUID
) -> AsyncIterator[AsyncSession]:
    """A transaction restricted to one tenant's rows (and the user's own memberships)."""
    async with db.begin():
        await tenancy.scope(db, tenant_id, user_id)
        yield db


@dataclass
class Tenants:
    """The tenant operations; `accounts` for links, sessions and one-time tokens."""

    settings: UsersSettings
    accounts: Accounts

    # -- tenants ------------------------------------------------------------------------------------

    async def create(
        self,
        db: AsyncSession,
        caller: uuid.UUID,
        name: str,
        *,
        actor: audit.Actor | None = None,
        origin: audit.Origin | None = None,
    ) -> TenantSummary:
        tenant_id = uuid.uuid4()
        base = slugify(name)
        async with _scoped(db, tenant_id, caller):
            if await queries.user_by_id(db, caller) is None:
                # A valid token can outlive its account (deleted since it was issued).
                raise UNKNOWN_USER("This account no longer exists.")
            # Other tenants' slugs are invisible here (row-level security), but the unique index
            # sees them all: try the name's slug, then add a short random suffix until one is free.
            for attempt in range(SLUG_ATTEMPTS):
                slug = base if attempt == 0 else f"{base}-{secrets.token_hex(3)}"
                if await q.insert_tenant(db, tenant_id, name, slug, caller):
                    break
            else:
                raise RuntimeError(f"no free slug for {base!r} after {SLUG_ATTEMPTS} attempts")
            await q.add_member(db, tenant_id, caller, "owner")
            await events.append(
                db,
                "tenant.created",
                {"tenant_id": str(tenant_id), "name": name, "slug": slug, "created_by": str(caller)},
                user_id=caller,
                tenant_id=tenant_id,
            )
            await audit.record(
                db,
                "tenant.created",
                actor=_actor(caller, actor),
                target_type="tenant",
                target_id=str(tenant_id),
                tenant_id=tenant_id,
                origin=origin,
                details={"name": name, "slug": slug},
            )
        log.info("tenant created", tenant_id=str(tenant_id))
        return TenantSummary(tenant_id, name, slug, "owner")

    async def mine(self, db: AsyncSession, caller: uuid.UUID) -> list[TenantSummary]:
        async with _scoped(db, None, caller):
            rows = await q.tenants_of(db, caller)
        return [TenantSummary(r.id, r.name, r.slug, r.role) for r in rows]

    async def get(self, db: AsyncSession, caller: uuid.UUID, tenant_id: uuid.UUID) -> TenantDetail:
        async with _scoped(db, tenant_id, caller):
            role = await self._authorize(db, tenant_id, caller)
            tenant = await q.tenant(db, tenant_id)
            count = await q.member_count(db, tenant_id)
        assert tenant is not None  # a member's tenant exists (members cascade with it)
        return TenantDetail(
            tenant.id,
            tenant.name,
            tenant.slug,
            role,
            tenant.plan,
            self._seats(tenant.seats),
            count,
            tenant.created_at,
        )

    async def members(self, db: AsyncSession, caller: uuid.UUID, tenant_id: uuid.UUID) -> list[Member]:
        async with _scoped(db, tenant_id, caller):
            await self._authorize(db, tenant_id, caller)
            rows = await q.members(db, tenant_id)
        return [Member.of(r) for r in rows]

    # -- invitations --------------------------------------------------------------------------------

    async def invite(
        self,
        db: AsyncSession,
        caller: uuid.UUID,
        tenant_id: uuid.UUID,
        email: str,
        role: str,
        *,
        actor: audit.Actor | None = None,
        origin: audit.Origin | None = None,
    ) -> Invitation:
        """Invite an address (again: the pending invitation gets a new token, role and expiry)."""
        email = email.lower()
        ttl = self.settings.invitation_ttl_seconds
        async with _scoped(db, tenant_id, caller):
            mine = await self._authorize(db, tenant_id, caller, "admin", "Inviting members", lock=True)
            if role == "owner" and mine != "owner":
                raise FORBIDDEN("Only an owner may invite an owner; you are an admin.")
            if await q.member_with_email(db, tenant_id, email):
                raise ALREADY_MEMBER(f"{email} is already a member of this tenant.")
            tenant = await q.tenant(db, tenant_id)
            assert tenant is not None  # locked by `_authorize`
            await self._may_invite(tenant_id, email)
            pending = await q.pending_invitation(db, tenant_id, email)
            invitation_id = pending.id if pending else uuid.uuid4()
            # Issued under the invitation's id, so a new token voids the one sent before. It exists
            # before the commit: if Redis is down nothing is written; if the commit fails it expires.
            token = await self.accounts.store.issue_one_time_text(
                INVITE_PURPOSE, str(invitation_id), f"{tenant_id}:{invitation_id}", ttl
            )
            expires_at = datetime.now(UTC) + timedelta(seconds=ttl)
            created_at = await q.save_invitation(
                db,
                invitation_id=invitation_id,
                tenant_id=tenant_id,
                email=email,
                role=role,
                invited_by=caller,
                token_digest=digest(token),
                expires_at=expires_at,
            )
            await events.append(
                db,
                "tenant.member_invited",
                {
                    "invitation_id": str(invitation_id),
                    "tenant_id": str(tenant_id),
                    "tenant_name": tenant.name,
                    "email": email,
                    "role": role,
                    "token": token,
                    "accept_url": self.accounts.link("accept-invitation", token=token),
                    "expires_in": ttl,
                    "invited_by": str(caller),
                },
                user_id=caller,
                tenant_id=tenant_id,
                private=True,
            )
            await audit.record(  # never the token: whoever holds it joins
                db,
                "tenant.member_invited",
                actor=_actor(caller, actor),
                target_type="invitation",
                target_id=str(invitation_id),
                tenant_id=tenant_id,
                origin=origin,
                details={"email": email, "role": role},
            )
        return Invitation(invitation_id, email, role, expires_at, created_at, caller)

    async def invitations(
        self, db: AsyncSession, caller: uuid.UUID, tenant_id: uuid.UUID
    ) -> list[Invitation]:
        """The invitations not yet accepted nor expired."""
        async with _scoped(db, tenant_id, caller):
            await self._authorize(db, tenant_id, caller, "admin", "Listing invitations")
            rows = await q.pending_invitations(db, tenant_id, datetime.now(UTC))
        return [Invitation.of(r) for r in rows]

    async def accept(
        self,
        db: AsyncSession,
        caller: uuid.UUID,
        token: str,
        *,
        actor: audit.Actor | None = None,
        origin: audit.Origin | None = None,
    ) -> Accepted:
        """Join the tenant an invitation names, as the user whose verified address it was sent to."""
        not_found = INVITATION_NOT_FOUND("This invitation is invalid, has expired or was already used.")
        # Claimed for the block; given back if it raises (someone else's token, no seat left), so
        # only a completed acceptance spends it.
        async with self.accounts.store.one_time_text(INVITE_PURPOSE, token) as named:
            tenant_id, invitation_id = _parse_invitation(named)
            if tenant_id is None or invitation_id is None:
                raise not_found
            async with _scoped(db, tenant_id, caller):
                # The token is the credential here; the row lock makes the seat count below final.
                tenant = await q.tenant(db, tenant_id, for_update=True)
                invitation = await q.invitation(db, tenant_id, invitation_id)
                user = await queries.user_by_id(db, caller)
                now = datetime.now(UTC)
                if (
                    tenant is None
                    or invitation is None
                    or invitation.accepted_at is not None
                    or invitation.expires_at <= now
                    or invitation.token_digest != digest(token)
                    or user is None
                    or user.email_verified_at is None
                    or user.email != invitation.email
                    or not await self._inviter_still_may(db, tenant_id, invitation)
                ):
                    raise not_found
                await q.mark_accepted(db, invitation.id, now)
                # Members are never invited (`invite` refuses), but should an invitation meet one, it
                # changes nothing: a role is changed by an owner or admin, not by an old link.
                current = await q.role_of(db, tenant_id, caller)
                if current is not None:
                    return Accepted(tenant_id, current)
                taken = await q.member_count(db, tenant_id)
                seats = self._seats(tenant.seats)
                if taken >= seats:
                    raise SEAT_LIMIT_REACHED(
                        f"The {tenant.plan} plan allows {seats} member{'s' if seats != 1 else ''} and this "
                        f"tenant has {taken}. An owner can upgrade the plan or remove a member; the "
                        "invitation stays valid until then."
                    )
                await q.add_member(db, tenant_id, caller, invitation.role)
                await events.append(
                    db,
                    "tenant.member_joined",
                    {
                        "tenant_id": str(tenant_id),
                        "user_id": str(caller),
                        "role": invitation.role,
                        "invitation_id": str(invitation.id),
                        "invited_by": str(invitation.invited_by) if invitation.invited_by else None,
                    },
                    user_id=caller,
                    tenant_id=tenant_id,
                )
                await audit.record(
                    db,
                    "tenant.member_joined",
                    actor=_actor(caller, actor),
                    target_type="user",
                    target_id=str(caller),
                    tenant_id=tenant_id,
                    origin=origin,
                    details={
                        "role": invitation.role,
                        "invitation_id": str(invitation.id),
                        "invited_by": str(invitation.invited_by) if invitation.invited_by else None,
                    },
                )
        log.info("tenant member joined", tenant_id=str(tenant_id), user_id=str(caller))
        return Accepted(tenant_id, invitation.role)

    # -- members ------------------------------------------------------------------------------------

    async def change_role(
        self,
        db: AsyncSession,
        caller: uuid.UUID,
        tenant_id: uuid.UUID,
        user_id: uuid.UUID,
        role: str,
        *,
        actor: audit.Actor | None = None,
        origin: audit.Origin | None = None,
    ) -> Member:
        async with _scoped(db, tenant_id, caller):
            mine = await self._authorize(db, tenant_id, caller, "admin", "Changing roles", lock=True)
            target = await q.member(db, tenant_id, user_id)
            if target is None:
                raise _no_such_member()
            if mine != "owner" and "owner" in (target.role, role):
                raise FORBIDDEN("Only an owner may change an owner's role or make someone an owner.")
            if target.role == role:
                return Member.of(target)
            if target.role == "owner":
                await self._keep_an_owner(db, tenant_id, "demoted")
            await q.set_role(db, tenant_id, user_id, role)
            await events.append(
                db,
                "tenant.member_role_changed",
                {
                    "tenant_id": str(tenant_id),
                    "user_id": str(user_id),
                    "role": role,
                    "previous_role": target.role,
                    "changed_by": str(caller),
                },
                user_id=user_id,
                tenant_id=tenant_id,
            )
            await audit.record(
                db,
                "tenant.member_role_changed",
                actor=_actor(caller, actor),
                target_type="user",
                target_id=str(user_id),
                tenant_id=tenant_id,
                origin=origin,
                details={"role": role, "previous_role": target.role},
            )
        if not outranks(role, target.role):
            # A demotion must not leave the old role in tokens for their remaining lifetime (billing
            # trusts `tenant_role`): the member's sessions in this tenant end; a promotion shows at the
            # next refresh.
            await self.accounts.end_tenant_sessions(user_id, tenant_id)
        return Member(target.user_id, target.email, target.name, role, target.joined_at)

    async def remove(
        self,
        db: AsyncSession,
        caller: uuid.UUID,
        tenant_id: uuid.UUID,
        user_id: uuid.UUID,
        *,
        actor: audit.Actor | None = None,
        origin: audit.Origin | None = None,
    ) -> None:
        """Remove a member (an owner or admin), or leave (any member, for themselves)."""
        leaving = user_id == caller
        async with _scoped(db, tenant_id, caller):
            mine = await self._authorize(
                db, tenant_id, caller, "member" if leaving else "admin", "Removing members", lock=True
            )
            target = await q.member(db, tenant_id, user_id)
            if target is None:
                raise _no_such_member()
            if not leaving and mine != "owner" and target.role == "owner":
                raise FORBIDDEN("Only an owner may remove an owner.")
            if target.role == "owner":
                await self._keep_an_owner(db, tenant_id, "leave" if leaving else "removed")
            # Before the commit (a failure then leaves the sessions out, never a removed member's
            # session in); again after it, below.
            sessions = await self._sessions_out(user_id, tenant_id, leaving)
            await q.remove_member(db, tenant_id, user_id)
            await events.append(
                db,
                "tenant.member_removed",
                {
                    "tenant_id": str(tenant_id),
                    "user_id": str(user_id),
                    "role": target.role,
                    "removed_by": str(caller),
                    "left": leaving,
                    "sessions_ended": 0 if leaving else len(sessions),
                },
                user_id=user_id,
                tenant_id=tenant_id,
            )
            await audit.record(
                db,
                "tenant.member_left" if leaving else "tenant.member_removed",
                actor=_actor(caller, actor),
                target_type="user",
                target_id=str(user_id),
                tenant_id=tenant_id,
                origin=origin,
                details={"role": target.role, "sessions_ended": 0 if leaving else len(sessions)},
            )
        # Again once the removal is visible: a switch-tenant that read the membership before the
        # commit may have put a session in after the first round.
        await self._sessions_out(user_id, tenant_id, leaving)

    async def _sessions_out(self, user_id: uuid.UUID, tenant_id: uuid.UUID, leaving: bool) -> list[str]:
        if leaving:
            return await self.accounts.leave_tenant_sessions(user_id, tenant_id)
        return await self.accounts.end_tenant_sessions(user_id, tenant_id)

    async def _inviter_still_may(
        self, db: AsyncSession, tenant_id: uuid.UUID, invitation: TenantInvitation
    ) -> bool:
        """An invitation carries its inviter's authority only while they hold it: one from a member
        since removed or demoted (below admin, or below owner for an owner's seat) is void."""
        if invitation.invited_by is None:
            return False
        role = await q.role_of(db, tenant_id, invitation.invited_by)
        return role is not None and outranks(role, "admin") and outranks(role, invitation.role)

    # -- what billing says --------------------------------------------------------------------------

    async def handle_billing_event(self, session: AsyncSession, event: Event) -> None:
        """The `user-service.billing` consumer's handler: idempotent by event (its sequence number).

        It runs in the consumer's transaction, which advances the cursor in the same commit: each
        event is handled scoped to its own tenant, and the scope ends with the event, so the next
        event (another tenant's) and the cursor update run as the consumer itself.
        """
        tenant_id = event.tenant_id or _uuid(event.payload.get("tenant_id"))
        if tenant_id is None:
            # Retrying cannot fix an event; refusing it would stop the consumer for good.
            log.warning("billing event names no tenant; skipped", seq=event.seq, type=event.type)
            return
        await tenancy.scope(session, tenant_id, None)
        if event.type == ENTITLEMENTS_CHANGED:
            await self._apply_entitlements(session, tenant_id, event)
        elif event.type == PAYMENT_FAILED:
            await self._tell_owners_payment_failed(session, tenant_id, event)
        await tenancy.unscope(session)

    async def _apply_entitlements(self, db: AsyncSession, tenant_id: uuid.UUID, event: Event) -> None:
        plan, seats = event.payload.get("plan"), event.payload.get("seats")
        if not isinstance(plan, str) or not 0 < len(plan) <= 50 or not _is_count(seats):
            log.warning("billing entitlements unreadable; skipped", seq=event.seq, tenant_id=str(tenant_id))
            return
        assert isinstance(seats, int)
        if await q.apply_entitlements(db, tenant_id, plan, seats, event.position):
            log.info("tenant entitlements applied", tenant_id=str(tenant_id), plan=plan, seats=seats)

    async def _tell_owners_payment_failed(self, db: AsyncSession, tenant_id: uuid.UUID, event: Event) -> None:
        name = await q.claim_payment_notice(db, tenant_id, event.position)
        if name is None:
            return  # told already (a redelivery), or the tenant is gone
        billing_url = self.accounts.link("billing", tenant=str(tenant_id))
        for owner in await q.owners(db, tenant_id):
            await events.append(
                db,
                "tenant.payment_failed_notice",
                {
                    "email": owner.email,
                    "user_id": str(owner.user_id),
                    "tenant_id": str(tenant_id),
                    "tenant_name": name,
                    "billing_url": billing_url,
                    "amount_due": event.payload.get("amount_due"),
                    "currency": event.payload.get("currency"),
                    "invoice_id": event.payload.get("invoice_id"),
                    "billing_event_id": str(event.id),
                },
                user_id=owner.user_id,
                tenant_id=tenant_id,
                private=True,
            )

    # -- authorisation ------------------------------------------------------------------------------

    async def _authorize(
        self,
        db: AsyncSession,
        tenant_id: uuid.UUID,
        caller: uuid.UUID,
        required: str = "member",
        action: str = "",
        *,
        lock: bool = False,
    ) -> str:
        """The caller's role in the tenant, if it is at least `required`; with `lock`, the tenant's row
        is locked (after membership is established: a stranger takes no lock) and the role re-read."""
        role = await q.role_of(db, tenant_id, caller)
        if role is not None and lock:
            await q.tenant(db, tenant_id, for_update=True)
            role = await q.role_of(db, tenant_id, caller)
        if role is None:
            raise TENANT_NOT_FOUND("You are not a member of a tenant with this id.")
        if not outranks(role, required):
            needed = " or ".join(r for r in TENANT_ROLES if outranks(r, required))
            raise FORBIDDEN(f"{action} needs the {needed} role in this tenant; you are a {role}.")
        return role

    async def _keep_an_owner(self, db: AsyncSession, tenant_id: uuid.UUID, change: str) -> None:
        """Refuse a change that would leave the tenant without an owner (the tenant row is locked)."""
        if await q.member_count(db, tenant_id, role="owner") <= 1:
            what = {"leave": "cannot leave", "demoted": "cannot be demoted", "removed": "cannot be removed"}
            raise LAST_OWNER(f"The tenant's last owner {what[change]}: make another member an owner first.")

    async def _may_invite(self, tenant_id: uuid.UUID, email: str) -> None:
        """Each invitation is an email: a bounded number per hour to one address from one tenant
        (`EMAILS_PER_ADDRESS_PER_HOUR`), so re-inviting cannot flood a mailbox. Counted per tenant,
        so no tenant can use up an address's allowance for the others."""
        key = "throttle:invite:" + hashlib.sha256(f"{tenant_id}:{email}".encode()).hexdigest()
        window = await self.accounts.throttle.hit(key, INVITE_WINDOW_SECONDS)
        if window.count > self.settings.emails_per_address_per_hour:
            raise TOO_MANY_INVITATIONS(
                f"This address was invited {self.settings.emails_per_address_per_hour} times in the last hour; "
                f"try again in {window.retry_after_seconds} seconds.",
                headers={"Retry-After": str(window.retry_after_seconds)},
            )

    def _seats(self, seats: int | None) -> int:
        return seats if seats is not None else self.settings.free_plan_seats


def _actor(caller: uuid.UUID, actor: audit.Actor | None) -> audit.Actor:
    """Who acted: as the route described them, or at least by their user id."""
    return actor if actor is not None else audit.Actor(caller, str(caller))


def _no_such_member() -> Problem:
    return MEMBER_NOT_FOUND("This tenant has no member with this user id.")


def _uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEATS


def _parse_invitation(value: str | None) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    tenant, _, invitation = (value or "").partition(":")
    return _uuid(tenant), _uuid(invitation)
