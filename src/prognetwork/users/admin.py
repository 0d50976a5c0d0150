"""Account administration outside a request: what `prog users …` runs against the databases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.kit import audit, db
from prognetwork.kit.cache import create_redis
from prognetwork.users.keys import KeyRing
from prognetwork.users.runtime import build_accounts
from prognetwork.users.service import Accounts
from prognetwork.users.settings import UsersSettings


@asynccontextmanager
async def open_accounts(settings: UsersSettings) -> AsyncIterator[tuple[Accounts, AsyncSession]]:
    """The user service's operations over this process's own short-lived connections."""
    engine = db.create_engine(settings.database_dsn, pool_size=1)
    redis = create_redis(settings.redis_dsn)
    try:
        accounts = build_accounts(settings, redis, KeyRing(settings))
        async with db.sessionmaker(engine)() as session:
            yield accounts, session
    finally:
        await redis.aclose()
        await engine.dispose()


async def set_disabled(settings: UsersSettings, email: str, disabled: bool) -> str:
    """Disable (ending every session at once) or enable an account; returns its id."""
    async with open_accounts(settings) as (accounts, session):
        user = await accounts.set_disabled(session, email, disabled, actor=audit.cli_actor())
        return str(user.id)
