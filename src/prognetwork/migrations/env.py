"""Alembic environment: async engine, one migrator at a time, metadata of every service."""

import asyncio
import importlib

from alembic import context
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import prognetwork.jobs.models  # noqa: F401  (registers the batch jobs' tables)
import prognetwork.kit.audit  # noqa: F401  (registers the audit log's tables)
import prognetwork.kit.events  # noqa: F401  (registers the event log's tables)
from prognetwork.kit.db import Base, sqlalchemy_url
from prognetwork.kit.settings import Settings
from prognetwork.registry import services

for spec in services().values():  # every service's tables, as its spec names them
    for module in spec.models:
        importlib.import_module(module)

MIGRATION_LOCK_KEY = 0x6D696772  # several replicas may start at once; one migrates

config = context.config
target_metadata = Base.metadata


def run_sync(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_online() -> None:
    dsn = config.attributes.get("dsn") or Settings().database_dsn
    # Data migrations bind real values; keep them out of error messages and logs.
    engine = create_async_engine(sqlalchemy_url(dsn), hide_parameters=True)
    async with engine.connect() as connection:
        await connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        await connection.commit()
        try:
            await connection.run_sync(run_sync)
            await connection.commit()
        finally:
            await connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
            await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `prog migrate` against a database")
asyncio.run(run_online())
