"""HTTP routes of the streaming service: the SSE stream, polling, and publishing."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.kit.events import retained_through
from prognetwork.kit.problems import AUTHENTICATED, BODY_TOO_LARGE, MALFORMED_REQUEST, problem_responses
from prognetwork.kit.retry import wait_for
from prognetwork.kit.validation import INT64_MAX, Text, ascii_digits_int
from prognetwork.streaming import problems, queries
from prognetwork.streaming.deps import Caller, ReadOnlySession, RuntimeDep, WriteSession
from prognetwork.streaming.publish import TYPE_PATTERN, PublishIn, check_key, publish
from prognetwork.streaming.stream import EventStream

router = APIRouter(tags=["events"])
TYPE = re.compile(TYPE_PATTERN)
MAX_TYPES = 50
MAX_POLL = 500
READY_WAIT_SECONDS = 5.0
Types = Annotated[Text | None, Query(max_length=MAX_TYPES * 201, description="Comma-separated event types")]


def parse_types(types: str | None) -> frozenset[str] | None:
    if types is None:
        return None
    names = frozenset(t.strip() for t in types.split(",") if t.strip())
    # fullmatch: `$` in `match` would also accept a trailing newline.
    bad = sorted(t for t in names if len(t) > 200 or not TYPE.fullmatch(t))
    if bad or not names or len(names) > MAX_TYPES:
        raise MALFORMED_REQUEST(
            f"`types` must be 1 to {MAX_TYPES} comma-separated event types"
            + (f"; not event types: {', '.join(bad[:5])}" if bad else "")
            + "."
        )
    return names


def parse_last_event_id(header: str | None, query: str | None) -> int | None:
    value = header if header is not None else query
    if value is None or value == "":
        return None
    # Not str.isdigit(): it accepts non-ASCII digits ("١٢") that int() then parses.
    after = ascii_digits_int(value)
    if after is None:
        raise MALFORMED_REQUEST("Last-Event-ID must be the id of an event this stream sent.")
    return after


async def check_retained(db: AsyncSession, after: int, resume: str) -> None:
    """410 when events after `after` were already removed by retention: the client missed some."""
    through = await retained_through(db)
    if after < through:
        raise problems.EVENTS_GONE(
            f"The events after {after} are no longer kept: the event log now starts after event {through}. "
            f"Resync: reload the current state, then {resume}.",
            retained_after=through,
        )


@router.get(
    "/v1/events/stream",
    summary="Server-Sent Events of the events the caller may see",
    responses=problem_responses(
        *AUTHENTICATED, MALFORMED_REQUEST, problems.EVENTS_GONE, problems.STREAM_UNAVAILABLE
    ),
)
async def stream(
    runtime: RuntimeDep,
    viewer: Caller,
    types: Types = None,
    # Both checked by parse_last_event_id (ASCII digits, at most 2^63-1), which answers 400.
    last_event_id: Annotated[
        str | None, Query(description="Resume after this id (or the Last-Event-ID header)")
    ] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    wanted = parse_types(types)
    after = parse_last_event_id(last_event_id_header, last_event_id)
    if after is not None:
        async with runtime.database.readers() as db:
            await check_retained(db, after, "reconnect without Last-Event-ID")
    hub = runtime.hub
    if not hub.ready.is_set():
        await wait_for(hub.ready, READY_WAIT_SECONDS)
    if hub.closed or not hub.ready.is_set():
        raise problems.STREAM_UNAVAILABLE(
            "The event stream is not available here right now; reconnect shortly.",
            headers={"Retry-After": "1"},
        )
    return EventStream(hub, runtime.database.readers, runtime.revocations, viewer, wanted, after)


@router.get(
    "/v1/events",
    summary="The events after a sequence number, for polling clients",
    responses=problem_responses(*AUTHENTICATED, MALFORMED_REQUEST, problems.EVENTS_GONE),
)
async def poll(
    db: ReadOnlySession,
    viewer: Caller,
    after: Annotated[
        int | None, Query(ge=0, le=INT64_MAX, description="Default: from the oldest event still kept")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_POLL)] = 100,
    types: Types = None,
) -> Response:
    if after is None:
        after = 0
    else:
        await check_retained(db, after, "poll without `after`")
    rows = await queries.visible_events(db, viewer, parse_types(types), after, limit)
    # The events' JSON comes rendered from PostgreSQL: joined, not parsed and re-encoded.
    body = b'{"events": [%s], "next_after": %d}' % (
        b", ".join(row["data"].encode() for row in rows),
        rows[-1]["seq"] if rows else after,
    )
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


@router.post(
    "/v1/events",
    status_code=201,
    summary="Publish a custom event",
    responses={
        200: {"description": "Stored by an earlier request with this Idempotency-Key"},
        201: {"description": "Stored"},
        **problem_responses(
            *AUTHENTICATED,
            MALFORMED_REQUEST,
            problems.IDEMPOTENCY_KEY_REQUIRED,
            problems.IDEMPOTENCY_KEY_INVALID,
            problems.EVENT_TYPE_NOT_ALLOWED,
            problems.PAYLOAD_TOO_LARGE,
            BODY_TOO_LARGE,
            problems.IDEMPOTENCY_KEY_REUSED,
        ),
    },
)
async def publish_event(
    runtime: RuntimeDep,
    db: WriteSession,
    viewer: Caller,
    body: Annotated[PublishIn, Body()],
    # Checked by check_key, which answers with the problem kinds publishers already handle.
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    key = check_key(idempotency_key)
    status, data = await publish(db, viewer, body, key, runtime.settings.stream_max_payload_bytes)
    return Response(data, status_code=status, media_type="application/json")
