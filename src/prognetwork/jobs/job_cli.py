"""`prog job`: list the batch jobs and run one (checkpointed, resumable, SIGTERM-safe)."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import UTC, date, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from prognetwork.jobs.retention import Retention
from prognetwork.jobs.runner import Job, JobInputError, JobSettings, recent_runs, run_until_signalled
from prognetwork.jobs.storage import StorageError
from prognetwork.jobs.usage_report import UsageReport

JOBS: dict[str, Job] = {job.name: job for job in (Retention(), UsageReport())}

job_app = typer.Typer(no_args_is_help=True, help="Run checkpointed batch jobs (retention, usage report).")
out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _settings() -> JobSettings:
    from pydantic import ValidationError

    from prognetwork.cli import _platform_settings

    try:
        settings = _platform_settings(JobSettings)
    except ValidationError as exc:  # pragma: no cover - _platform_settings reports these itself
        raise fail(str(exc)) from None
    problems = settings.problems(needs=("postgres",))
    if problems:
        raise fail("; ".join(problems))
    return settings


def _moment(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise fail(
            f"--before: {value!r} is not an ISO 8601 date or time (e.g. 2025-01-31T00:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise fail(f"{option}: {value!r} is not a date (YYYY-MM-DD)") from None


@job_app.command("list")
def list_jobs() -> None:
    """The jobs there are, and the latest runs (when PostgreSQL can be reached)."""
    for job in JOBS.values():
        out.print(f"{job.name:16} {job.description}", highlight=False, soft_wrap=True)
    settings = _settings()
    try:
        runs = asyncio.run(recent_runs(settings))
    except (OSError, asyncpg_errors()) as exc:
        err.print(f"(latest runs unknown: cannot reach PostgreSQL, {type(exc).__name__})", highlight=False)
        return
    if runs:
        table = Table("job", "run", "state", "position", "chunks", "updated")
        for row in runs:
            table.add_row(
                row["job"],
                row["run_key"],
                row["state"],
                str(row["position"]),
                str(row["chunks"]),
                row["updated_at"].isoformat(timespec="seconds"),
            )
        out.print(table)


def asyncpg_errors() -> type[Exception]:
    import asyncpg

    return asyncpg.PostgresError


@job_app.command("run")
def run(
    name: Annotated[str, typer.Argument(help=f"The job: {', '.join(JOBS)}")],
    before: Annotated[
        str | None,
        typer.Option(
            help="event-retention: remove events older than this ISO time (default: EVENT_RETENTION_DAYS)"
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="usage-report: first day (default: after the last reported)")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="usage-report: last day (default: yesterday, UTC)")
    ] = None,
    chunk_size: Annotated[
        int | None,
        typer.Option(min=1, max=1_000_000, help="event-retention: events per chunk (JOB_CHUNK_SIZE)"),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(help="event-retention: a directory or s3://bucket/prefix (EVENT_ARCHIVE_LOCATION)"),
    ] = None,
    run_key: Annotated[
        str | None, typer.Option(help="Resume this run (default: derived from the options)")
    ] = None,
) -> None:
    """Run a job to completion, resuming its run if one was interrupted. SIGTERM stops it cleanly
    (exit 0, checkpoint kept); start it again to resume."""
    if name not in JOBS:
        raise fail(f"unknown job {name!r}; choose one of: {', '.join(JOBS)} (see `prog job list`)")
    job = JOBS[name]
    given: dict[str, Any] = {
        "before": _moment(before) if before else None,
        "since": _date(since, "--since") if since else None,
        "until": _date(until, "--until") if until else None,
        "chunk_size": chunk_size,
        "target": target,
        "run_key": run_key,
    }
    options = {key: value for key, value in given.items() if value is not None}
    unknown = sorted(set(options) - job.options)
    if unknown:
        flags = ", ".join("--" + key.replace("_", "-") for key in unknown)
        raise fail(
            f"{name} takes no {flags}; it takes: {', '.join('--' + o.replace('_', '-') for o in sorted(job.options))}"
        )
    settings = _settings()
    problems = job.problems(settings, options)
    if problems:
        raise fail("; ".join(problems))
    try:
        outcome = run_until_signalled(job, settings, options)
    except JobInputError as exc:
        raise fail(str(exc)) from None
    except StorageError as exc:
        raise fail(
            f"the archive cannot be written: {exc}; check EVENT_ARCHIVE_LOCATION or --target", 1
        ) from None
    except (ConnectionError, TimeoutError, socket.gaierror, asyncpg_errors()) as exc:
        raise fail(f"cannot reach PostgreSQL ({type(exc).__name__}: {exc}); check DATABASE_URL", 1) from None
    except OSError as exc:
        raise fail(f"{exc}; check EVENT_ARCHIVE_LOCATION or --target, and DATABASE_URL", 1) from None
    run_ = outcome.run
    if outcome.state == "busy":
        out.print(f"{name}: another run is in progress; nothing to do", highlight=False)
    elif outcome.state == "already-done":
        out.print(f"{name}: run {run_.run_key} already finished; nothing to do", highlight=False)
    elif outcome.state == "stopped":
        out.print(
            f"{name}: stopped at position {run_.position} of run {run_.run_key} (pid {os.getpid()}); "
            "start it again to resume",
            highlight=False,
            soft_wrap=True,
        )
    else:
        out.print(f"{name}: {job.summary(run_)}", highlight=False, soft_wrap=True)
