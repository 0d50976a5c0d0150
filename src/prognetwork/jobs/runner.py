"""Checkpointed batch jobs that a spot node's reclaim cannot spoil.

A job is a sequence of chunks. Each chunk commits its own writes and the run's new position
(`job_checkpoints`) in one PostgreSQL transaction, or writes outside PostgreSQL only under names
derived from the chunk, so doing a chunk again rewrites the same thing. Either way a run killed
at any instant (kill -9 included) and started again resumes from its last committed chunk and
ends with exactly the result of an uninterrupted run.

SIGTERM (a spot interruption notice, a node drain) lets the chunk in progress finish, or
abandons it (its transaction rolled back) when it would outlast `JOB_GRACE_SECONDS`; the run is
then marked `stopped` and the process exits 0. Starting it again resumes it.

One run of a job at a time: a session-level advisory lock per job name; a second start says so
and exits 0 (a CronJob's overlapping run has nothing to add).
"""

from __future__ import annotations

import asyncio
import json
import signal
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import structlog
from pydantic import Field

from prognetwork.kit.settings import Settings

log = structlog.get_logger("prognetwork.jobs")

# Kept back from the grace period for rolling back an abandoned chunk and flushing the checkpoint.
FLUSH_RESERVE_FRACTION = 0.1
LOCK_NAMESPACE = 0x6A6F62  # "job": advisory lock keys are this and a hash of the job's name


class JobSettings(Settings):
    """What batch jobs read besides the shared settings (PostgreSQL first of all)."""

    # How long the event log keeps an event before retention archives and removes it.
    event_retention_days: int = Field(400, alias="EVENT_RETENTION_DAYS", ge=1)
    # Where removed events are archived: a directory, or s3://bucket/prefix. Development: the state folder.
    event_archive_location: str | None = Field(None, alias="EVENT_ARCHIVE_LOCATION")
    # From SIGTERM to exit; a spot instance is reclaimed 120 s after its notice.
    job_grace_seconds: float = Field(120.0, alias="JOB_GRACE_SECONDS", gt=0)
    # Events per retention chunk: one archive object, one transaction.
    job_chunk_size: int = Field(10_000, alias="JOB_CHUNK_SIZE", ge=1, le=1_000_000)

    @property
    def archive_location(self) -> str:
        return self.event_archive_location or str(Path(self.state_dir) / "event-archive")


class JobInputError(ValueError):
    """An option a job cannot work with; the message says what is wrong and how to fix it."""


@dataclass
class Run:
    """One run of a job: its key, what it was started with, and how far its committed chunks got."""

    job: str
    run_key: str
    params: dict[str, Any]
    position: int = 0
    chunks: int = 0
    state: str = "running"
    resumed: bool = False
    notes: dict[str, Any] = field(default_factory=dict)  # the job's running totals, for its summary

    async def advance(self, conn: asyncpg.Connection, position: int) -> None:
        """Record `position` inside the chunk's own transaction: it commits iff the chunk does."""
        await conn.execute(
            "UPDATE job_checkpoints SET position = $3, chunks = chunks + 1, updated_at = now() "
            "WHERE job = $1 AND run_key = $2",
            self.job,
            self.run_key,
            position,
        )
        self.position = position
        self.chunks += 1


class Job(Protocol):
    name: str
    description: str
    options: frozenset[str]  # the `prog job run` options it takes

    def problems(self, settings: JobSettings, options: dict[str, Any]) -> list[str]:
        """What makes this configuration unfit for this job (checked before anything runs)."""
        ...

    async def plan(self, conn: asyncpg.Connection, settings: JobSettings, options: dict[str, Any]) -> Run:
        """The run these options ask for: its key and parameters (a resumed run keeps its stored ones)."""
        ...

    async def prepare(self, conn: asyncpg.Connection, settings: JobSettings, run: Run) -> None:
        """Undo what an interrupted chunk left outside PostgreSQL, before the first chunk."""
        ...

    async def step(self, conn: asyncpg.Connection, settings: JobSettings, run: Run) -> bool:
        """Do one chunk (committing it with `run.advance`); False when there was nothing left."""
        ...

    def summary(self, run: Run) -> str: ...


@dataclass(frozen=True)
class Outcome:
    run: Run
    state: str  # done, stopped, busy (another run holds the job), already-done

    @property
    def finished(self) -> bool:
        return self.state in ("done", "already-done")


def session_settings(job: str) -> dict[str, str]:
    # A run whose node vanished (no FIN, no RST) leaves its session, the job's advisory lock and
    # an open transaction behind; keepalives end them within about a minute, not hours.
    return {
        "application_name": f"prog-job-{job}",
        "tcp_keepalives_idle": "30",
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "3",
    }


def lock_key(job: str) -> int:
    return (LOCK_NAMESPACE << 32) | zlib.crc32(job.encode())


async def _checkpoint(conn: asyncpg.Connection, job: str, run_key: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT position, state, params, chunks FROM job_checkpoints WHERE job = $1 AND run_key = $2",
        job,
        run_key,
    )


async def start_run(conn: asyncpg.Connection, run: Run) -> Run:
    """The stored run under `run`'s key if there is one (resumed with its own parameters), else `run`, stored."""
    stored = await _checkpoint(conn, run.job, run.run_key)
    if stored is None:
        await conn.execute(
            "INSERT INTO job_checkpoints (job, run_key, params) VALUES ($1, $2, $3)",
            run.job,
            run.run_key,
            json.dumps(run.params),
        )
        return run
    await conn.execute(
        "UPDATE job_checkpoints SET state = 'running', updated_at = now() "
        "WHERE job = $1 AND run_key = $2 AND state <> 'done'",
        run.job,
        run.run_key,
    )
    return Run(
        run.job,
        run.run_key,
        json.loads(stored["params"]),
        position=stored["position"],
        chunks=stored["chunks"],
        state=stored["state"],
        resumed=True,
    )


async def _set_state(dsn: str, run: Run, state: str) -> None:
    # A connection of its own: the job's may be mid-way through an abandoned chunk.
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        # Bounded: an abandoned chunk's session may still hold the row until PostgreSQL ends it.
        await conn.execute("SET statement_timeout = '5s'")
        await conn.execute(
            "UPDATE job_checkpoints SET state = $3, updated_at = now() WHERE job = $1 AND run_key = $2",
            run.job,
            run.run_key,
            state,
        )
    except asyncpg.QueryCanceledError:
        log.warning("job.state_not_recorded", job=run.job, run_key=run.run_key, state=state)
    finally:
        await conn.close()


async def run_job(
    job: Job,
    settings: JobSettings,
    options: dict[str, Any],
    stop: asyncio.Event,
    *,
    on_progress: Callable[[Run], Awaitable[None] | None] | None = None,
) -> Outcome:
    """Run `job` until it is done or `stop` is set; see the module docstring."""
    dsn = settings.database_dsn
    conn = await asyncpg.connect(dsn, timeout=10, server_settings=session_settings(job.name))
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(job.name)):
            return Outcome(Run(job.name, "", {}), "busy")
        run = await start_run(conn, await job.plan(conn, settings, options))
        if run.state == "done":
            return Outcome(run, "already-done")
        await job.prepare(conn, settings, run)
        while not stop.is_set():
            chunk = asyncio.ensure_future(job.step(conn, settings, run))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({chunk, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not chunk.done():
                # SIGTERM arrived mid-chunk: finish it if it can end well within the grace period.
                budget = settings.job_grace_seconds * (1 - FLUSH_RESERVE_FRACTION)
                done, _ = await asyncio.wait({chunk}, timeout=budget)
                if not done:
                    chunk.cancel()
                    await asyncio.gather(chunk, return_exceptions=True)
                    log.warning(
                        "job.chunk_abandoned", job=job.name, run_key=run.run_key, position=run.position
                    )
                    conn.terminate()  # its transaction is rolled back by PostgreSQL
                    await _set_state(dsn, run, "stopped")
                    return Outcome(run, "stopped")
            more = chunk.result()
            if on_progress is not None:
                progress = on_progress(run)
                if progress is not None:
                    await progress
            if not more:
                await _set_state(dsn, run, "done")
                run.state = "done"
                return Outcome(run, "done")
        await _set_state(dsn, run, "stopped")
        run.state = "stopped"
        return Outcome(run, "stopped")
    finally:
        if not conn.is_closed():
            await conn.close()  # the advisory lock goes with the session


def run_until_signalled(job: Job, settings: JobSettings, options: dict[str, Any]) -> Outcome:
    """`run_job` in a fresh event loop, SIGTERM and SIGINT asking it to stop."""

    async def main() -> Outcome:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run_job(job, settings, options, stop)

    return asyncio.run(main())


async def recent_runs(settings: JobSettings, limit: int = 20) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_dsn, timeout=10)
    try:
        return list(
            await conn.fetch(
                "SELECT job, run_key, state, position, chunks, started_at, updated_at FROM job_checkpoints "
                "ORDER BY updated_at DESC LIMIT $1",
                limit,
            )
        )
    finally:
        await conn.close()
