"""Event-log retention against real PostgreSQL: the append-only rule still holds for everyone but
the retention job, nothing a durable consumer still needs is removed, the archive gives back
every removed event exactly once, and the streaming API answers 410 to a client resuming from
before what the log still keeps."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from prognetwork.jobs.retention import Retention, read_archive
from prognetwork.jobs.runner import JobSettings, Run, run_job
from prognetwork.jobs.storage import open_target
from tests.helpers.http import http_status
from tests.helpers.jobs import database_copy, fill_events, migrated_database
from tests.helpers.polling import eventually
from tests.helpers.threads import in_thread
from tests.helpers.tokens import bearer, mint

OLD = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def migrated_template(servers):
    with migrated_database(servers.pg_admin_url, "prog_test_retention") as url:
        yield url


@pytest.fixture
def fresh_url(servers, migrated_template):
    """A database of its own for each test, copied from one migrated once (much faster)."""
    with database_copy(servers.pg_admin_url, migrated_template) as url:
        yield url


def job_settings(url: str, tmp_path, **overrides: str) -> JobSettings:
    return JobSettings(**{"PROG_ENV": "development", "DATABASE_URL": url, "PROG_STATE_DIR": str(tmp_path),
                          "EVENT_ARCHIVE_LOCATION": str(tmp_path / "archive"), **overrides})


async def retain(url: str, tmp_path, before: datetime, **options):
    return await run_job(Retention(), job_settings(url, tmp_path), {"before": before, **options}, asyncio.Event())


async def all_rows(conn: asyncpg.Connection) -> dict[int, dict]:
    rows = await conn.fetch("SELECT seq, row_to_json(e)::text AS line FROM events AS e ORDER BY seq")
    return {row["seq"]: json.loads(row["line"]) for row in rows}


async def test_an_ordinary_delete_update_or_truncate_of_events_is_still_refused(fresh_url):
    await fill_events(fresh_url, 10, OLD, 60)
    conn = await asyncpg.connect(fresh_url)
    try:
        for statement in ("DELETE FROM events WHERE seq = 1", "UPDATE events SET type = 'x.y' WHERE seq = 1",
                          "TRUNCATE events"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement)
        async with conn.transaction():  # the retention setting allows rows up to its bound only
            await conn.execute("SET LOCAL prognetwork.event_retention_through = '3'")
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute("DELETE FROM events WHERE seq <= 4")
        with pytest.raises(asyncpg.RaiseError, match="append-only"):  # and only in its transaction
            await conn.execute("DELETE FROM events WHERE seq = 1")
        await conn.execute("INSERT INTO consumer_cursors (name, position) VALUES ('mailer', 2)")
        async with conn.transaction():
            await conn.execute("SET LOCAL prognetwork.event_retention_through = '3'")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="consumer mailer has handled only up to 2"):
                await conn.execute("DELETE FROM events WHERE seq <= 3")
        assert await conn.fetchval("SELECT count(*) FROM events") == 10
    finally:
        await conn.close()


async def test_a_lagging_consumer_keeps_the_events_it_has_not_handled(fresh_url, tmp_path):
    await fill_events(fresh_url, 1000, OLD, 60)
    conn = await asyncpg.connect(fresh_url)
    try:
        await conn.execute("INSERT INTO consumer_cursors (name, position) VALUES ('mailer', 1000), ('laggard', 300)")
        before = await all_rows(conn)
        outcome = await retain(fresh_url, tmp_path, datetime.now(UTC), chunk_size=128)
        assert outcome.state == "done"
        assert await conn.fetchval("SELECT min(seq) FROM events") == 301
        assert await conn.fetchval("SELECT through_seq FROM event_retention") == 300

        await conn.execute("UPDATE consumer_cursors SET position = 1000 WHERE name = 'laggard'")
        outcome = await retain(fresh_url, tmp_path, datetime.now(UTC), chunk_size=128, run_key="after the laggard")
        assert outcome.state == "done" and await conn.fetchval("SELECT count(*) FROM events") == 0
    finally:
        await conn.close()

    # Read back: every removed event exactly once, every column as it was, checksums as the manifests say.
    chunks = list(read_archive(open_target(str(tmp_path / "archive"))))
    archived = [event for chunk in chunks for event in chunk.events]
    assert [e["seq"] for e in archived] == list(range(1, 1001))
    assert {e["seq"]: e for e in archived} == before
    for chunk in chunks:
        data = (tmp_path / "archive" / chunk.manifest["object"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == chunk.manifest["sha256"]
        assert chunk.manifest["count"] == len(chunk.events) == len(gzip.decompress(data).splitlines())
        assert (chunk.manifest["first_seq"], chunk.manifest["last_seq"]) == (chunk.events[0]["seq"],
                                                                             chunk.events[-1]["seq"])
    assert max(c.manifest["last_seq"] for c in chunks if c.manifest["first_seq"] <= 300) == 300


async def test_only_events_older_than_the_cutoff_go_and_their_idempotency_rows_with_them(fresh_url, tmp_path):
    await fill_events(fresh_url, 100, OLD, 3600)  # one an hour
    cutoff = OLD + timedelta(hours=40)  # events 1-40 are older
    conn = await asyncpg.connect(fresh_url)
    try:
        await conn.execute(
            "INSERT INTO event_publications (producer, idempotency_key, request_hash, event_id) "
            "SELECT 'app', 'key-' || seq, 'h', id FROM events"
        )
        # Rows the release before migration 0011 wrote name their event by seq only.
        await conn.execute(
            "INSERT INTO event_publications (producer, idempotency_key, request_hash, event_seq) "
            "SELECT 'old-app', 'key-' || seq, 'h', seq FROM events WHERE seq IN (39, 40, 41, 42)"
        )
        assert (await retain(fresh_url, tmp_path, cutoff)).state == "done"
        assert await conn.fetchval("SELECT min(seq) FROM events") == 41
        assert await conn.fetchval(
            "SELECT min(e.seq) FROM event_publications p JOIN events e ON e.id = p.event_id") == 41
        assert await conn.fetchval("SELECT count(*) FROM event_publications WHERE producer = 'app'") == 60
        assert await conn.fetch(
            "SELECT event_seq FROM event_publications WHERE producer = 'old-app' ORDER BY 1") == [(41,), (42,)]
    finally:
        await conn.close()


async def test_leftovers_of_an_abandoned_chunk_are_replaced_not_duplicated(fresh_url, tmp_path):
    await fill_events(fresh_url, 50, OLD, 60)
    archive = open_target(str(tmp_path / "archive"))
    # What a run killed between its upload and its commit leaves: a chunk cut differently.
    with archive.writer("events/00000000000000000001-00000000000000000007.jsonl.gz") as out:
        out.write(gzip.compress(b'{"seq": 1}\n'))
    assert (await retain(fresh_url, tmp_path, datetime.now(UTC), chunk_size=20)).state == "done"
    chunks = list(read_archive(archive))
    assert [e["seq"] for c in chunks for e in c.events] == list(range(1, 51))
    assert not archive.exists("events/00000000000000000001-00000000000000000007.jsonl.gz")


class _StuckJob:
    """A job whose second chunk never ends: how the runner treats a chunk that outlasts the grace period."""

    name = "stuck"
    description = "never finishes its second chunk"
    options = frozenset()

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def plan(self, conn, settings, options):
        return Run(self.name, f"run-{uuid.uuid4().hex[:8]}", {})

    async def prepare(self, conn, settings, run):
        return None

    async def step(self, conn, settings, run):
        async with conn.transaction():
            await run.advance(conn, run.position + 1)
            if run.position == 2:
                self.started.set()
                await conn.execute("SELECT pg_sleep(60)")
        return True

    def summary(self, run):
        return ""


async def test_sigterm_abandons_a_chunk_that_would_outlast_the_grace_period(fresh_url, tmp_path):
    job, stop = _StuckJob(), asyncio.Event()
    running = asyncio.create_task(run_job(job, job_settings(fresh_url, tmp_path, JOB_GRACE_SECONDS="0.5"), {}, stop))
    await asyncio.wait_for(job.started.wait(), 30)
    stop.set()
    outcome = await asyncio.wait_for(running, 30)
    assert outcome.state == "stopped"
    conn = await asyncpg.connect(fresh_url)
    try:
        row = await conn.fetchrow("SELECT position, state FROM job_checkpoints WHERE job = 'stuck'")
    finally:
        await conn.close()
    assert (row["position"], row["state"]) == (1, "stopped")  # the abandoned chunk rolled back


# -- the streaming API after retention -------------------------------------------------------


@pytest.fixture
def streaming_after_retention(fresh_url, redis_url, jwks_server, tmp_path):
    from prognetwork.streaming.app import create_app
    from prognetwork.streaming.settings import StreamingSettings
    from tests.helpers.threads import ThreadServer

    in_thread(asyncio.run, fill_events(fresh_url, 30, OLD, 60))
    outcome = in_thread(asyncio.run, retain(fresh_url, tmp_path, OLD + timedelta(minutes=20)))  # events 1-20 go
    assert outcome.run.position == 20
    settings = StreamingSettings(**{
        "PROG_ENV": "development", "DATABASE_URL": fresh_url, "REDIS_URL": redis_url,
        "JWKS_URL": jwks_server.url + "/.well-known/jwks.json", "PROG_STATE_DIR": str(tmp_path / "streaming"),
        "STREAM_POLL_SECONDS": "1",
    })
    server = ThreadServer(create_app(settings))
    try:
        eventually(lambda: http_status(server.url + "/readiness") == 200, timeout=20, what="streaming ready")
        yield server
    finally:
        server.close()


async def test_polling_from_before_retention_answers_410_and_from_after_it_answers_events(
    streaming_after_retention, http, signing_key
):
    url, headers = streaming_after_retention.url, bearer(mint(signing_key, uuid.uuid4(), role="admin"))
    async with http.get(f"{url}/v1/events", params={"after": "5"}, headers=headers) as response:
        problem = await response.json(content_type=None)
        assert response.status == 410 and response.content_type == "application/problem+json", problem
    assert problem["type"].endswith("/events-gone") and problem["retained_after"] == 20
    assert "after 5 are no longer kept" in problem["detail"] and "Resync" in problem["detail"]
    async with http.get(f"{url}/v1/events", params={"after": "20"}, headers=headers) as response:
        assert response.status == 200
        assert [e["seq"] for e in (await response.json())["events"]] == list(range(21, 31))
    async with http.get(f"{url}/v1/events", headers=headers) as response:  # no `after`: the oldest kept
        assert response.status == 200 and (await response.json())["events"][0]["seq"] == 21


async def test_a_stream_resuming_from_before_retention_answers_410(streaming_after_retention, http, signing_key):
    url, headers = streaming_after_retention.url, bearer(mint(signing_key, uuid.uuid4(), role="admin"))
    for params, extra in (({}, {"Last-Event-ID": "19"}), ({"last_event_id": "0"}, {})):
        async with http.get(f"{url}/v1/events/stream", params=params, headers={**headers, **extra}) as response:
            problem = await response.json(content_type=None)
            assert response.status == 410 and response.content_type == "application/problem+json", problem
            assert "reconnect without Last-Event-ID" in problem["detail"]
    async with http.get(f"{url}/v1/events/stream", headers={**headers, "Last-Event-ID": "20"}) as response:
        assert response.status == 200
        seen: list[int] = []
        async for line in response.content:
            if line.startswith(b"id: "):
                seen.append(int(line[4:]))
            if len(seen) == 10:
                break
        assert seen == list(range(21, 31))
