"""The streaming service's own table: which publish requests were already stored."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, String, Table, Uuid, func

from prognetwork.kit.db import Base

# One row per (producer, Idempotency-Key): a retried publish finds its event here instead of
# appending a second one. Written in the same transaction as the event itself, which has no
# sequence number yet: the row names the event by its id.
event_publications = Table(
    "event_publications",
    Base.metadata,
    Column("producer", String(200), primary_key=True),
    Column("idempotency_key", String(200), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("event_id", Uuid, nullable=True),
    # What the release before the sequencer recorded instead (migration 0011): read where
    # event_id is missing, never written; a later migration drops it.
    Column("event_seq", BigInteger, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
