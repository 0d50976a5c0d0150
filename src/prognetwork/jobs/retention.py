"""Event-log retention: archive the oldest events, then remove them from the log.

Invariants:
- Nothing a durable consumer has not handled is removed: the bound is clamped to the lowest
  cursor in `consumer_cursors` at every chunk, and the database refuses a DELETE past it anyway
  (migration 0010's statement trigger).
- An event is removed only after the archive object holding it is whole in the target, and in
  the transaction that records the new low-water mark (`event_retention.through_seq`) and the
  run's checkpoint. Idempotency rows (`event_publications`) go with their events.
- Only sequenced events are retained or removed: pending ones (`event_pending`, kit/events.py)
  have no seq yet and are newer than every event in the log.
- An archive object holds one chunk: `events/<first seq>-<last seq>.jsonl.gz`, one JSON object
  per event with every column (PostgreSQL's `row_to_json`), oldest first, gzip with no timestamp
  in its header; beside it `<same>.manifest.json` names the first and last sequence, the count,
  the object's sha256 and when it was written. The bytes depend only on the events, so a chunk
  done again (after kill -9 between the upload and the commit) rewrites the same object, and
  objects whose events are still in the log (an abandoned chunk's, possibly cut differently)
  are deleted before a run starts: every removed event is archived exactly once.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import asyncpg

from prognetwork.jobs.runner import JobInputError, JobSettings, Run
from prognetwork.jobs.storage import Target, open_target
from prognetwork.kit.events import RETENTION_SETTING

NAME = "event-retention"
PREFIX = "events/"
OBJECT = re.compile(r"^events/(\d{20})-(\d{20})\.(jsonl\.gz|manifest\.json)$")

# The chunk's rows first, then their JSON: rendering only what the LIMIT keeps, whatever plan
# the table's statistics lead to.
_CHUNK = """
SELECT chunk.seq, chunk.occurred_at, row_to_json(chunk)::text AS line
FROM (SELECT * FROM events WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3) AS chunk
ORDER BY chunk.seq
"""
# Level 6, gzip's own default: level 9 costs about three times the time for a few per cent.
COMPRESS_LEVEL = 6


def object_names(first: int, last: int) -> tuple[str, str]:
    stem = f"{PREFIX}{first:020d}-{last:020d}"
    return f"{stem}.jsonl.gz", f"{stem}.manifest.json"


class HashingWriter:
    """Counts and hashes what passes through to the target's stream."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def write_chunk(target: Target, lines: list[str], first: int, last: int) -> dict[str, Any]:
    """Write one chunk's archive object and then its manifest; the manifest."""
    data_name, manifest_name = object_names(first, last)
    with target.writer(data_name) as out:
        hashing = HashingWriter(out)
        # mtime=0 and no file name: the same events always give the same bytes.
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=hashing, mtime=0, compresslevel=COMPRESS_LEVEL
        ) as archive:
            archive.write("".join(line + "\n" for line in lines).encode())
    manifest = {
        "object": data_name,
        "first_seq": first,
        "last_seq": last,
        "count": len(lines),
        "sha256": hashing.sha256.hexdigest(),
        "bytes": hashing.size,
        "archived_at": datetime.now(UTC).isoformat(),
    }
    with target.writer(manifest_name) as out:
        out.write(json.dumps(manifest, sort_keys=True).encode() + b"\n")
    return manifest


@dataclass(frozen=True)
class ArchivedChunk:
    manifest: dict[str, Any]
    events: list[dict[str, Any]]


class ArchiveDamaged(Exception):
    """An archive object does not match its manifest."""


def read_archive(target: Target) -> Iterator[ArchivedChunk]:
    """Every archived chunk, oldest first, each checked against its manifest (sha256 and count)."""
    manifests = sorted(name for name in target.list(PREFIX) if name.endswith(".manifest.json"))
    for name in manifests:
        with target.reader(name) as stream:
            manifest = json.loads(stream.read())
        with target.reader(manifest["object"]) as stream:
            data = stream.read()
        if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
            raise ArchiveDamaged(f"{manifest['object']}: sha256 differs from its manifest")
        events = [json.loads(line) for line in gzip.decompress(data).splitlines()]
        if len(events) != manifest["count"]:
            raise ArchiveDamaged(
                f"{manifest['object']}: {len(events)} events, the manifest says {manifest['count']}"
            )
        yield ArchivedChunk(manifest, events)


def remove_leftovers(target: Target, through_seq: int) -> list[str]:
    """Delete archive objects of chunks never committed (their events are all after `through_seq`)."""
    removed = []
    for name in target.list(PREFIX):
        match = OBJECT.match(name)
        if match and int(match.group(1)) > through_seq:
            target.delete(name)
            removed.append(name)
    return removed


async def lowest_cursor(conn: asyncpg.Connection) -> int | None:
    return await conn.fetchval("SELECT min(position) FROM consumer_cursors")


class Retention:
    name = NAME
    description = "Archive events older than EVENT_RETENTION_DAYS to EVENT_ARCHIVE_LOCATION, then remove them"
    options = frozenset({"before", "run_key", "chunk_size", "target"})

    def problems(self, settings: JobSettings, options: dict[str, Any]) -> list[str]:
        if settings.is_development or settings.event_archive_location or options.get("target"):
            return []
        return ["EVENT_ARCHIVE_LOCATION is required outside development (s3://bucket/prefix)"]

    async def plan(self, conn: asyncpg.Connection, settings: JobSettings, options: dict[str, Any]) -> Run:
        before: datetime | None = options.get("before")
        if before is None:
            today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            before = today - timedelta(days=settings.event_retention_days)
        if before > datetime.now(UTC):
            raise JobInputError(
                f"--before {before.isoformat()} is in the future; retention never removes new events"
            )
        run_key = options.get("run_key") or f"before-{before.isoformat()}"
        # Up to the first event that is not old enough: occurred_at comes from several clocks, so
        # it is not strictly ordered by seq, and a newer event is never taken with the old ones.
        kept = await conn.fetchval("SELECT min(seq) FROM events WHERE occurred_at >= $1", before)
        through = (
            (kept - 1)
            if kept is not None
            else (await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events"))
        )
        params = {
            "before": before.isoformat(),
            "through_seq": through,
            "chunk_size": options.get("chunk_size") or settings.job_chunk_size,
            "target": options.get("target") or settings.archive_location,
        }
        return Run(NAME, run_key, params)

    async def prepare(self, conn: asyncpg.Connection, settings: JobSettings, run: Run) -> None:
        through_seq = await conn.fetchval("SELECT through_seq FROM event_retention")
        target = open_target(run.params["target"])
        await asyncio.to_thread(remove_leftovers, target, through_seq)
        run.notes.update(target=target, removed=0)

    async def step(self, conn: asyncpg.Connection, settings: JobSettings, run: Run) -> bool:
        target: Target = run.notes["target"]
        start = await conn.fetchval("SELECT through_seq FROM event_retention")
        bound = run.params["through_seq"]
        lowest = await lowest_cursor(conn)
        if lowest is not None:
            bound = min(bound, lowest)
        rows = await conn.fetch(_CHUNK, start, bound, run.params["chunk_size"])
        if not rows:
            return False
        first, last = rows[0]["seq"], rows[-1]["seq"]
        await asyncio.to_thread(write_chunk, target, [row["line"] for row in rows], first, last)
        async with conn.transaction():
            await conn.execute("SELECT set_config($1, $2, true)", RETENTION_SETTING, str(last))
            await conn.execute(
                # By id, or by seq where the release before migration 0011 recorded that.
                "DELETE FROM event_publications WHERE event_id IN "
                "(SELECT id FROM events WHERE seq > $1 AND seq <= $2) OR (event_seq > $1 AND event_seq <= $2)",
                start,
                last,
            )
            deleted = await conn.execute("DELETE FROM events WHERE seq > $1 AND seq <= $2", start, last)
            if int(deleted.split()[-1]) != len(rows):
                raise RuntimeError(f"events {first}-{last}: expected to remove {len(rows)}, {deleted}")
            await conn.execute(
                "UPDATE event_retention SET through_seq = $1, through_occurred_at = $2, "
                "removed = removed + $3, updated_at = now()",
                last,
                rows[-1]["occurred_at"],
                len(rows),
            )
            await run.advance(conn, last)
        run.notes["removed"] += len(rows)
        return True

    def summary(self, run: Run) -> str:
        return (
            f"archived and removed {run.notes.get('removed', 0)} events older than {run.params['before']} "
            f"(the log now starts after event {run.position}) to {run.params['target']}"
        )


async def lagging_consumers(conn: asyncpg.Connection, through_seq: int) -> list[tuple[str, int]]:
    """Durable consumers holding retention back: those that have not handled up to `through_seq`."""
    rows = await conn.fetch(
        "SELECT name, position FROM consumer_cursors WHERE position < $1 ORDER BY position", through_seq
    )
    return [(row["name"], row["position"]) for row in rows]
