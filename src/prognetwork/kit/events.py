"""The event log: an append-only table of domain events, and durable consumers of it.

Writers call `append()` inside the transaction that makes the change, so an event exists
if and only if its change committed (transactional outbox). An append takes no lock: it inserts
the event into `event_pending`, in the writer's transaction, without a sequence number. The
**sequencer** gives events their `seq`: one short transaction at a time (`sequence()`: one call
of the database function `prognetwork_sequence_events`, migration 0011), under
`SEQUENCER_LOCK_KEY`, a transaction-level advisory lock, it moves the committed pending events
into `events` in the order they were inserted (`entry`) and notifies listeners once. Steps take
turns under that lock, and each one's move is a statement whose snapshot is taken after the lock
was granted, so it sees every event committed before: sequence numbers become visible in order,
a reader that has seen N can never later see a smaller one, and "seq > the last I handled" never
skips an event. An event whose writer commits late is sequenced later, never skipped. Writers
commit concurrently (group commit); only the steps are serialised, and each moves a batch.

Who sequences:
- every service process with a database runs a `Sequencer` (kit.app starts it): woken after a
  commit that appended, and polling `event_pending` about once a second, so the events of a
  writer that died after its commit, or of a process that runs none (a CLI, a job), are
  sequenced by someone;
- the commit of a session that appended waits (at most `SETTLE_SECONDS`) until a step that
  began after it has finished: the process's sequencer's, or one it runs itself where none runs.
  So once `async with session.begin():` has returned, its events are in `events` — a response
  acknowledging a change is sent after its events are readable, as before;
- the streaming tailer and every `Consumer` run a step before reading whenever events are
  pending, so neither waits for another process to sequence what it is about to read.

An appended `Event` has no `seq` yet (None); `sequenced()` gives it once the event is in the log.

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
    Engine,
    Identity,
    Index,
    SmallInteger,
    String,
    Table,
    Uuid,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.util import await_
from sqlalchemy.util.concurrency import in_greenlet

from prognetwork.kit import retry, tracing
from prognetwork.kit.db import Base

CHANNEL = "prog_events"
# The logs' lock: audit records (kit.audit) hold it until commit, and so does each sequencer step.
# Event appends no longer take it; writers of the release before the sequencer did, drawing seq
# under it, so while both releases run (a rolling deploy) steps and those appends still take turns
# and sequence numbers stay visible in order. A step waits at most for one audited commit.
APPEND_LOCK_KEY = 0x70726F67
SEQUENCER_LOCK_KEY = APPEND_LOCK_KEY
# Events one step moves at most: one short transaction even after a backlog.
SEQUENCE_BATCH = 1000
SEQUENCER_POLL_SECONDS = 1.0
# How long a commit waits for its events to be sequenced before it returns anyway (they are
# committed and pending: the next step of any process sequences them).
SETTLE_SECONDS = 5.0
PING_SECONDS = 5.0
LISTEN_RETRY_CAP_SECONDS = 2.0
RETRY_CAP_SECONDS = 5.0
log = structlog.get_logger("prognetwork.events")


def _event_columns() -> list[Column[Any]]:
    """What an event is, in the log and while pending (a Column belongs to one table: new each time)."""
    return [
        Column("type", String(200), nullable=False),
        Column("tenant_id", Uuid, nullable=True),
        Column("user_id", Uuid, nullable=True),
        # Private events (one-time tokens, internal commands) are for internal consumers only.
        Column("private", Boolean, nullable=False, server_default="false"),
        Column("payload", JSONB, nullable=False),
        Column("trace_context", String(200), nullable=True),
        Column("occurred_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


events = Table(
    "events",
    Base.metadata,
    Column("seq", BigInteger, Identity(always=True), primary_key=True),
    Column("id", Uuid, nullable=False, unique=True),
    *_event_columns(),
    Index("ix_events_type_seq", "type", "seq"),
    Index("ix_events_user_id_seq", "user_id", "seq"),
    Index("ix_events_tenant_id_seq", "tenant_id", "seq"),
    Index("ix_events_occurred_at", "occurred_at", postgresql_using="brin"),
)

# Committed events waiting for the sequencer: every column of `events` but `seq`, and `entry`,
# the order they were inserted in (within one transaction, the order of its appends).
event_pending = Table(
    "event_pending",
    Base.metadata,
    Column("entry", BigInteger, Identity(always=True), primary_key=True),
    Column("id", Uuid, nullable=False),
    *_event_columns(),
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
EVENTS_SEQUENCED = Counter("events_sequenced", "Pending events the sequencer moved into the log.")
EVENTS_CONSUMED = Counter("events_consumed", "Events handled by a durable consumer.", ("consumer", "type"))
CONSUMER_POSITION = Gauge("event_consumer_position", "Last sequence a consumer handled.", ("consumer",))
# The log's newest sequence as a consumer last read it (with each batch, before handling it), so
# lag = head - position is measurable even while a handler keeps failing.
EVENT_LOG_HEAD = Gauge("event_log_head_sequence", "Newest event sequence seen by a consumer.", ("consumer",))
CONSUMER_FAILURES = Counter("event_consumer_failures", "Batches a consumer had to retry.", ("consumer",))


@dataclass(frozen=True, slots=True)
class Event:
    seq: int | None  # None until sequenced: an event just appended has none yet
    id: uuid.UUID
    type: str
    payload: dict[str, Any]
    user_id: uuid.UUID | None = None
    tenant_id: uuid.UUID | None = None
    private: bool = False
    trace_context: str | None = None
    occurred_at: datetime | None = None

    @property
    def position(self) -> int:
        """Its sequence number, for an event read from the log (a consumer's), which has one."""
        if self.seq is None:
            raise ValueError(f"event {self.id} is not sequenced yet")
        return self.seq


# session.info keys: the transaction appended (set by `append`), and it committed.
_APPENDED = "prognetwork.events.appended"
_COMMITTED = "prognetwork.events.committed"


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
    """Append an event in the caller's transaction. It is sequenced after the commit: its `seq`
    is None here (`sequenced()` reads it), and its commit returns once it is in the log."""
    event_id = uuid.uuid4()
    if trace_context is None:
        trace_context = tracing.current_traceparent()  # consumers continue this request's trace
    occurred_at = (
        await session.execute(
            insert(event_pending)
            .values(
                id=event_id,
                type=type,
                payload=payload,
                user_id=user_id,
                tenant_id=tenant_id,
                private=private,
                trace_context=trace_context,
            )
            .returning(event_pending.c.occurred_at)
        )
    ).scalar_one()
    session.info[_APPENDED] = True
    EVENTS_APPENDED.labels(type).inc()
    return Event(
        seq=None,
        id=event_id,
        type=type,
        payload=payload,
        user_id=user_id,
        tenant_id=tenant_id,
        private=private,
        trace_context=trace_context,
        occurred_at=occurred_at,
    )


# -- sequencing ------------------------------------------------------------------------------

# One step is one call of this function (migration 0011), in a transaction of its own: if events
# are pending, it takes SEQUENCER_LOCK_KEY, then — in a statement of its own, whose snapshot is
# taken after the lock was granted and so sees every event committed before — moves the oldest
# `batch` of them into `events` in `entry` order, drawing their seq as the sorted rows come, and
# notifies listeners once with the newest seq. It returns how many it moved.
_STEP = f"SELECT prognetwork_sequence_events({SEQUENCE_BATCH})"

Sequenceable = asyncpg.Connection | AsyncEngine | AsyncSession | async_sessionmaker[AsyncSession]


async def sequence(db: Sequenceable) -> int:
    """One sequencer step; how many events it moved (at most SEQUENCE_BATCH: when that many, more
    may be waiting). `db` is an asyncpg connection (one round trip, in a transaction of its own:
    not inside one of the caller's), an engine, a session not in a transaction, or a
    sessionmaker. With nothing pending, a step takes no lock."""
    if isinstance(db, asyncpg.Connection):
        moved = await db.fetchval(_STEP)
    elif isinstance(db, AsyncEngine):
        async with db.begin() as conn:
            moved = (await conn.execute(text(_STEP))).scalar_one()
    elif isinstance(db, AsyncSession):
        async with db.begin():
            moved = (await db.execute(text(_STEP))).scalar_one()
    else:
        async with db() as session, session.begin():
            moved = (await session.execute(text(_STEP))).scalar_one()
    if moved:
        EVENTS_SEQUENCED.inc(moved)
    return int(moved)


async def sequence_all(db: Sequenceable) -> int:
    """Steps until one moves less than a full batch: everything committed before is in the log."""
    total = moved = await sequence(db)
    while moved == SEQUENCE_BATCH:
        moved = await sequence(db)
        total += moved
    return total


async def sequence_before_reading(db: Sequenceable) -> None:
    """`sequence_all` for a reader about to read the log: a failing step is logged, not raised.
    What is already in the log stays readable (the order guarantee does not depend on this step);
    a lost connection fails the read that follows anyway."""
    try:
        await sequence_all(db)
    except Exception as exc:  # noqa: BLE001
        log.warning(
            "sequencer step failed before a read", error_type=type(exc).__name__, error=str(exc)[:300]
        )


async def sequenced(db: AsyncSession | async_sessionmaker[AsyncSession], event_id: uuid.UUID) -> int:
    """The seq of the committed event `event_id`, sequencing it first if it is still pending."""
    while True:
        seq = await _seq_of(db, event_id)
        if seq is not None:
            return seq
        if await sequence(db) < SEQUENCE_BATCH and (seq := await _seq_of(db, event_id)) is not None:
            return seq
        if not await _is_pending(db, event_id):
            # Another process's step may have moved it between our reads: look once more.
            if (seq := await _seq_of(db, event_id)) is not None:
                return seq
            raise LookupError(f"event {event_id} is neither in the log nor pending (never committed?)")


async def _seq_of(db: AsyncSession | async_sessionmaker[AsyncSession], event_id: uuid.UUID) -> int | None:
    query = select(events.c.seq).where(events.c.id == event_id)
    if isinstance(db, AsyncSession):
        async with db.begin():
            return (await db.execute(query)).scalar()
    async with db() as session:
        return (await session.execute(query)).scalar()


async def _is_pending(db: AsyncSession | async_sessionmaker[AsyncSession], event_id: uuid.UUID) -> bool:
    query = select(select(event_pending.c.entry).where(event_pending.c.id == event_id).exists())
    if isinstance(db, AsyncSession):
        async with db.begin():
            return bool((await db.execute(query)).scalar())
    async with db() as session:
        return bool((await session.execute(query)).scalar())


def _sequence_in_commit(conn: Connection) -> None:
    """`sequence_all` for the commit hook, which runs synchronously (inside SQLAlchemy's greenlet).
    The lock wait is bounded: a step waits for an audited transaction holding the logs' lock, and
    if this very task holds one open elsewhere, it would wait for itself."""
    while True:
        with conn.begin():
            conn.execute(text(f"SET LOCAL lock_timeout = '{int(SETTLE_SECONDS * 1000)}ms'"))
            moved = int(conn.execute(text(_STEP)).scalar_one())
        if moved:
            EVENTS_SEQUENCED.inc(moved)
        if moved < SEQUENCE_BATCH:
            return


class Sequencer:
    """A process's sequencer: steps back to back when woken (a commit that appended) while they
    move full batches, and otherwise looks for pending events every `poll_seconds`.

    It keeps one connection of its own (not the pool's: a step never waits behind requests for a
    connection). Commits that appended through `engine` wait for it (`settled`) rather than
    stepping themselves: the steps of a busy process batch every commit since the last one.
    """

    def __init__(
        self,
        dsn: Dsn,
        engine: AsyncEngine | None = None,
        *,
        poll_seconds: float = SEQUENCER_POLL_SECONDS,
        name: str = "events.sequencer",
    ) -> None:
        self.dsn = dsn
        self.engine = engine
        self.poll_seconds = poll_seconds
        self.name = name
        self.wake = asyncio.Event()
        self.batches = 0  # rounds of steps that moved events, for tests and the benchmark
        self._waiters: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        if self.engine is not None:
            _running[self.engine.sync_engine] = self
        backoff = retry.Backoff(self.name, cap=RETRY_CAP_SECONDS)
        try:
            while not stop.is_set():
                try:
                    await self._serve(stop, backoff)
                except Exception as exc:  # noqa: BLE001  (PostgreSQL down, or the secret store: any)
                    # A commit that appended (it wakes us) is a sign PostgreSQL is back: try at once.
                    await backoff.wait(exc, stop, self.wake)
        finally:
            if self.engine is not None and _running.get(self.engine.sync_engine) is self:
                del _running[self.engine.sync_engine]
            self._release(self._waiters)  # they return; their events stay pending for the next step

    async def settled(self, timeout: float = SETTLE_SECONDS) -> bool:
        """Wait until a step that began after this call has finished (so every event committed
        before the call is sequenced); False if that took longer than `timeout`."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            return False
        return True

    async def _serve(self, stop: asyncio.Event, backoff: retry.Backoff) -> None:
        conn = await connect(self.dsn, "prognetwork-event-sequencer")
        try:
            while not stop.is_set():
                self.wake.clear()
                waiting, self._waiters = self._waiters, []
                try:
                    # Steps that begin now: they see the waiters' commits. A step that finds
                    # nothing pending returns at once: their events were sequenced already (by
                    # another process, whose step has committed).
                    moved = await sequence_all(conn)
                except BaseException:
                    self._waiters[:0] = waiting  # still owed a step: the retry's
                    raise
                self.batches += bool(moved)
                backoff.reset()
                self._release(waiting)
                if not self.wake.is_set():
                    await retry.pause(self.poll_seconds, stop, self.wake)
        finally:
            conn.terminate()

    @staticmethod
    def _release(waiters: list[asyncio.Future[None]]) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


# The running sequencer of each engine in this process (kit.app starts one per service process).
_running: dict[Engine, Sequencer] = {}


@event.listens_for(Session, "after_commit")
def _note_commit(session: Session) -> None:
    if not session.in_nested_transaction() and session.info.pop(_APPENDED, False):
        session.info[_COMMITTED] = True


@event.listens_for(Session, "after_transaction_end")
def _settle_commit(session: Session, transaction: SessionTransaction) -> None:
    """After a commit that appended (its connection already back in the pool): wait until its
    events are sequenced — by this process's sequencer, or by a step run here where none runs."""
    if transaction.parent is not None:
        return
    session.info.pop(_APPENDED, None)  # a rollback's appends are gone with it
    if not session.info.pop(_COMMITTED, False):
        return
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    sequencer = _running.get(engine)
    if not in_greenlet():  # a synchronous session (none appends today): nudge, cannot wait
        if sequencer is not None and sequencer._loop is not None:
            sequencer._loop.call_soon_threadsafe(sequencer.wake.set)
        return
    try:
        if sequencer is not None:
            if not await_(sequencer.settled()):
                log.warning("events committed but not sequenced yet", waited_seconds=SETTLE_SECONDS)
        else:
            with engine.connect() as conn:
                _sequence_in_commit(conn)
    except Exception as exc:  # the commit stands; the fallback poll sequences its events
        log.warning(
            "events committed but not sequenced yet", error_type=type(exc).__name__, error=str(exc)[:300]
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
        # What is committed but still pending is sequenced first, so the batch reads it whether
        # or not a sequencer runs somewhere (a test, a job, one whose process just died).
        await sequence_before_reading(self.sessions)
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
