"""`prog job run` as real processes, interrupted the ways a spot node interrupts them (SIGTERM
between chunks, SIGTERM during a chunk that cannot finish in time, kill -9 during a chunk), then
run again to completion: the result equals an uninterrupted run's on an identical copy."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from tests.helpers.jobs import TENANTS, archive_files, database_copy, fill_events, migrated_database, prog_job
from tests.helpers.polling import eventually_async

OLD = datetime(2024, 1, 1, tzinfo=UTC)
GRACE_SECONDS = 3.0  # short, so the test of a chunk outlasting it is quick
EXIT_TIMEOUT = 60.0


@pytest.fixture
def database(servers):
    with migrated_database(servers.pg_admin_url, "prog_test_batch") as url:
        yield url


def job_env(url: str, tmp_path) -> dict[str, str]:
    return {"PROG_ENV": "development", "DATABASE_URL": url, "PROG_STATE_DIR": str(tmp_path / "state"),
            "JOB_GRACE_SECONDS": str(GRACE_SECONDS), "LOG_LEVEL": "WARNING"}


async def fetch(url: str, sql: str, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchrow(sql, *args)
    finally:
        await conn.close()


async def checkpoint(url: str, job: str):
    return await fetch(url, "SELECT position, state, chunks FROM job_checkpoints WHERE job = $1", job)


async def exit_code(process) -> int:
    return await asyncio.to_thread(process.wait, EXIT_TIMEOUT)


async def job_session_waits_on_a_lock(url: str, job: str) -> bool:
    row = await fetch(url, "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1 "
                           "AND wait_event_type = 'Lock'", f"prog-job-{job}")
    return row["n"] > 0


async def job_session_gone(url: str, job: str) -> bool:
    row = await fetch(url, "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1", f"prog-job-{job}")
    return row["n"] == 0


async def progressed(url: str, job: str, beyond: int) -> bool:
    row = await checkpoint(url, job)
    return row is not None and row["chunks"] >= beyond


async def holding(url: str, sql: str) -> tuple[asyncpg.Connection, asyncpg.transaction.Transaction]:
    """A transaction holding the row lock `sql` takes, so the job's next chunk waits on it."""
    conn = await asyncpg.connect(url)
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute(sql)
    return conn, transaction


async def release(held: tuple[asyncpg.Connection, asyncpg.transaction.Transaction]) -> None:
    await held[1].rollback()
    await held[0].close()


async def test_retention_interrupted_three_ways_ends_exactly_as_an_uninterrupted_run(database, servers, tmp_path):
    await fill_events(database, 8_000, OLD, 30)
    args = ["run", "event-retention", "--before", "2024-06-01T00:00:00Z", "--chunk-size", "100"]
    log = tmp_path / "jobs.log"
    env = job_env(database, tmp_path)
    with database_copy(servers.pg_admin_url, database) as copy:
        whole = prog_job([*args, "--target", str(tmp_path / "whole")], job_env(copy, tmp_path), log)
        assert await exit_code(whole) == 0, log.read_text()[-3000:]
        expected_events = await fetch(copy, "SELECT count(*) AS n, min(seq) AS first FROM events")
        expected_mark = await fetch(copy, "SELECT through_seq, removed FROM event_retention")

        target = ["--target", str(tmp_path / "resumed")]
        # 1. SIGTERM between chunks: the chunk in progress finishes, the checkpoint says stopped, exit 0.
        job = prog_job([*args, *target], env, log)
        await eventually_async(lambda: progressed(database, "event-retention", 3), timeout=60, what="3 chunks")
        job.send_signal(signal.SIGTERM)
        assert await exit_code(job) == 0, log.read_text()[-3000:]
        first = await checkpoint(database, "event-retention")
        assert first["state"] == "stopped" and 0 < first["position"] < 8_000
        assert "start it again to resume" in log.read_text()

        # 2. SIGTERM while a chunk cannot finish within the grace period: it is abandoned, exit 0.
        job = prog_job([*args, *target], env, log)
        await eventually_async(lambda: progressed(database, "event-retention", first["chunks"] + 3), timeout=60,
                               what="3 more chunks")
        held = await holding(database, "SELECT * FROM event_retention FOR UPDATE")
        try:
            await eventually_async(lambda: job_session_waits_on_a_lock(database, "event-retention"), timeout=30,
                                   what="the job to wait in a chunk")
            job.send_signal(signal.SIGTERM)
            assert await exit_code(job) == 0, log.read_text()[-3000:]
            second = await checkpoint(database, "event-retention")
            assert second["state"] == "stopped" and first["position"] < second["position"] < 8_000
        finally:
            await release(held)
        await eventually_async(lambda: job_session_gone(database, "event-retention"), timeout=30,
                               what="the abandoned chunk's session to end")

        # 3. kill -9 in the middle of a chunk, after its archive object was written.
        job = prog_job([*args, *target], env, log)
        await eventually_async(lambda: progressed(database, "event-retention", second["chunks"] + 3), timeout=60,
                               what="3 more chunks")
        held = await holding(database, "SELECT * FROM event_retention FOR UPDATE")
        try:
            await eventually_async(lambda: job_session_waits_on_a_lock(database, "event-retention"), timeout=30,
                                   what="the job to wait in a chunk")
            job.kill()
            assert await exit_code(job) == -signal.SIGKILL
        finally:
            await release(held)
        await eventually_async(lambda: job_session_gone(database, "event-retention"), timeout=30,
                               what="the killed job's session to end")
        assert (await checkpoint(database, "event-retention"))["state"] == "running"

        # 4. Run again to completion.
        job = prog_job([*args, *target], env, log)
        assert await exit_code(job) == 0, log.read_text()[-3000:]
        assert (await checkpoint(database, "event-retention"))["state"] == "done"
        assert await fetch(database, "SELECT count(*) AS n, min(seq) AS first FROM events") == expected_events
        assert await fetch(database, "SELECT through_seq, removed FROM event_retention") == expected_mark

    resumed, uninterrupted = archive_files(tmp_path / "resumed"), archive_files(tmp_path / "whole")
    assert resumed == uninterrupted
    archived = [line for name, lines in resumed.items() if name.endswith(".gz") for line in lines]
    assert len(archived) == len(set(archived)) == expected_mark["removed"] > 0


async def test_usage_report_killed_mid_day_and_run_again_reports_each_day_once(database, servers, tmp_path):
    await fill_events(database, 5_000, OLD, 360)  # about 21 days
    blocked_day = date(2024, 1, 11)
    conn = await asyncpg.connect(database)
    try:  # a stale row for a day in the middle: the job replaces it, and the test can lock it
        await conn.execute("INSERT INTO usage_daily (day, tenant_id, type, events) VALUES ($1, $2, 'test.kind_0', -1)",
                           blocked_day, TENANTS[0])
    finally:
        await conn.close()
    args = ["run", "usage-report", "--since", "2024-01-01", "--until", "2024-01-25"]
    log = tmp_path / "jobs.log"
    report = "SELECT day, tenant_id, type, events FROM usage_daily ORDER BY day, tenant_id, type"
    with database_copy(servers.pg_admin_url, database) as copy:
        whole = prog_job(args, job_env(copy, tmp_path), log)
        assert await exit_code(whole) == 0, log.read_text()[-3000:]
        conn = await asyncpg.connect(copy)
        try:
            expected = [tuple(row) for row in await conn.fetch(report)]
        finally:
            await conn.close()

    held = await holding(database, f"SELECT * FROM usage_daily WHERE day = '{blocked_day}' FOR UPDATE")
    try:
        job = prog_job(args, job_env(database, tmp_path), log)
        await eventually_async(lambda: job_session_waits_on_a_lock(database, "usage-report"), timeout=60,
                               what="the job to reach the locked day")
        job.kill()
        assert await exit_code(job) == -signal.SIGKILL
    finally:
        await release(held)
    await eventually_async(lambda: job_session_gone(database, "usage-report"), timeout=30, what="its session to end")
    assert (await checkpoint(database, "usage-report"))["position"] == (blocked_day - date(2024, 1, 1)).days

    job = prog_job(args, job_env(database, tmp_path), log)
    assert await exit_code(job) == 0, log.read_text()[-3000:]
    conn = await asyncpg.connect(database)
    try:
        assert [tuple(row) for row in await conn.fetch(report)] == expected
    finally:
        await conn.close()
    days = {row[0] for row in expected}
    assert min(days) == date(2024, 1, 1) and max(days) <= date(2024, 1, 25) and -1 not in {row[3] for row in expected}
    assert sum(row[3] for row in expected) == 4_000  # every event that names a tenant (4 in 5), once
    assert max(days) - min(days) >= timedelta(days=20)
