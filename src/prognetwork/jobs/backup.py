"""Logical backups of the platform's database, proven by restoring them.

A backup is two objects in a target (`storage.py`): `<id>.dump`, pg_dump's custom format streamed
from its stdout straight into the target (never held whole in memory or on local disk), and
`<id>.manifest.json`, written LAST. Invariants:

- A backup without a manifest is incomplete and never listed, verified or restored; a failed
  dump leaves no object at all (the target's writer discards it).
- The manifest describes exactly the data in the dump: pg_dump runs on a snapshot exported by a
  REPEATABLE READ transaction, and the row counts, schema revision and the event log's last
  sequence are read in that same transaction.
- `verify` restores into a scratch database it creates and always drops, and compares that
  database, and the dump's checksum, with the manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

import asyncpg

from prognetwork.jobs import backup_pgtools as pg
from prognetwork.jobs.storage import CHUNK_BYTES, Target

MANIFEST_SUFFIX = ".manifest.json"
DUMP_SUFFIX = ".dump"
# Dumps without a manifest this old are failed runs, removed by prune (younger may be running).
ABANDONED_AFTER_SECONDS = 24 * 3600

Progress = Callable[[int], None]


class BackupError(Exception):
    """A backup operation cannot be done; the message is one line saying what and how to fix it."""


@dataclass
class Manifest:
    id: str
    created_at: str  # ISO 8601, UTC: when the snapshot was taken
    dump: str
    size: int
    sha256: str
    schema_revision: str | None
    tables: dict[str, int]  # rows per table
    events_last_seq: int | None
    server_version: int
    duration_seconds: float = 0.0
    format: str = "pg_dump-custom"

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        return cls(**json.loads(data))


@dataclass
class Verdict:
    manifest: Manifest
    differences: list[str] = field(default_factory=list)
    duration_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.differences


def new_id(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


async def _tool(conn: asyncpg.Connection, tool: str, bin_dir: str | None) -> tuple[str, int]:
    major = await pg.server_major(conn)
    try:
        return str(pg.client_tool(tool, major, bin_dir)), major
    except pg.ClientToolMissing as exc:
        raise BackupError(str(exc)) from None


def _last_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no error output"


async def create(
    dsn: str,
    target: Target,
    bin_dir: str | None = None,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> Manifest:
    """Dump the database at `dsn` into `target`; the manifest of the complete backup."""
    started = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        pg_dump, major = await _tool(conn, "pg_dump", bin_dir)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            taken = now or datetime.now(UTC)
            backup_id = new_id(taken)
            dump_name = backup_id + DUMP_SUFFIX
            size, digest = await _dump(pg_dump, dsn, snapshot, target, dump_name, progress)
            manifest = Manifest(
                id=backup_id,
                created_at=taken.isoformat(),
                dump=dump_name,
                size=size,
                sha256=digest,
                schema_revision=await pg.schema_revision(conn),
                tables=await pg.table_counts(conn),
                events_last_seq=await pg.events_last_seq(conn),
                server_version=major,
            )
    finally:
        await conn.close()
    manifest.duration_seconds = round(time.monotonic() - started, 3)
    try:
        with target.writer(backup_id + MANIFEST_SUFFIX) as out:
            out.write(manifest.to_json())
    except BaseException:
        target.delete(dump_name)
        raise
    return manifest


async def _dump(
    pg_dump: str, dsn: str, snapshot: str, target: Target, name: str, progress: Progress | None
) -> tuple[int, str]:
    conninfo, env = pg.libpq(dsn)
    process = await asyncio.create_subprocess_exec(
        pg_dump, "--format=custom", f"--snapshot={snapshot}", f"--dbname={conninfo}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**_base_env(), **env},
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    errors = asyncio.ensure_future(process.stderr.read())
    digest, size = hashlib.sha256(), 0
    try:
        with target.writer(name) as out:
            while chunk := await process.stdout.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
                if progress:
                    progress(size)
            code = await process.wait()
            if code != 0:
                raise BackupError(f"pg_dump failed (exit {code}): {_last_line(await errors)}")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        errors.cancel()
    return size, digest.hexdigest()


def _base_env() -> dict[str, str]:
    import os

    # libpq reads PG* variables; only the ones we set (and the locale and PATH) reach the tools.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG") or k == "PGSSLROOTCERT"}


def backups(target: Target) -> list[Manifest]:
    """The complete backups in `target` (those with a manifest), oldest first."""
    found = []
    for name in target.list():
        if name.endswith(MANIFEST_SUFFIX):
            with target.reader(name) as file:
                found.append(Manifest.from_json(file.read()))
    return sorted(found, key=lambda m: m.created_at)


def find(target: Target, backup_id: str) -> Manifest:
    """The backup named `backup_id` ("latest": the newest)."""
    complete = backups(target)
    if not complete:
        raise BackupError(f"{target.location} holds no complete backup; run `prog backup create`")
    if backup_id == "latest":
        return complete[-1]
    for manifest in complete:
        if manifest.id == backup_id:
            return manifest
    raise BackupError(f"no complete backup {backup_id!r} in {target.location}; see `prog backup list`")


async def _restore_stream(
    pg_restore: str, dsn: str, target: Target, manifest: Manifest, clean: bool
) -> tuple[str, int, str | None]:
    """Feed the dump to pg_restore; the dump's sha256 and size (read to the end even if
    pg_restore gives up), and pg_restore's error, if any."""
    conninfo, env = pg.libpq(dsn)
    options = ["--no-owner", "--no-acl", "--exit-on-error", "--single-transaction"]
    if clean:
        options += ["--clean", "--if-exists"]
    process = await asyncio.create_subprocess_exec(
        pg_restore, *options, f"--dbname={conninfo}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**_base_env(), **env},
    )  # fmt: skip
    assert process.stdin is not None and process.stderr is not None
    errors = asyncio.ensure_future(process.stderr.read())
    digest, size, feeding = hashlib.sha256(), 0, True
    try:
        with target.reader(manifest.dump) as file:
            while chunk := _read(file):
                digest.update(chunk)
                size += len(chunk)
                if feeding:
                    try:
                        process.stdin.write(chunk)
                        await process.stdin.drain()
                    except (BrokenPipeError, ConnectionResetError):
                        feeding = False  # pg_restore stopped; its exit status says why
        if feeding:
            process.stdin.close()
        code = await process.wait()
        failure = None if code == 0 else f"pg_restore failed (exit {code}): {_last_line(await errors)}"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        errors.cancel()
    return digest.hexdigest(), size, failure


def _read(file: BinaryIO) -> bytes:
    return file.read(CHUNK_BYTES)


async def verify(
    dsn: str, scratch_server_dsn: str, target: Target, backup_id: str, bin_dir: str | None = None
) -> Verdict:
    """Restore the backup into a scratch database and compare it with its manifest."""
    started = time.monotonic()
    manifest = find(target, backup_id)
    scratch = f"prog_verify_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(scratch_server_dsn)
    try:
        pg_restore, _ = await _tool(admin, "pg_restore", bin_dir)
        await admin.execute(f'CREATE DATABASE "{scratch}"')
        try:
            scratch_dsn = pg.with_database(scratch_server_dsn, scratch)
            digest, size, failure = await _restore_stream(
                pg_restore, scratch_dsn, target, manifest, clean=False
            )
            differences = _compare_stream(manifest, digest, size, failure)
            if failure is None:
                differences += await _compare_database(manifest, scratch_dsn)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
    finally:
        await admin.close()
    return Verdict(manifest, differences, round(time.monotonic() - started, 3))


def _compare_stream(manifest: Manifest, digest: str, size: int, failure: str | None) -> list[str]:
    differences = []
    if digest != manifest.sha256:
        differences.append(f"checksum: the manifest says sha256 {manifest.sha256}, the dump is {digest}")
    if size != manifest.size:
        differences.append(f"size: the manifest says {manifest.size} bytes, the dump is {size}")
    if failure:
        differences.append(failure)
    return differences


async def _compare_database(manifest: Manifest, dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        revision = await pg.schema_revision(conn)
        counts = await pg.table_counts(conn)
        last_seq = await pg.events_last_seq(conn)
    finally:
        await conn.close()
    differences = []
    if revision != manifest.schema_revision:
        differences.append(
            f"schema revision: {manifest.schema_revision} in the manifest, {revision} restored"
        )
    for table in sorted(set(manifest.tables) | set(counts)):
        expected, found = manifest.tables.get(table), counts.get(table)
        if expected != found:
            differences.append(f"table {table}: {_rows(expected)} in the manifest, {_rows(found)} restored")
    if last_seq != manifest.events_last_seq:
        differences.append(
            f"event log: last sequence {manifest.events_last_seq} in the manifest, {last_seq} restored"
        )
    return differences


def _rows(count: int | None) -> str:
    return "absent" if count is None else f"{count} rows"


async def restore(
    target: Target, backup_id: str, to_dsn: str, force: bool = False, bin_dir: str | None = None
) -> Manifest:
    """Restore a backup into the database at `to_dsn`, which must be empty unless `force`
    (then what the backup holds replaces what is there)."""
    manifest = find(target, backup_id)
    conn = await asyncpg.connect(to_dsn)
    try:
        pg_restore, _ = await _tool(conn, "pg_restore", bin_dir)
        tables = await pg.table_names(conn)
    finally:
        await conn.close()
    if tables and not force:
        raise BackupError(
            f"database {pg.database_name(to_dsn)!r} is not empty ({len(tables)} tables); restore into "
            "an empty database, or pass --force to replace what the backup holds"
        )
    digest, size, failure = await _restore_stream(pg_restore, to_dsn, target, manifest, clean=bool(tables))
    differences = _compare_stream(manifest, digest, size, failure)
    if differences:
        raise BackupError(f"restore of {manifest.id} failed: {'; '.join(differences)}")
    return manifest


def kept(manifests: Iterable[Manifest], daily: int, weekly: int, monthly: int) -> set[str]:
    """Backup ids kept by the policy: the newest backup of each of the `daily` most recent days
    having backups, of the `weekly` most recent ISO weeks and the `monthly` most recent months;
    the newest backup always."""
    newest_first = sorted(manifests, key=lambda m: m.created_at, reverse=True)
    keep = {newest_first[0].id} if newest_first else set()
    periods: list[tuple[int, Callable[[datetime], object]]] = [
        (daily, lambda t: t.date()),
        (weekly, lambda t: t.isocalendar()[:2]),
        (monthly, lambda t: (t.year, t.month)),
    ]
    for count, period in periods:
        seen: set[object] = set()
        for manifest in newest_first:
            moment = manifest.created.astimezone(UTC)
            if len(seen) >= count:
                break
            if period(moment) not in seen:
                seen.add(period(moment))
                keep.add(manifest.id)
    return keep


def prune(target: Target, daily: int, weekly: int, monthly: int, now: datetime | None = None) -> list[str]:
    """Delete the backups the policy does not keep, and abandoned dumps; the names removed."""
    now = now or datetime.now(UTC)
    complete = backups(target)
    keep = kept(complete, daily, weekly, monthly)
    removed = []
    for manifest in complete:
        if manifest.id not in keep:
            # The manifest first: a half-pruned backup is then incomplete, never a listed one
            # without its dump.
            for name in (manifest.id + MANIFEST_SUFFIX, manifest.dump):
                target.delete(name)
                removed.append(name)
    listed = {m.dump for m in complete}
    for name in target.list():
        if name.endswith(DUMP_SUFFIX) and name not in listed:
            with contextlib.suppress(ValueError):
                started = datetime.strptime(name.split("-", 1)[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
                if (now - started).total_seconds() > ABANDONED_AFTER_SECONDS:
                    target.delete(name)
                    removed.append(name)
    return removed
