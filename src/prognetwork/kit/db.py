"""PostgreSQL access: one async engine per process, sessions per unit of work.

The transaction idiom: a service method that writes does so inside `async with session.begin():`,
so where a Redis side effect sits relative to the commit is visible in the code's shape. A
request-scoped session (kit.app.write_session) rolls back whatever was not committed when the
request ends, exception or not. Requests that only read get a `ReadSession`: autocommit (one
round trip per lookup) and unable to write — `commit()` and `flush()` raise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names, so Alembic migrations can refer to them.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def sqlalchemy_url(dsn: str) -> str:
    """`postgresql://…?sslmode=require` → the asyncpg dialect's spelling."""
    parts = urlsplit(dsn)
    query = [("ssl" if k == "sslmode" else k, v) for k, v in parse_qsl(parts.query)]
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg", query=urlencode(query)))


# Opens one asyncpg connection: given, it replaces connecting to the engine's URL (credentials
# read per connection, kit/credentials.py).
Connector = Callable[[], Awaitable[Any]]
CONNECT_TIMEOUT = 5
COMMAND_TIMEOUT = 30


def create_engine(dsn: str, pool_size: int = 20, connect: Connector | None = None) -> AsyncEngine:
    # Up to twice the pool under bursts: waiting in SQLAlchemy's pool queue costs far more tail
    # latency than opening a few extra connections (measured: p99 1.0 s vs 0.22 s at 32
    # concurrent requests with 20 pooled connections).
    # No pre-ping (a round trip per checkout): after a database restart the first statement on a
    # stale connection fails, SQLAlchemy then drops every connection older than that failure,
    # and that one request answers 503 — usually a readiness probe.
    # hide_parameters: a statement's bound values (password hashes, emails, tokens) stay out of
    # exception messages, so an error log line or traceback never carries them.
    if connect is not None:
        return create_async_engine(
            "postgresql+asyncpg://",
            async_creator=connect,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=5,
            hide_parameters=True,
        )
    return create_async_engine(
        sqlalchemy_url(dsn),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=5,
        connect_args={"timeout": CONNECT_TIMEOUT, "command_timeout": COMMAND_TIMEOUT},
        hide_parameters=True,
    )


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


class ReadSession(AsyncSession):
    """A session that reads only: nothing it holds can be written back."""

    async def commit(self) -> NoReturn:
        raise TypeError("a ReadSession cannot write; take a write session (kit.app.write_session)")

    async def flush(self, objects: Any = None) -> None:
        if self.new or self.dirty or self.deleted:
            raise TypeError("a ReadSession cannot write; take a write session (kit.app.write_session)")


def reader_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[ReadSession]:
    """Sessions for requests that only read: autocommit, so a lookup is one round trip
    instead of three (no BEGIN and ROLLBACK around it)."""
    return async_sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"),
        class_=ReadSession,
        expire_on_commit=False,
    )


@dataclass(frozen=True, slots=True)
class Database:
    """A process's PostgreSQL: the engine, write sessions, read sessions, the schema it expects."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    readers: async_sessionmaker[ReadSession]
    expected_revision: str | None

    async def schema_problem(self) -> str | None:
        """None when the applied migration is the one this code expects."""
        revision = await applied_revision(self.engine)
        if revision != self.expected_revision:
            return (
                f"schema at {revision or 'nothing'}, expected {self.expected_revision} (run `prog migrate`)"
            )
        return None


@asynccontextmanager
async def open_database(
    dsn: str, pool_size: int, expected_revision: str | None, connect: Connector | None = None
) -> AsyncIterator[Database]:
    engine = create_engine(dsn, pool_size, connect)
    try:
        yield Database(engine, sessionmaker(engine), reader_sessionmaker(engine), expected_revision)
    finally:
        await engine.dispose()


async def applied_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
