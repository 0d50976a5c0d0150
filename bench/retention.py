"""Event-log retention throughput: events archived and removed per second.

A throwaway database gets `--events` old events (one INSERT … SELECT generate_series; the
append-only trigger lets INSERT through), then `prog job run event-retention`'s code archives
them to a local directory in checkpointed chunks and removes them. The baseline, in the same run
on the same rows (inserted again): the least the work can cost, one COPY of every row as JSON
into one gzip file and one DELETE. Prints a table and, last, one JSON line.

    python bench/retention.py [--events 1000000] [--chunk-size 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers.jobs import fill_events  # noqa: E402

from bench.common import database  # noqa: E402
from prognetwork.jobs.retention import Retention  # noqa: E402
from prognetwork.jobs.runner import JobSettings, run_job  # noqa: E402
from prognetwork.kit.events import RETENTION_SETTING  # noqa: E402

OLD = datetime(2024, 1, 1, tzinfo=UTC)


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


async def retention(url: str, folder: Path, chunk_size: int) -> tuple[float, int]:
    settings = JobSettings(PROG_ENV="development", DATABASE_URL=url, EVENT_ARCHIVE_LOCATION=str(folder))
    started = time.perf_counter()
    outcome = await run_job(Retention(), settings, {"before": datetime.now(UTC), "chunk_size": chunk_size},
                            asyncio.Event())
    elapsed = time.perf_counter() - started
    assert outcome.state == "done", outcome
    return elapsed, outcome.run.notes["removed"]


async def baseline(url: str, folder: Path) -> tuple[float, int]:
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        with gzip.open(folder / "all.jsonl.gz", "wb") as out:

            async def write(data: bytes) -> None:
                out.write(data)

            await conn.copy_from_query("SELECT row_to_json(e)::text FROM events AS e ORDER BY seq", output=write)
        async with conn.transaction():
            last = await conn.fetchval("SELECT max(seq) FROM events")
            await conn.execute("SELECT set_config($1, $2, true)", RETENTION_SETTING, str(last))
            removed = int((await conn.execute("DELETE FROM events WHERE seq <= $1", last)).split()[-1])
        return time.perf_counter() - started, removed
    finally:
        await conn.close()


async def filled(url: str, count: int) -> float:
    started = time.perf_counter()
    await fill_events(url, count, OLD, 1)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE events")
    finally:
        await conn.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=10_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prog-bench-retention-"))
    try:
        with database() as url:
            fill_seconds = asyncio.run(filled(url, args.events))
            job_seconds, removed = asyncio.run(retention(url, work / "job", args.chunk_size))
            archive_bytes = size_of(work / "job")
            asyncio.run(filled(url, args.events))
            base_seconds, base_removed = asyncio.run(baseline(url, work / "baseline"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert removed == base_removed == args.events, (removed, base_removed)
    rate, base_rate = removed / job_seconds, base_removed / base_seconds
    print(f"{'':34}{'seconds':>10}{'events/s':>12}")
    print(f"{'generate (INSERT … generate_series)':34}{fill_seconds:>10.1f}{args.events / fill_seconds:>12,.0f}")
    print(f"{'retention job (chunks, manifests)':34}{job_seconds:>10.1f}{rate:>12,.0f}")
    print(f"{'baseline (one COPY, one DELETE)':34}{base_seconds:>10.1f}{base_rate:>12,.0f}")
    print(f"archive: {archive_bytes / 1e6:.1f} MB for {removed:,} events ({archive_bytes / removed:.0f} B/event)")
    print(json.dumps({
        "events": removed, "chunk_size": args.chunk_size, "seconds": round(job_seconds, 2),
        "events_per_second": round(rate), "baseline_events_per_second": round(base_rate),
        "ratio": round(rate / base_rate, 3), "archive_bytes": archive_bytes,
    }))


if __name__ == "__main__":
    main()
