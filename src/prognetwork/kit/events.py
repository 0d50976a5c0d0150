"""The event log: an append-only table of domain events, and durable consumers of it.

Writers call `append()` inside the transaction that makes the change, so an event exists
if and only if its change committed (transactional outbox). Appends take a transaction-level
advisory lock before drawing their sequence number, so sequence numbers become visible in
order: a reader that has seen N can never later see a smaller one. Readers may therefore
resume from "the last sequence I handled" without gaps.

A `Consumer` keeps its position in `consumer_cursors` and advances it in the same
transaction as its handler's writes: at-least-once for side effects outside PostgreSQL,
exactly-once for effects inside it. Handlers must be idempotent by event id.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from prometheus_client import Counter, Gauge
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Identity,
    Index,
    SmallInteger,
    String,
    Table,
    Uuid,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prognetwork.kit import retry, tracing
from prognetwork.kit.db import Base

CHANNEL = "prog_events"
APPEND_LOCK_KEY = 0x70726F67  # any constant shared by every writer
PING_SECONDS = 5.0
LISTEN_RETRY_CAP_SECONDS = 2.0
RETRY_CAP_SECONDS = 5.0
log = structlog.get_logger("prognetwork.events")

events = Table(
    "events",
    Base.metadata,
    Column("seq", BigInteger, Identity(always=True), primary_key=True),
    Column("id", Uuid, nullable=False, unique=True),
    Column("type", String(200), nullable=False),
    Column("tenant_id", Uuid, nullable=True),
    Column("user_id", Uuid, nullable=True),
    # Private events (one-time tokens, internal commands) are for internal consumers only.
    Column("private", Boolean, nullable=False, server_default="false"),
    Column("payload", JSONB, nullable=False),
    Column("trace_context", String(200), nullable=True),
    Column("occurred_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_events_type_seq", "type", "seq"),
    Index("ix_events_user_id_seq", "user_id", "seq"),
    Index("ix_events_tenant_id_seq", "tenant_id", "seq"),
    Index("ix_events_occurred_at", "occurred_at", postgresql_using="brin"),
)

consumer_cursors = Table(
    "consumer_cursors",
    Base.metadata,
    Column("name", String(200), primary_key=True),
    Column("position", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Retention (jobs/retention.py) removes the oldest events, archived first; this row says how far.
# Every event up to `through_seq` is gone: a reader resuming from before it has missed some.
event_retention = Table(
    "event_retention",
    Base.metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False, server_default="1"),
    Column("through_seq", BigInteger, nullable=False, server_default="0"),
    Column("through_occurred_at", DateTime(timezone=True), nullable=True),
    Column("removed", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
# The transaction-local setting under which the append-only trigger lets DELETE remove events
# up to the sequence it holds (migration 0010); only the retention job sets it.
RETENTION_SETTING = "prognetwork.event_retention_through"

EVENTS_APPENDED = Counter("events_appended", "Events appended to the event log.", ("type",))
EVENTS_CONSUMED = Counter("events_consumed", "Events handled by a durable consumer.", ("consumer", "type"))
CONSUMER_POSITION = Gauge("event_consumer_position", "Last sequence a consumer handled.", ("consumer",))
# The log's newest sequence as a consumer last read it (with each batch, before handling it), so
# lag = head - position is measurable even while a handler keeps failing.
EVENT_LOG_HEAD = Gauge("event_log_head_sequence", "Newest event sequence seen by a consumer.", ("consumer",))
CONSUMER_FAILURES = Counter("event_consumer_failures", "Batches a consumer had to retry.", ("consumer",))


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    id: uuid.UUID
    type: str
    payload: dict[str, Any]
    user_id: uuid.UUID | None = None
    tenant_id: uuid.UUID | None = None
    private: bool = False
    trace_context: str | None = None
    occurred_at: datetime | None = None


async def append(
    session: AsyncSession,
    type: str,
    payload: dict[str, Any],
    *,
    user_id: uuid.UUID | None = None,
    tenant_id: uuid.UUID | None = None,
    private: bool = False,
    trace_context: str | None = None,
) -> Event:
    """Append an event in the caller's transaction; call it last, just before commit."""
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK_KEY})
    event_id = uuid.uuid4()
    if trace_context is None:
        trace_context = tracing.current_traceparent()  # consumers continue this request's trace
    row = (
        await session.execute(
            insert(events)
            .values(
                id=event_id,
                type=type,
                payload=payload,
                user_id=user_id,
                tenant_id=tenant_id,
                private=private,
                trace_context=trace_context,
            )
            .returning(events.c.seq, events.c.occurred_at)
        )
    ).one()
    # Delivered at commit, and only if the transaction commits.
    await session.execute(text("SELECT pg_notify(:channel, :seq)"), {"channel": CHANNEL, "seq": str(row.seq)})
    EVENTS_APPENDED.labels(type).inc()
    return Event(
        seq=row.seq,
        id=event_id,
        type=type,
        payload=payload,
        user_id=user_id,
        tenant_id=tenant_id,
        private=private,
        trace_context=trace_context,
        occurred_at=row.occurred_at,
    )


async def retained_through(session: AsyncSession) -> int:
    """The last sequence retention removed (0: none); events after it are all still here."""
    return (await session.execute(select(event_retention.c.through_seq))).scalar() or 0


Handler = Callable[[AsyncSession, Event], Awaitable[None]]

_FETCH = """
SELECT seq, id, type, tenant_id, user_id, private, payload, trace_context, occurred_at,
       (SELECT coalesce(max(seq), 0) FROM events) AS head
FROM events
WHERE seq > :position {type_filter}
ORDER BY seq
LIMIT :limit
"""


class Consumer:
    """Feeds every event after its cursor to `handler`, in order, surviving crashes and restarts.

    Several replicas may run the same consumer: the cursor row is locked with SKIP LOCKED, so
    one replica works while the others wait to take over. A failed batch is rolled back and
    retried with backoff (`kit.retry`); the retry comes early when the listener reconnects.
    """

    def __init__(
        self,
        name: str,
        sessions: async_sessionmaker[AsyncSession],
        dsn: Dsn,
        handler: Handler,
        *,
        types: frozenset[str] | None = None,
        batch_size: int = 100,
        poll_seconds: float = 5.0,
        after_commit: Callable[[], None] | None = None,
        backoff: retry.Backoff | None = None,
    ) -> None:
        self.name = name
        self.sessions = sessions
        self.dsn = dsn
        self.handler = handler
        self.types = types
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.after_commit = after_commit
        # Failed batches are retried after 0.2 s doubling up to RETRY_CAP_SECONDS, or at once when
        # the listener reconnects (PostgreSQL is back). The cap bounds recovery when that sign is
        # missed; a retry costs one connection attempt.
        self.backoff = backoff or retry.Backoff(
            f"events.consumer:{name}", cap=RETRY_CAP_SECONDS, traceback=True
        )
        self.wake = asyncio.Event()
        self._fetch = text(_FETCH.format(type_filter="AND type = ANY(:types)" if types else ""))

    async def run(self, stop: asyncio.Event) -> None:
        # Set when the listener connects again after losing PostgreSQL: a batch waiting to retry
        # tries at once instead of sleeping out its delay. NOTIFYs (`wake`) do not cut that wait
        # short: a handler failing on an event would fail again at every event appended.
        reconnected = asyncio.Event()
        listener = asyncio.create_task(
            listen(self.dsn, self.wake, stop, name=f"events.listener:{self.name}", reconnected=reconnected)
        )
        try:
            await retry.run_forever(
                self.backoff, self._batch, stop, idle=self.poll_seconds, wake=self.wake, recovered=reconnected
            )
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    async def _batch(self) -> bool:
        """One step of `run`; True when the batch was full, so more may be waiting."""
        try:
            handled = await self.step()
        except Exception:
            CONSUMER_FAILURES.labels(self.name).inc()
            raise
        if handled and self.after_commit is not None:
            self.after_commit()
        return handled >= self.batch_size

    async def step(self) -> int:
        """Handle one batch in one transaction; returns how many events were handled."""
        async with self.sessions() as session, session.begin():
            await session.execute(
                text("INSERT INTO consumer_cursors (name) VALUES (:name) ON CONFLICT DO NOTHING"),
                {"name": self.name},
            )
            position = (
                await session.execute(
                    text("SELECT position FROM consumer_cursors WHERE name = :name FOR UPDATE SKIP LOCKED"),
                    {"name": self.name},
                )
            ).scalar()
            if position is None:  # another replica holds the cursor
                return 0
            params: dict[str, Any] = {"position": position, "limit": self.batch_size}
            if self.types:
                params["types"] = list(self.types)
            rows = (await session.execute(self._fetch, params)).mappings().all()
            if rows:
                EVENT_LOG_HEAD.labels(self.name).set(rows[0]["head"])
            for row in rows:
                event = Event(**{k: v for k, v in row.items() if k != "head"})
                with tracing.continued(
                    f"handle {event.type}",
                    event.trace_context,
                    **{"messaging.consumer.group.name": self.name, "prognetwork.event.seq": event.seq},
                ):
                    await self.handler(session, event)
                EVENTS_CONSUMED.labels(self.name, event.type).inc()
            if not rows:
                return 0
            # A short batch saw everything up to the head in the same snapshot.
            new_position = rows[-1]["seq"] if len(rows) == self.batch_size else rows[-1]["head"]
            await session.execute(
                text("UPDATE consumer_cursors SET position = :p, updated_at = now() WHERE name = :name"),
                {"p": new_position, "name": self.name},
            )
        CONSUMER_POSITION.labels(self.name).set(new_position)
        return len(rows)


# Where a LISTEN connection (or the stream tailer's) connects: a URL, or a function opening a
# connection — kit.credentials.listener_dsn gives one that reads the URL from the secrets
# provider at each connect, so a listener reconnects after a password rotation.
Dsn = str | Callable[[], Awaitable[asyncpg.Connection]]


async def connect(dsn: Dsn, application_name: str) -> asyncpg.Connection:
    if callable(dsn):
        return await dsn()
    return await asyncpg.connect(
        dsn, timeout=5, command_timeout=30, server_settings={"application_name": application_name}
    )


async def listen(
    dsn: Dsn,
    wake: asyncio.Event,
    stop: asyncio.Event,
    *,
    name: str = "events.listener",
    reconnected: asyncio.Event | None = None,
) -> None:
    """Set `wake` on every NOTIFY, and on connecting (to catch up on what was appended while not
    listening), until `stop`. A lost connection is retried with backoff; `reconnected` is set
    whenever a connection succeeds after a failure, as a sign that PostgreSQL is back."""
    # Short waits: this listener is what notices that PostgreSQL is back and wakes the others.
    backoff = retry.Backoff(name, base=0.5, cap=LISTEN_RETRY_CAP_SECONDS)

    def connected() -> None:
        if backoff.attempt and reconnected is not None:
            reconnected.set()
        backoff.reset()
        wake.set()

    while not stop.is_set():
        try:
            await _listen_until(dsn, wake, stop, connected)
        except Exception as exc:  # refused, lost or timed out: PostgreSQL is down or restarting
            await backoff.wait(exc, stop)


async def _listen_until(
    dsn: Dsn, wake: asyncio.Event, stop: asyncio.Event, connected: Callable[[], None]
) -> None:
    conn = await connect(dsn, "prognetwork-event-listener")
    try:
        await conn.add_listener(CHANNEL, lambda *_: wake.set())
        connected()
        while not await retry.wait_for(stop, PING_SECONDS):
            # Notices a dead connection within seconds; the timeout, one that hangs.
            await conn.execute("SELECT 1", timeout=PING_SECONDS)
    finally:
        conn.terminate()
