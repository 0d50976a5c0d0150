"""The streaming service's SQL: every statement it runs on `events` and `event_publications`.

Invariants:
- Private events are never served. `NEVER_PRIVATE` is that rule, one expression, and every
  statement that reads events for a client is built by `_served`, which always applies it: the
  tailer's `TAIL`, replay's and polling's `visible`, publish's read-back in `event_json`. A
  viewer's own condition (visibility.Viewer.condition) only narrows what is left.
- The JSON a client sees for an event (`EVENT_JSON`) is rendered by PostgreSQL in the query that
  reads the event, so the service forwards it as it is, never parsed and re-encoded.
- Every value is a bind parameter; the only SQL written out as text here is constants (the key
  names in `EVENT_JSON`, the 0 in `HEAD`).

The tailer keeps one asyncpg connection of its own (no pool, no SQLAlchemy session), so its
statements are compiled once, at import, for asyncpg: `TAIL` and `HEAD` are SQL text with
positional parameters.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Double,
    Integer,
    Label,
    RowMapping,
    Select,
    String,
    Text,
    any_,
    bindparam,
    cast,
    extract,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from prognetwork.kit.events import events
from prognetwork.streaming.models import event_publications
from prognetwork.streaming.visibility import Viewer

# What every row served to a client must satisfy, whoever the client is.
NEVER_PRIVATE: ColumnElement[bool] = events.c.private.is_(False)


def _json_of(*names: str) -> ColumnElement[str]:
    """A JSON object of these columns of `events`, each under its own name, as text."""
    parts: list[ColumnElement[Any]] = []
    for name in names:
        # The keys are SQL literals, not parameters: fixed names, and one statement text for all.
        parts += (literal_column(f"'{name}'"), events.c[name])
    return cast(func.jsonb_build_object(*parts), Text)


# An event as every client sees it.
EVENT_JSON: Label[str] = _json_of(
    "id", "seq", "type", "user_id", "tenant_id", "payload", "occurred_at"
).label("data")
# What the hub needs of an event (hub.Frame): what to route it by, when it occurred, its JSON.
EVENT_COLUMNS = (
    events.c.seq,
    events.c.type,
    events.c.user_id,
    events.c.tenant_id,
    cast(extract("epoch", events.c.occurred_at), Double).label("at"),
    EVENT_JSON,
)


def _served(*columns: ColumnElement[Any]) -> Select[Any]:
    """A SELECT of events that go to a client: every such statement starts here."""
    return select(*columns).where(NEVER_PRIVATE)


def for_asyncpg(statement: ClauseElement, *parameters: str) -> str:
    """`statement` as the SQL text asyncpg takes, its values `$1`, `$2`… in the order named."""
    compiled = statement.compile(dialect=asyncpg_dialect())
    order = tuple(compiled.positiontup or ()) if isinstance(compiled, SQLCompiler) else None
    if order != parameters:
        raise RuntimeError(f"the statement's parameters are {order}, not {parameters}")
    return str(compiled)


# The tailer: the events after `$1`, at most `$2` of them, oldest first.
TAIL = for_asyncpg(
    _served(*EVENT_COLUMNS)
    .where(events.c.seq > bindparam("after", type_=BigInteger))
    .order_by(events.c.seq)
    .limit(bindparam("limit", type_=Integer)),
    "after",
    "limit",
)
# Where the log ends now (0 when empty): where a tailer that owes nobody anything starts.
HEAD = for_asyncpg(select(func.coalesce(func.max(events.c.seq), literal_column("0"))))


def visible(viewer: Viewer, types: frozenset[str] | None, after: int, limit: int) -> Select[Any]:
    """The events after `after` that `viewer` may see (only of `types`, if given), oldest first."""
    query = _served(*EVENT_COLUMNS).where(events.c.seq > after, viewer.condition())
    if types is not None:
        # One array parameter, not IN (…): the statement's text is the same for any set of types.
        query = query.where(events.c.type == any_(bindparam("types", sorted(types), type_=ARRAY(String))))
    return query.order_by(events.c.seq).limit(limit)


async def visible_events(
    db: AsyncSession, viewer: Viewer, types: frozenset[str] | None, after: int, limit: int
) -> list[RowMapping]:
    return list((await db.execute(visible(viewer, types, after, limit))).mappings().all())


def event_by_id(event_id: uuid.UUID) -> Select[Any]:
    return _served(EVENT_JSON).where(events.c.id == event_id)


async def event_json(db: AsyncSession, event_id: uuid.UUID) -> str | None:
    """The JSON clients see for the event `event_id`; None while it is not sequenced (the JSON
    carries its seq), or if it is private."""
    return (await db.execute(event_by_id(event_id))).scalar_one_or_none()


# -- publications: which publish requests were already stored -----------------------------


def _publication(producer: str, key: str) -> ColumnElement[bool]:
    return (event_publications.c.producer == producer) & (event_publications.c.idempotency_key == key)


async def claim_publication(db: AsyncSession, producer: str, key: str, request_hash: str) -> bool:
    """Claim `key` for this request; False when an earlier one holds it. While that earlier one
    has not committed, this waits for it (the primary key's lock)."""
    claimed = await db.execute(
        insert(event_publications)
        .values(producer=producer, idempotency_key=key, request_hash=request_hash)
        .on_conflict_do_nothing()
        .returning(event_publications.c.producer)
    )
    return claimed.first() is not None


async def earlier_publication(db: AsyncSession, producer: str, key: str) -> tuple[str, uuid.UUID]:
    """The request hash and event id stored under `key` by an earlier request.

    `event_id` is NULL only inside the claiming transaction, which records it before it commits
    (publish.publish); a claim another request can see always has its event — by id, or by
    `event_seq` where the release before migration 0011 recorded it.
    """
    by_seq = select(events.c.id).where(events.c.seq == event_publications.c.event_seq).scalar_subquery()
    stored = select(event_publications.c.request_hash, func.coalesce(event_publications.c.event_id, by_seq))
    found = await db.execute(stored.where(_publication(producer, key)))
    request_hash, event_id = found.one()
    return request_hash, event_id


async def record_publication(db: AsyncSession, producer: str, key: str, event_id: uuid.UUID) -> None:
    await db.execute(update(event_publications).where(_publication(producer, key)).values(event_id=event_id))
