"""Publishing custom events over HTTP: validated, bounded, namespaced and idempotent.

A plain user publishes only `app.*` events, scoped to themselves (and their tenant); an
operator or admin may publish into any namespace but the platform's own, which only the
services write. A retried publish (same producer, same Idempotency-Key) stores nothing new
and answers with the event stored the first time; the key and the event are written in one
`async with db.begin():` block, so neither exists without the other.
"""

from __future__ import annotations

import hashlib
import json
import uuid

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.kit import events
from prognetwork.kit.problems import Problem
from prognetwork.kit.validation import JsonObject, check_token
from prognetwork.streaming import queries
from prognetwork.streaming.problems import (
    EVENT_TYPE_NOT_ALLOWED,
    IDEMPOTENCY_KEY_INVALID,
    IDEMPOTENCY_KEY_REQUIRED,
    IDEMPOTENCY_KEY_REUSED,
    PAYLOAD_TOO_LARGE,
)
from prognetwork.streaming.visibility import Viewer

TYPE_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$"
USER_NAMESPACE = "app"
RESERVED_NAMESPACES = frozenset({"user", "tenant", "billing", "notification", "system"})
MAX_KEY_LENGTH = 200

PUBLISHED = Counter("stream_events_published", "Publish requests by outcome.", ("outcome",))
for _outcome in ("created", "replayed", "rejected"):
    PUBLISHED.labels(_outcome)  # exported at 0 from the start, so rate() sees the first one


class PublishIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(max_length=200, pattern=TYPE_PATTERN)
    # Finite numbers, 64-bit integers, no NUL or lone surrogates, bounded depth: what jsonb stores.
    payload: JsonObject
    user_id: uuid.UUID | None = None


def check_key(key: str | None) -> str:
    if not key:
        PUBLISHED.labels("rejected").inc()
        raise IDEMPOTENCY_KEY_REQUIRED("Send an Idempotency-Key header, so a retried publish is stored once.")
    if len(key) > MAX_KEY_LENGTH:
        PUBLISHED.labels("rejected").inc()
        raise IDEMPOTENCY_KEY_INVALID(f"The Idempotency-Key is longer than {MAX_KEY_LENGTH} characters.")
    try:
        # Stored in a text column and compared byte for byte: printable ASCII keeps it unambiguous
        # (HTTP already trims the spaces around a header value; inner ones are fine).
        check_token(key, spaces=True)
    except ValueError as exc:
        PUBLISHED.labels("rejected").inc()
        raise IDEMPOTENCY_KEY_INVALID(f"The Idempotency-Key {exc}.") from None
    return key


def scope_of(viewer: Viewer, body: PublishIn) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """The (user_id, tenant_id) the event is stored under, if `viewer` may publish it at all."""
    namespace = body.type.split(".", 1)[0]
    if viewer.sees_all:
        if namespace in RESERVED_NAMESPACES:
            raise _refused(f"The {namespace}.* namespace is written by the platform's services only.")
        return body.user_id, None
    if namespace != USER_NAMESPACE:
        raise _refused(f"You may publish only {USER_NAMESPACE}.* events.")
    if body.user_id is not None and body.user_id != viewer.user_id:
        raise _refused("You may publish events about yourself only.")
    return viewer.user_id, viewer.tenant_id


def _refused(detail: str) -> Problem:
    PUBLISHED.labels("rejected").inc()
    return EVENT_TYPE_NOT_ALLOWED(detail)


def request_hash(body: PublishIn) -> str:
    canonical = {
        "type": body.type,
        "payload": body.payload,
        "user_id": str(body.user_id) if body.user_id else None,
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def publish(
    db: AsyncSession, viewer: Viewer, body: PublishIn, key: str, max_payload_bytes: int
) -> tuple[int, str]:
    """(201, event JSON) when stored now, (200, event JSON) when stored by an earlier try."""
    user_id, tenant_id = scope_of(viewer, body)
    size = len(json.dumps(body.payload, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_payload_bytes:
        PUBLISHED.labels("rejected").inc()
        raise PAYLOAD_TOO_LARGE(f"The payload is {size} bytes; the limit is {max_payload_bytes}.")
    producer = str(viewer.user_id)
    digest = request_hash(body)
    earlier_hash: str | None  # the hash an earlier try stored under this key; None if there was none
    async with db.begin():
        # A concurrent try with the same key waits here until the first one commits.
        if await queries.claim_publication(db, producer, key, digest):
            event = await events.append(
                db, body.type, body.payload, user_id=user_id, tenant_id=tenant_id, private=False
            )
            await queries.record_publication(db, producer, key, event.id)
            event_id, earlier_hash = event.id, None
        else:
            earlier_hash, event_id = await queries.earlier_publication(db, producer, key)
    if earlier_hash is None:
        status, outcome = 201, "created"
    elif earlier_hash == digest:
        status, outcome = 200, "replayed"
    else:
        PUBLISHED.labels("rejected").inc()
        raise IDEMPOTENCY_KEY_REUSED("This Idempotency-Key was used for a different event.")
    # The answer carries the event's seq, drawn by the sequencer after the commit: the commit
    # returned once it was drawn, unless that wait was cut short — then it is drawn here.
    data = await queries.event_json(db, event_id)
    if data is None:
        await db.rollback()  # the read's transaction: sequencing takes one of its own
        await events.sequenced(db, event_id)
        data = await queries.event_json(db, event_id)
        if data is None:  # sequenced now, and publish never stores a private event
            raise RuntimeError(f"published event {event_id} is not readable")
    PUBLISHED.labels(outcome).inc()
    return status, data
