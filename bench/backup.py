"""Backups of a database of realistic size: `prog backup create`, `verify` and `restore` timed
on a throwaway database holding `--events` events (one INSERT … SELECT generate_series, not the
API), with the backup's and the database's sizes. The baseline, in the same run: plain
`pg_dump --format=custom` to /dev/null, which `create` wraps (streaming, hashing, the manifest's
counts). Prints a table and, last, one JSON line.

    python bench/backup.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ADMIN_URL, ROOT, database  # noqa: E402
from prognetwork.jobs.backup_pgtools import client_tool, libpq  # noqa: E402

# About the shape of real events: a type, a user and a tenant, a small JSON payload.
FILL = """
INSERT INTO events (id, type, user_id, tenant_id, payload, occurred_at)
SELECT gen_random_uuid(), (ARRAY['user.registered', 'user.logged_in', 'tenant.member_added', 'app.note'])[1 + g % 4],
       gen_random_uuid(), CASE WHEN g % 3 = 0 THEN gen_random_uuid() END,
       jsonb_build_object('n', g, 'email', 'user' || g || '@example.com', 'client', '10.0.' || (g % 250) || '.7',
                          'note', repeat('x', 40 + g % 80)),
       now() - make_interval(secs => $1 - g)
FROM generate_series(1, $1) AS g
"""


async def sql(url: str, statement: str, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(statement, *args)
    finally:
        await conn.close()


def prog(env: dict[str, str], *args: str) -> tuple[float, dict]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "prognetwork", "backup", *args], env={**os.environ, **env},
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"prog backup {args[0]} failed: {done.stderr.strip()}")
    return elapsed, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    options = parser.parse_args()

    with database() as url, tempfile.TemporaryDirectory(prefix="prog-bench-backup-") as target:
        print(f"filling {options.events:,} events…", file=sys.stderr)
        started = time.monotonic()
        asyncio.run(sql(url, FILL, options.events))
        asyncio.run(sql(url, "VACUUM ANALYZE events"))
        fill_seconds = time.monotonic() - started
        database_bytes = asyncio.run(sql(url, "SELECT pg_database_size(current_database())"))
        major = asyncio.run(sql(url, "SHOW server_version_num"))
        pg_dump = client_tool("pg_dump", int(major) // 10000)

        conninfo, secret = libpq(url)
        started = time.monotonic()
        subprocess.run([str(pg_dump), "--format=custom", f"--dbname={conninfo}"], env={**os.environ, **secret},
                       stdout=subprocess.DEVNULL, check=True)  # fmt: skip
        pg_dump_seconds = time.monotonic() - started

        env = {"DATABASE_URL": url, "PUSHGATEWAY_URL": ""}
        create_seconds, created = prog(env, "create", "--target", target)
        verify_seconds, _ = prog(env, "verify", created["backup"], "--target", target)

        name = f"prog_bench_restore_{uuid.uuid4().hex[:10]}"
        asyncio.run(sql(ADMIN_URL, f'CREATE DATABASE "{name}"'))
        try:
            restored_url = url.rsplit("/", 1)[0] + f"/{name}"
            restore_seconds, _ = prog(env, "restore", created["backup"], "--to", restored_url, "--target", target)
            restored_events = asyncio.run(sql(restored_url, "SELECT count(*) FROM events"))
        finally:
            asyncio.run(sql(ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        assert restored_events == options.events, restored_events

    result = {
        "events": options.events,
        "database_mb": round(database_bytes / 1e6, 1),
        "backup_mb": round(created["size"] / 1e6, 1),
        "create_seconds": round(create_seconds, 2),
        "verify_seconds": round(verify_seconds, 2),
        "restore_seconds": round(restore_seconds, 2),
        "pg_dump_seconds": round(pg_dump_seconds, 2),
        "create_ratio": round(create_seconds / pg_dump_seconds, 2),
    }
    print(f"{'fill (INSERT … generate_series)':34} {fill_seconds:8.1f} s", file=sys.stderr)
    for label, key in [("pg_dump -Fc > /dev/null (baseline)", "pg_dump_seconds"), ("prog backup create", "create_seconds"),
                       ("prog backup verify", "verify_seconds"), ("prog backup restore", "restore_seconds")]:  # fmt: skip
        print(f"{label:34} {result[key]:8.1f} s", file=sys.stderr)
    print(f"{'database / backup':34} {result['database_mb']:.1f} MB / {result['backup_mb']:.1f} MB", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
