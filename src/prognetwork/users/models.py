"""The user service's tables: accounts, and tenants (organisations) with their members and invitations.

The three tenant tables are guarded by row-level security (migration 0006, `kit.tenancy`): every
statement on them runs in a transaction that declared its tenant and user with `tenancy.scope()`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal, get_args

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, Index, Integer, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from prognetwork.kit.db import Base

# Strongest first: an owner may do everything an admin may, an admin everything a member may.
TenantRole = Literal["owner", "admin", "member"]
TENANT_ROLES: tuple[TenantRole, ...] = get_args(TenantRole)
_ROLE_CHECK = "role IN ('owner', 'admin', 'member')"


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        Index(
            "ix_users_unverified_created_at", "created_at", postgresql_where=text("email_verified_at IS NULL")
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # Stored lower-cased; the unique index is what makes "duplicate email" race-free.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20), server_default="user")
    email_verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # A disabled account cannot log in or refresh, and its sessions were revoked when it was disabled.
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Tenant(Base):
    """An organisation. Its plan and seat limit come from billing (`billing.entitlements_changed`)."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    plan: Mapped[str] = mapped_column(String(50), server_default="free")
    # None: never billed, so the free plan's limit (FREE_PLAN_SEATS) applies.
    seats: Mapped[int | None] = mapped_column(Integer, default=None)
    # The event that last set plan and seats: an older one arriving later changes nothing.
    entitlements_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The last `billing.payment_failed` its owners were told about: a redelivery tells nobody again.
    payment_notice_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[uuid.UUID | None] = mapped_column(default=None)


class TenantMember(Base):
    __tablename__ = "tenant_members"
    __table_args__ = (
        CheckConstraint(_ROLE_CHECK, name="role"),
        Index("ix_tenant_members_user_id", "user_id"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(20))
    joined_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TenantInvitation(Base):
    """A pending (or accepted) invitation; its token lives in Redis, only its digest here."""

    __tablename__ = "tenant_invitations"
    __table_args__ = (
        CheckConstraint(_ROLE_CHECK, name="role"),
        # One pending invitation per address and tenant: inviting again replaces it.
        Index(
            "ix_tenant_invitations_pending",
            "tenant_id",
            "email",
            unique=True,
            postgresql_where=text("accepted_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))  # lower-cased
    role: Mapped[str] = mapped_column(String(20))
    invited_by: Mapped[uuid.UUID | None] = mapped_column(default=None)
    token_digest: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
