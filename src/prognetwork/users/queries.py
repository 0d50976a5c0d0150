"""The user service's SQL: every statement it runs on the users table."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.users.models import User


async def user_by_email(db: AsyncSession, email: str, *, for_update: bool = False) -> User | None:
    query = select(User).where(User.email == email.lower())
    if for_update:
        query = query.with_for_update()
    return (await db.execute(query)).scalar_one_or_none()


async def user_by_id(db: AsyncSession, user_id: uuid.UUID, *, for_update: bool = False) -> User | None:
    return await db.get(User, user_id, with_for_update=for_update)


async def delete_unverified_before(db: AsyncSession, cutoff: datetime) -> list[uuid.UUID]:
    """Delete registrations never verified and created before `cutoff`; their ids."""
    deleted = await db.execute(
        delete(User).where(User.email_verified_at.is_(None), User.created_at < cutoff).returning(User.id)
    )
    return list(deleted.scalars().all())


async def set_password_hash(db: AsyncSession, user_id: uuid.UUID, password_hash: str) -> None:
    await db.execute(update(User).where(User.id == user_id).values(password_hash=password_hash))
