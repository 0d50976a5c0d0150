"""The user service's SQL: every statement it runs on the users table."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.kit.db import Database, Query, Row
from prognetwork.users.models import User

# What a profile shows (api.UserOut), read on every `GET /v1/users/me`: straight through the
# driver (kit.db.Query), without a session or the ORM.
PROFILE = Query(
    select(User.id, User.email, User.name, User.role, User.email_verified_at, User.created_at).where(
        User.id == bindparam("user_id")
    )
)


async def user_by_email(db: AsyncSession, email: str, *, for_update: bool = False) -> User | None:
    query = select(User).where(User.email == email.lower())
    if for_update:
        query = query.with_for_update()
    return (await db.execute(query)).scalar_one_or_none()


async def user_by_id(db: AsyncSession, user_id: uuid.UUID, *, for_update: bool = False) -> User | None:
    return await db.get(User, user_id, with_for_update=for_update)


async def profile_by_id(database: Database, user_id: uuid.UUID) -> Row | None:
    return await database.fetch_one(PROFILE, user_id=user_id)


async def delete_unverified_before(db: AsyncSession, cutoff: datetime) -> list[uuid.UUID]:
    """Delete registrations never verified and created before `cutoff`; their ids."""
    deleted = await db.execute(
        delete(User).where(User.email_verified_at.is_(None), User.created_at < cutoff).returning(User.id)
    )
    return list(deleted.scalars().all())


async def set_password_hash(db: AsyncSession, user_id: uuid.UUID, password_hash: str) -> None:
    await db.execute(update(User).where(User.id == user_id).values(password_hash=password_hash))
