"""Batch jobs' test data: throwaway migrated databases full of old events, copies of them, and
what a retention archive holds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from prognetwork.kit import migrations
from tests.helpers.databases import create_database, drop_database, with_database
from tests.helpers.paths import ROOT
from tests.helpers.threads import in_thread

TENANTS = [uuid.UUID(int=n + 1) for n in range(4)]

# One statement, so a million rows take seconds: the append-only trigger lets INSERT through.
FILL = """
INSERT INTO events (id, type, tenant_id, user_id, payload, occurred_at)
SELECT gen_random_uuid(),
       'test.kind_' || (g % 3),
       CASE WHEN g % 5 = 0 THEN NULL ELSE ($4::uuid[])[1 + g % array_length($4::uuid[], 1)] END,
       NULL,
       jsonb_build_object('n', g, 'text', repeat('x', g % 40)),
       $2::timestamptz + (g - 1) * $3::interval
FROM generate_series(1, $1) AS g
"""


async def fill_events(url: str, count: int, start: datetime, step_seconds: float) -> None:
    """`count` events, `step_seconds` apart from `start`, spread over a few tenants (every fifth none)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(FILL, count, start, timedelta(seconds=step_seconds), [str(t) for t in TENANTS])
    finally:
        await conn.close()


@contextlib.contextmanager
def migrated_database(admin_url: str, prefix: str = "prog_test_jobs") -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    in_thread(asyncio.run, create_database(admin_url, name))
    try:
        url = with_database(admin_url, name)
        in_thread(migrations.upgrade, url)
        yield url
    finally:
        in_thread(asyncio.run, drop_database(admin_url, name))


@contextlib.contextmanager
def database_copy(admin_url: str, source_url: str) -> Iterator[str]:
    """An identical copy of the database at `source_url` (nobody may be connected to it meanwhile)."""
    source = source_url.rsplit("/", 1)[1].split("?")[0]
    name = f"{source}_copy_{uuid.uuid4().hex[:6]}"

    async def copy() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        finally:
            await conn.close()

    in_thread(asyncio.run, copy())
    try:
        yield with_database(admin_url, name)
    finally:
        in_thread(asyncio.run, drop_database(admin_url, name))


def archive_files(location: Path) -> dict[str, Any]:
    """Every file of a local archive: gzip objects decompressed to their lines, manifests parsed
    (without `archived_at`, the only thing that differs between two runs of the same work)."""
    import gzip
    import json

    found: dict[str, Any] = {}
    for path in sorted(location.rglob("*")):
        if path.is_file():
            name = path.relative_to(location).as_posix()
            if name.endswith(".gz"):
                found[name] = gzip.decompress(path.read_bytes()).decode().splitlines()
            else:
                manifest = json.loads(path.read_text())
                manifest.pop("archived_at")
                found[name] = manifest
    return found


def prog_job(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`prog job …` as a real process (the installed entry point), its output in `log`."""
    prog = ROOT / ".venv" / "bin" / "prog"
    command = [str(prog)] if prog.exists() else [sys.executable, "-m", "prognetwork"]
    return subprocess.Popen(
        [*command, "job", *args], env={**os.environ, **env}, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
