"""The audit log in tests: reading its rows, writing a few, tampering with them as someone with
direct PostgreSQL access would, and running `prog audit …`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from prognetwork.kit import audit

TESTER = audit.Actor(uuid.uuid4(), "tester@example.com", "admin")


async def records(db, action: str | None = None, **columns: object) -> list[dict]:
    """Rows of `audit_log` (asyncpg connection), oldest first, with this action and column values."""
    wanted = {**({"action": action} if action else {}), **columns}
    clauses, values = [], []
    for name, value in wanted.items():
        values.append(value)
        clauses.append(f"{name} = ${len(values)}")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = await db.fetch(f"SELECT * FROM audit_log {where} ORDER BY seq", *values)
    return [{**row, "details": json.loads(row["details"])} for row in rows]


async def append(sessions: async_sessionmaker[AsyncSession], count: int, action: str = "test.changed") -> list[int]:
    """`count` records, each in a transaction of its own; their sequence numbers."""
    for n in range(count):
        async with sessions() as session, session.begin():
            await audit.record(session, action, actor=TESTER, target_type="thing", target_id=str(n),
                               details={"n": n, "note": "written by a test"})
    async with sessions() as session:
        newest = (await session.execute(text("SELECT max(seq) FROM audit_log"))).scalar_one()
    return list(range(newest - count + 1, newest + 1))


@asynccontextmanager
async def tampering(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that goes past the append-only trigger (as a superuser can) and is rolled back
    at the end: verify it from inside (`audit.verify(conn)`) to see what the tampering left."""
    async with engine.connect() as conn:
        transaction = await conn.begin()
        try:
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
            yield conn
        finally:
            if transaction.is_active:  # a session bound to `conn` may have rolled it back already
                await transaction.rollback()


async def rehash_from(conn: AsyncConnection, seq: int) -> None:
    """Recompute every hash from `seq` on, as someone who knows the algorithm would after a change."""
    table = audit.audit_log
    rows = (await conn.execute(select(table).where(table.c.seq >= seq).order_by(table.c.seq))).mappings().all()
    previous = (await conn.execute(select(table.c.hash).where(table.c.seq == seq - 1))).scalar()
    for row in rows:
        values = {**row, "prev_hash": previous or audit.GENESIS}
        values["hash"] = audit.record_hash(values)
        await conn.execute(text("UPDATE audit_log SET prev_hash = :p, hash = :h WHERE seq = :s"),
                           {"p": values["prev_hash"], "h": values["hash"], "s": row["seq"]})
        previous = values["hash"]


def run_prog(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`prog …` as an operator runs it, in a process of its own with this environment."""
    return subprocess.run([sys.executable, "-m", "prognetwork", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
