"""The SQL on tenants, their members and invitations.

Every function here runs inside a transaction that called `kit.tenancy.scope()` first: the
tables are under row-level security, so outside a scope they look empty, and inside one they
show only the scoped tenant's rows (and the scoped user's own memberships). The WHERE clauses
below still name the tenant: the policy is the second line of defence, not the first.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.users.models import Tenant, TenantInvitation, TenantMember, User

# What a member looks like to the other members: (user_id, email, name, role, joined_at).
MEMBER_COLUMNS = (TenantMember.user_id, User.email, User.name, TenantMember.role, TenantMember.joined_at)
MemberRow = Row[uuid.UUID, str, str, str, datetime]


async def insert_tenant(
    db: AsyncSession, tenant_id: uuid.UUID, name: str, slug: str, created_by: uuid.UUID
) -> bool:
    """Create the tenant; False (and nothing written) when another tenant has the slug."""
    created = await db.execute(
        insert(Tenant)
        .values(id=tenant_id, name=name, slug=slug, created_by=created_by)
        .on_conflict_do_nothing(index_elements=["slug"])
        .returning(Tenant.id)
    )
    return created.scalar_one_or_none() is not None


async def tenant(db: AsyncSession, tenant_id: uuid.UUID, *, for_update: bool = False) -> Tenant | None:
    """The tenant; locked for the transaction when `for_update` (membership changes take this lock)."""
    query = select(Tenant).where(Tenant.id == tenant_id)
    if for_update:
        query = query.with_for_update()
    # populate_existing: a row read earlier in the session must not hide a change made since.
    return (await db.execute(query.execution_options(populate_existing=True))).scalar_one_or_none()


async def tenants_of(db: AsyncSession, user_id: uuid.UUID) -> Sequence[Row[uuid.UUID, str, str, str]]:
    """(id, name, slug, role) of every tenant the user is a member of, by name."""
    query = (
        select(Tenant.id, Tenant.name, Tenant.slug, TenantMember.role)
        .join(TenantMember, TenantMember.tenant_id == Tenant.id)
        .where(TenantMember.user_id == user_id)
        .order_by(Tenant.name, Tenant.id)
    )
    return (await db.execute(query)).all()


async def role_of(db: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID) -> str | None:
    query = select(TenantMember.role).where(
        TenantMember.tenant_id == tenant_id, TenantMember.user_id == user_id
    )
    return (await db.execute(query)).scalar_one_or_none()


async def member_count(db: AsyncSession, tenant_id: uuid.UUID, role: str | None = None) -> int:
    query = select(func.count()).select_from(TenantMember).where(TenantMember.tenant_id == tenant_id)
    if role is not None:
        query = query.where(TenantMember.role == role)
    return (await db.execute(query)).scalar_one()


async def members(db: AsyncSession, tenant_id: uuid.UUID) -> Sequence[MemberRow]:
    """(user_id, email, name, role, joined_at) of every member, in the order they joined."""
    query = (
        select(*MEMBER_COLUMNS)
        .join(User, User.id == TenantMember.user_id)
        .where(TenantMember.tenant_id == tenant_id)
        .order_by(TenantMember.joined_at, TenantMember.user_id)
    )
    return (await db.execute(query)).all()


async def member(db: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID) -> MemberRow | None:
    query = (
        select(*MEMBER_COLUMNS)
        .join(User, User.id == TenantMember.user_id)
        .where(TenantMember.tenant_id == tenant_id, TenantMember.user_id == user_id)
    )
    return (await db.execute(query)).one_or_none()


async def member_with_email(db: AsyncSession, tenant_id: uuid.UUID, email: str) -> bool:
    query = (
        select(TenantMember.user_id)
        .join(User, User.id == TenantMember.user_id)
        .where(TenantMember.tenant_id == tenant_id, User.email == email.lower())
    )
    return (await db.execute(query)).first() is not None


async def owners(db: AsyncSession, tenant_id: uuid.UUID) -> Sequence[Row[uuid.UUID, str]]:
    """(user_id, email) of the tenant's owners."""
    query = (
        select(TenantMember.user_id, User.email)
        .join(User, User.id == TenantMember.user_id)
        .where(TenantMember.tenant_id == tenant_id, TenantMember.role == "owner")
        .order_by(TenantMember.joined_at, TenantMember.user_id)
    )
    return (await db.execute(query)).all()


async def add_member(db: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID, role: str) -> datetime:
    """Add a member; when they joined."""
    added = await db.execute(
        insert(TenantMember)
        .values(tenant_id=tenant_id, user_id=user_id, role=role)
        .returning(TenantMember.joined_at)
    )
    return added.scalar_one()


async def set_role(db: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID, role: str) -> None:
    await db.execute(
        update(TenantMember)
        .where(TenantMember.tenant_id == tenant_id, TenantMember.user_id == user_id)
        .values(role=role)
    )


async def remove_member(db: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID) -> None:
    await db.execute(
        delete(TenantMember).where(TenantMember.tenant_id == tenant_id, TenantMember.user_id == user_id)
    )


# -- invitations ----------------------------------------------------------------------------------


async def pending_invitation(db: AsyncSession, tenant_id: uuid.UUID, email: str) -> TenantInvitation | None:
    """The invitation not yet accepted for this address (expired or not), locked."""
    query = (
        select(TenantInvitation)
        .where(
            TenantInvitation.tenant_id == tenant_id,
            TenantInvitation.email == email.lower(),
            TenantInvitation.accepted_at.is_(None),
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await db.execute(query)).scalar_one_or_none()


async def invitation(
    db: AsyncSession, tenant_id: uuid.UUID, invitation_id: uuid.UUID
) -> TenantInvitation | None:
    """An invitation of this tenant, locked."""
    query = (
        select(TenantInvitation)
        .where(TenantInvitation.tenant_id == tenant_id, TenantInvitation.id == invitation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await db.execute(query)).scalar_one_or_none()


async def save_invitation(
    db: AsyncSession,
    *,
    invitation_id: uuid.UUID,
    tenant_id: uuid.UUID,
    email: str,
    role: str,
    invited_by: uuid.UUID,
    token_digest: str,
    expires_at: datetime,
) -> datetime:
    """Create the pending invitation, or replace the one with this id (a new token, role, expiry);
    when it was (re)issued."""
    values = {
        "role": role,
        "invited_by": invited_by,
        "token_digest": token_digest,
        "expires_at": expires_at,
        "created_at": func.now(),
    }
    saved = await db.execute(
        insert(TenantInvitation)
        .values(id=invitation_id, tenant_id=tenant_id, email=email.lower(), **values)
        .on_conflict_do_update(index_elements=["id"], set_=values)
        .returning(TenantInvitation.created_at)
    )
    return saved.scalar_one()


async def pending_invitations(
    db: AsyncSession, tenant_id: uuid.UUID, now: datetime
) -> list[TenantInvitation]:
    query = (
        select(TenantInvitation)
        .where(
            TenantInvitation.tenant_id == tenant_id,
            TenantInvitation.accepted_at.is_(None),
            TenantInvitation.expires_at > now,
        )
        .order_by(TenantInvitation.created_at.desc(), TenantInvitation.id)
    )
    return list((await db.execute(query)).scalars().all())


async def mark_accepted(db: AsyncSession, invitation_id: uuid.UUID, at: datetime) -> None:
    await db.execute(
        update(TenantInvitation).where(TenantInvitation.id == invitation_id).values(accepted_at=at)
    )


# -- what billing tells us --------------------------------------------------------------------------


async def apply_entitlements(db: AsyncSession, tenant_id: uuid.UUID, plan: str, seats: int, seq: int) -> bool:
    """Store plan and seats unless a later event already did; whether this one applied."""
    applied = await db.execute(
        update(Tenant)
        .where(
            Tenant.id == tenant_id,
            (Tenant.entitlements_seq.is_(None)) | (Tenant.entitlements_seq < seq),
        )
        .values(plan=plan, seats=seats, entitlements_seq=seq)
        .returning(Tenant.id)
    )
    return applied.scalar_one_or_none() is not None


async def claim_payment_notice(db: AsyncSession, tenant_id: uuid.UUID, seq: int) -> str | None:
    """Record that the owners are being told about payment failure `seq`: the tenant's name, or
    None if they were told already (or the tenant is gone)."""
    claimed = await db.execute(
        update(Tenant)
        .where(
            Tenant.id == tenant_id,
            (Tenant.payment_notice_seq.is_(None)) | (Tenant.payment_notice_seq < seq),
        )
        .values(payment_notice_seq=seq)
        .returning(Tenant.name)
    )
    return claimed.scalar_one_or_none()
