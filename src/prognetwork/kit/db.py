"""PostgreSQL access: one async engine per process, sessions per unit of work.

The transaction idiom: a service method that writes does so inside `async with session.begin():`,
so where a Redis side effect sits relative to the commit is visible in the code's shape. A
request-scoped session (kit.app.write_session) rolls back whatever was not committed when the
request ends, exception or not. Requests that only read get a `ReadSession`: autocommit (one
round trip per lookup) and unable to write — `commit()` and `flush()` raise.

A hot read (the row behind an authenticated request, read on every one) may skip the session
altogether: `Database.fetch_one(query, ...)` runs a `Query` — a Core SELECT compiled once for the
driver — on a connection of the same pool, straight through asyncpg. No session, no ORM, none of
SQLAlchemy's per-statement execution machinery (execution context, cursor emulation, result
rows, greenlet hand-offs), which cost about three times the driver's own work for a lookup by key
(measured here, CPU per lookup: ~700 µs for `session.get`, ~560 µs for `connection.execute` of a
cached statement, ~190 µs this way). Errors are SQLAlchemy's as for any statement (a lost
connection invalidates the pool's older ones; an outage is a 503), and with tracing on it is a
span like any other statement.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from sqlalchemy import Engine, MetaData, Select, text
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.util import await_, greenlet_spawn

from prognetwork.kit import tracing

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
    # Up to twice `pool_size` connections under bursts: waiting in SQLAlchemy's pool queue costs
    # far more tail latency than opening a few extra connections (measured: p99 1.0 s vs 0.22 s
    # at 32 concurrent requests with 20 pooled connections). They are opened as concurrency
    # needs them and then kept, not closed again as SQLAlchemy's overflow connections are as soon
    # as the pool is full: that made every burst over `pool_size` reconnect (a backend start, a
    # login and the driver's type set-up, on both sides), 86 new connections in 8 s under 32
    # concurrent GET /v1/users/me. The most open at once is the same either way.
    # No pre-ping (a round trip per checkout): after a database restart the first statement on a
    # stale connection fails, SQLAlchemy then drops every connection older than that failure,
    # and that one request answers 503 — usually a readiness probe.
    # hide_parameters: a statement's bound values (password hashes, emails, tokens) stay out of
    # exception messages, so an error log line or traceback never carries them.
    if connect is not None:
        return create_async_engine(
            "postgresql+asyncpg://",
            async_creator=connect,
            pool_size=2 * pool_size,
            max_overflow=0,
            pool_timeout=5,
            hide_parameters=True,
        )
    return create_async_engine(
        sqlalchemy_url(dsn),
        pool_size=2 * pool_size,
        max_overflow=0,
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


_DRIVER_DIALECT = PGDialect_asyncpg()
# A row `Database.fetch_one` returns: its columns by name (`row["email"]`), as the driver gives them.
Row = asyncpg.Record


class Query:
    """A Core SELECT compiled once into the driver's SQL, for `Database.fetch_one`.

    Values are given by the names of the statement's `bindparam`s (literal values in the
    statement are bound as compiled) and reach asyncpg as they are: use types its codecs take
    (UUID, str, int, datetime, ...), not those needing a SQLAlchemy type's conversion.
    """

    def __init__(self, statement: Select[*tuple[Any, ...]]) -> None:
        compiled = statement.compile(dialect=_DRIVER_DIALECT)
        self.sql = compiled.string
        self._names = tuple(compiled.positiontup or ())
        self._literals = {name: bind.value for name, bind in compiled.binds.items() if not bind.required}

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        params = {**self._literals, **values} if values else self._literals
        try:
            return [params[name] for name in self._names]
        except KeyError as exc:
            raise TypeError(f"no value for the parameter {exc.args[0]} of: {self.sql}") from None


@dataclass(frozen=True, slots=True)
class Database:
    """A process's PostgreSQL: the engine, write sessions, read sessions, the schema it expects."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    readers: async_sessionmaker[ReadSession]
    expected_revision: str | None

    async def fetch_one(self, query: Query, **values: Any) -> Row | None:
        """The first row of `query`, or None: one round trip, autocommit.

        The connection comes from the engine's pool (its size, its credentials) and goes back to it
        with no transaction open, as a ReadSession's does. Not for tenant-scoped tables: no tenant
        scope (kit.tenancy) applies here, so row-level security would show such a read nothing
        (or, connected as an owner, every tenant's rows).
        """
        args = query.arguments(values)
        with tracing.statement_span(query.sql):
            return await greenlet_spawn(_fetch_one, self.engine.sync_engine, query.sql, args)

    async def schema_problem(self) -> str | None:
        """None when the applied migration is the one this code expects."""
        revision = await applied_revision(self.engine)
        if revision != self.expected_revision:
            return (
                f"schema at {revision or 'nothing'}, expected {self.expected_revision} (run `prog migrate`)"
            )
        return None


def _fetch_one(engine: Engine, statement: str, args: list[Any]) -> Row | None:
    """Database.fetch_one's work, in a greenlet: checking a connection out may connect or wait for
    one, which awaits as the pool does everywhere (SQLAlchemy's own statements run the same way)."""
    dialect = engine.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        proxied = engine.pool.connect()
    except dbapi_error as exc:  # PostgreSQL unreachable, login refused, ...: as Engine.connect() raises it
        raise DBAPIError.instance(
            statement, None, exc, dbapi_error, hide_parameters=True, dialect=dialect
        ) from exc
    try:
        driver = cast("asyncpg.Connection[Row]", proxied.driver_connection)  # a checked-out one's
        return await_(driver.fetchrow(statement, *args))
    except Exception as exc:
        raise _translated(engine, proxied, statement, exc) from exc
    except BaseException:
        # Cancelled mid-statement: the driver may still expect the server's answer, so this
        # connection serves nobody else; the pool opens another in its place.
        proxied.invalidate()
        raise
    finally:
        proxied.close()  # back to the pool


def _translated(engine: Engine, proxied: Any, statement: str, error: Exception) -> Exception:
    """The driver's `error` as SQLAlchemy raises it for any statement (DBAPIError and its kinds,
    which kit.problems answers), and a connection found lost invalidated with every connection
    opened before it, as a Connection does: the next checkouts reconnect instead of failing too."""
    dialect = engine.dialect
    dbapi_connection = proxied.dbapi_connection
    try:
        # The adapter's own translation, the one its cursors apply (asyncpg's error → DB-API's).
        dbapi_connection._handle_exception(error)
    except dialect.loaded_dbapi.Error as dbapi_error:
        lost = dialect.is_disconnect(dbapi_error, dbapi_connection, None)
        if lost:
            engine.pool._invalidate(proxied, dbapi_error)  # what a Connection does on a disconnect
        return DBAPIError.instance(
            statement,
            None,
            dbapi_error,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            dialect=dialect,
            connection_invalidated=lost,
        )
    except Exception as other:  # not the driver's: as it is
        return other
    return error


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
