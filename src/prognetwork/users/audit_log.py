"""The audit log from the user service's side: it holds the key checkpoints are signed with.

The service's background job signs a checkpoint every `AUDIT_CHECKPOINT_RECORDS` records or
`AUDIT_CHECKPOINT_SECONDS` (kit/audit.py says what that proves); `prog audit verify | export |
purge` run the functions below over short-lived connections of their own. Verification uses the
public halves of every key in `JWT_SIGNING_KEYS` — the keys the JWKS publishes — so checkpoints
signed before a rotation verify while the old key is still listed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import structlog
from prometheus_client import Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.kit import audit, db, retry
from prognetwork.kit.app import Lifecycle
from prognetwork.users.keys import KeyRing
from prognetwork.users.runtime import Runtime
from prognetwork.users.settings import UsersSettings

log = structlog.get_logger("prognetwork.users.audit")
# How often the job looks whether a checkpoint is due (the records criterion needs a look).
CHECKPOINT_POLL_SECONDS = 15.0
CHECKPOINT_RETRY_CAP_SECONDS = 120.0
CHAIN_BROKEN = Gauge(
    "audit_chain_broken",
    "1 while the audit log's records since its newest checkpoint do not chain (nothing is signed then).",
)


def signer_of(keys: KeyRing) -> audit.Signer:
    key = keys.signing_key()
    return audit.Signer(key.kid, key.private)


async def sign_checkpoints(runtime: Runtime, lifecycle: Lifecycle) -> None:
    """Background job: a signed checkpoint whenever one is due. Every replica runs it; they
    take turns under an advisory lock, so one checkpoint is written per round."""
    settings = runtime.settings

    async def step() -> None:
        async with runtime.database.sessions() as session:
            try:
                made = await audit.checkpoint(
                    session,
                    signer_of(runtime.accounts.keys),
                    every_records=settings.audit_checkpoint_records,
                    every_seconds=settings.audit_checkpoint_seconds,
                )
            except audit.ChainBroken as exc:
                # Tampering, or a bug: someone must look (`prog audit verify`). Checked again next round.
                CHAIN_BROKEN.set(1)
                log.error(
                    "audit log broken; no checkpoint signed", seq=exc.broken.seq, reason=exc.broken.reason
                )
                return
        if made is not None:
            CHAIN_BROKEN.set(0)

    poll = min(CHECKPOINT_POLL_SECONDS, settings.audit_checkpoint_seconds)
    backoff = retry.Backoff("users.audit_checkpoint", base=1.0, cap=CHECKPOINT_RETRY_CAP_SECONDS)
    await retry.run_forever(backoff, step, lifecycle.stop, idle=poll)


@asynccontextmanager
async def _session(settings: UsersSettings) -> AsyncIterator[AsyncSession]:
    engine = db.create_engine(settings.database_dsn, pool_size=1)
    try:
        async with db.sessionmaker(engine)() as session:
            yield session
    finally:
        await engine.dispose()


async def verify(settings: UsersSettings) -> audit.Verdict:
    """`prog audit verify`: the whole chain, checkpoints checked with the service's public keys."""
    keys = KeyRing(settings).public_keys()
    async with _session(settings) as session:
        return await audit.verify(session, keys=keys)


async def export(
    settings: UsersSettings, write: Callable[[audit.AuditRecord], None], since: datetime | None
) -> int:
    """`prog audit export`: every record (since a time), oldest first, to `write`; how many."""
    count = 0
    async with _session(settings) as session, session.begin():
        # One snapshot: a purge or appends meanwhile cannot tear the export.
        await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        async for record in audit.export(session, since=since):
            write(record)
            count += 1
    return count


async def purge(settings: UsersSettings, before: datetime) -> audit.Purged | None:
    """`prog audit purge`: records older than `before` go; the chain stays verifiable."""
    signer = signer_of(KeyRing(settings))
    async with _session(settings) as session:
        return await audit.purge(session, before=before, signer=signer, actor=audit.cli_actor())


def retention_cutoff(settings: UsersSettings, now: datetime) -> datetime | None:
    """Where `AUDIT_RETENTION_DAYS` puts the purge, if it is set."""
    days = settings.audit_retention_days
    return now - timedelta(days=days) if days else None
