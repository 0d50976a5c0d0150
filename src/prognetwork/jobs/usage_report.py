"""The daily usage report: how many events of each type each tenant caused, per UTC day.

Why this job: the counts are what usage-based billing, quotas and a tenant's activity page
need, and they outlive the events themselves, which retention removes after
EVENT_RETENTION_DAYS. Computing them from the log is a sequential scan of one day (the BRIN
index on `occurred_at`), cheap for the database and a good fit for a spot node.

One chunk is one day: its rows in `usage_daily` are replaced and the checkpoint advanced in one
transaction, so a day is reported whole or not at all, and doing it again gives the same rows.
A day some of whose events retention has already removed is left as it was (its counts were
taken while the events were there).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from prognetwork.jobs.runner import JobInputError, JobSettings, Run

NAME = "usage-report"

_REPLACE_DAY = """
INSERT INTO usage_daily (day, tenant_id, type, events)
SELECT $1::date, tenant_id, type, count(*)
FROM events
WHERE occurred_at >= $2 AND occurred_at < $3 AND tenant_id IS NOT NULL
GROUP BY tenant_id, type
"""


def _day(value: str) -> date:
    return date.fromisoformat(value)


class UsageReport:
    name = NAME
    description = "Count events per tenant, per type, per UTC day into usage_daily (default: up to yesterday)"
    options = frozenset({"since", "until", "run_key"})

    def problems(self, settings: JobSettings, options: dict[str, Any]) -> list[str]:
        return []

    async def plan(self, conn: asyncpg.Connection, settings: JobSettings, options: dict[str, Any]) -> Run:
        until: date = options.get("until") or (datetime.now(UTC).date() - timedelta(days=1))
        since: date | None = options.get("since")
        if since is None:
            last = await conn.fetchval("SELECT max(day) FROM usage_daily")
            if last is not None:
                since = last + timedelta(days=1)
            else:
                oldest = await conn.fetchval("SELECT min(occurred_at) FROM events")
                since = oldest.astimezone(UTC).date() if oldest is not None else until
        if until >= datetime.now(UTC).date():
            raise JobInputError(f"--until {until} has not ended yet (UTC); report up to yesterday at most")
        run_key = options.get("run_key") or f"{since.isoformat()}..{until.isoformat()}"
        return Run(NAME, run_key, {"since": since.isoformat(), "until": until.isoformat()})

    async def prepare(self, conn: asyncpg.Connection, settings: JobSettings, run: Run) -> None:
        run.notes.update(days=0, skipped=0)

    async def step(self, conn: asyncpg.Connection, settings: JobSettings, run: Run) -> bool:
        day = _day(run.params["since"]) + timedelta(days=run.position)
        if day > _day(run.params["until"]):
            return False
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        async with conn.transaction():
            removed_until = await conn.fetchval("SELECT through_occurred_at FROM event_retention")
            if removed_until is not None and removed_until >= start:
                run.notes["skipped"] += 1
            else:
                await conn.execute("DELETE FROM usage_daily WHERE day = $1", day)
                await conn.execute(_REPLACE_DAY, day, start, start + timedelta(days=1))
                run.notes["days"] += 1
            await run.advance(conn, run.position + 1)
        return True

    def summary(self, run: Run) -> str:
        skipped = run.notes.get("skipped", 0)
        return (
            f"reported {run.notes.get('days', 0)} days ({run.params['since']} to {run.params['until']}) into usage_daily"
            + (f"; {skipped} days left as they were (their events are partly archived)" if skipped else "")
        )
