"""The SQL of the platform admin API: accounts across the platform, tenants across tenants.

Invariants:
- Reads of the tenant tables run in a transaction that called `kit.tenancy.scope_all_tenants()`
  first (the service layer opens it): row-level security then shows every tenant's rows and lets
  none be written.
- Private events (one-time tokens) are never read here: `NEVER_PRIVATE` is that rule, applied by
  the one query that reads events.
- Searches are case-insensitive substring matches (`ILIKE '%q%'`, the pattern's own `%` and `_`
  escaped) walked in the order of a unique index (users by email, tenants by slug), which is also
  the keyset cursor: a page stops reading after `limit` matches. A rare term may read the whole
  table to fill a page: fine for operators at the platform's size, and the place to add a trigram
  index (pg_trgm) if it stops being so.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Literal

from sqlalchemy import ColumnElement, Row, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.kit.db import ReadSession
from prognetwork.kit.events import events
from prognetwork.users.models import Tenant, TenantMember, User

UserStatus = Literal["unverified", "active", "disabled"]
RECENT_EVENTS = 20
NEVER_PRIVATE: ColumnElement[bool] = events.c.private.is_(False)
# (id, type, seq, tenant_id, payload, occurred_at) of an event an operator may read.
EVENT_COLUMNS = (
    events.c.id,
    events.c.seq,
    events.c.type,
    events.c.tenant_id,
    events.c.payload,
    events.c.occurred_at,
)
# A tenant as the operators' listing shows it, with how many members it has.
MEMBER_COUNT = (
    select(func.count())
    .select_from(TenantMember)
    .where(TenantMember.tenant_id == Tenant.id)
    .correlate(Tenant)
    .scalar_subquery()
    .label("members")
)
TENANT_COLUMNS = (
    Tenant.id,
    Tenant.name,
    Tenant.slug,
    Tenant.plan,
    Tenant.seats,
    Tenant.created_at,
    MEMBER_COUNT,
)


def _status_is(status: UserStatus) -> ColumnElement[bool]:
    if status == "disabled":
        return User.disabled_at.is_not(None)
    unverified = User.email_verified_at.is_(None)
    return User.disabled_at.is_(None) & (unverified if status == "unverified" else ~unverified)


async def search_users(
    db: ReadSession, q: str | None, status: UserStatus | None, limit: int, after: str | None
) -> list[User]:
    """Accounts whose email or name contains `q`, by email, after the email `after`."""
    query = select(User).order_by(User.email).limit(limit)
    if q:
        query = query.where(
            or_(User.email.icontains(q, autoescape=True), User.name.icontains(q, autoescape=True))
        )
    if status is not None:
        query = query.where(_status_is(status))
    if after is not None:
        query = query.where(User.email > after)
    return list((await db.execute(query)).scalars().all())


async def user(db: AsyncSession, user_id: uuid.UUID, *, for_update: bool = False) -> User | None:
    query = select(User).where(User.id == user_id).execution_options(populate_existing=True)
    if for_update:
        query = query.with_for_update()
    return (await db.execute(query)).scalar_one_or_none()


async def enabled_admins(db: AsyncSession) -> list[uuid.UUID]:
    query = select(User.id).where(User.role == "admin", User.disabled_at.is_(None))
    return list((await db.execute(query)).scalars().all())


async def lock_enabled_admins(db: AsyncSession) -> list[uuid.UUID]:
    """The enabled admins, locked for the transaction in one order (by id), so that every change
    that could leave the platform without one is decided on a count nobody else is changing."""
    query = (
        select(User.id)
        .where(User.role == "admin", User.disabled_at.is_(None))
        .order_by(User.id)
        .with_for_update()
    )
    return list((await db.execute(query)).scalars().all())


async def tenants_of(db: AsyncSession, user_id: uuid.UUID) -> Sequence[Row[uuid.UUID, str, str]]:
    """(id, name, role) of every tenant the user is a member of, by name (all-tenants scope)."""
    query = (
        select(Tenant.id, Tenant.name, TenantMember.role)
        .join(TenantMember, TenantMember.tenant_id == Tenant.id)
        .where(TenantMember.user_id == user_id)
        .order_by(Tenant.name, Tenant.id)
    )
    return (await db.execute(query)).all()


async def recent_events(db: AsyncSession, user_id: uuid.UUID, limit: int = RECENT_EVENTS) -> Sequence[Row]:
    """The user's latest events that are not private, newest first."""
    query = (
        select(*EVENT_COLUMNS)
        .where(events.c.user_id == user_id, NEVER_PRIVATE)
        .order_by(events.c.seq.desc())
        .limit(limit)
    )
    return (await db.execute(query)).all()


async def search_tenants(db: AsyncSession, q: str | None, limit: int, after: str | None) -> Sequence[Row]:
    """Tenants whose name or slug contains `q`, by slug, after the slug `after` (all-tenants scope)."""
    query = select(*TENANT_COLUMNS).order_by(Tenant.slug).limit(limit)
    if q:
        query = query.where(
            or_(Tenant.name.icontains(q, autoescape=True), Tenant.slug.icontains(q, autoescape=True))
        )
    if after is not None:
        query = query.where(Tenant.slug > after)
    return (await db.execute(query)).all()


async def tenant(db: AsyncSession, tenant_id: uuid.UUID) -> Row | None:
    return (await db.execute(select(*TENANT_COLUMNS).where(Tenant.id == tenant_id))).one_or_none()
