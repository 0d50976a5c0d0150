"""Account administration outside a request: what `prog users …` runs against the databases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.kit import db
from prognetwork.kit.cache import create_redis
from prognetwork.kit.revocation import Revocations
from prognetwork.kit.settings import Settings
from prognetwork.kit.throttle import Counter
from prognetwork.users.keys import KeyRing
from prognetwork.users.service import Accounts
from prognetwork.users.sessions import SessionStore


@asynccontextmanager
async def open_accounts(settings: Settings) -> AsyncIterator[tuple[Accounts, AsyncSession]]:
    """The user service's operations over this process's own short-lived connections."""
    engine = db.create_engine(settings.database_dsn, pool_size=1)
    redis = create_redis(settings.redis_dsn)
    try:
        accounts = Accounts(
            settings, KeyRing(settings), SessionStore(redis, settings.refresh_token_ttl_seconds), Counter(redis),
            Revocations(redis),
        )
        async with db.sessionmaker(engine)() as session:
            yield accounts, session
    finally:
        await redis.aclose()
        await engine.dispose()


async def set_disabled(settings: Settings, email: str, disabled: bool) -> str:
    """Disable (ending every session at once) or enable an account; returns its id."""
    async with open_accounts(settings) as (accounts, session):
        user = await accounts.set_disabled(session, email, disabled)
        return str(user.id)
