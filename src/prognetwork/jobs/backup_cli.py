"""`prog backup …`: create, list, verify, restore and prune the platform database's backups.

Each command that succeeds ends with exactly one JSON line on stdout (what a CronJob's log keeps);
everything else (progress, what was removed, warnings) goes to stderr. A failure is one line on
stderr and a non-zero exit: 1 when a backup is bad or a database refuses, 2 when the command
cannot run (configuration, unreachable servers).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from prognetwork.jobs import backup, backup_metrics
from prognetwork.jobs.backup_settings import BackupSettings
from prognetwork.jobs.storage import StorageError, Target, open_target

backup_app = typer.Typer(
    no_args_is_help=True, help="Back up the platform database, and prove the backups restore."
)
err = Console(stderr=True)
T = TypeVar("T")

TargetOption = Annotated[
    str | None,
    typer.Option(
        "--target", help="A directory or s3://bucket/prefix. Default: BACKUP_TARGET, else .prog/backups"
    ),
]


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(code)


def _settings() -> BackupSettings:
    from prognetwork import cli

    return cli._platform_settings(BackupSettings)


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)  # noqa: T201 - the one JSON line on stdout


def _target(settings: BackupSettings, location: str | None) -> Target:
    try:
        return open_target(location or settings.target_location)
    except StorageError as exc:
        raise _fail(str(exc), 2) from None


def _run(work: Callable[[], T], failed: Callable[[], None] = lambda: None) -> T:
    """Run one operation; each kind of failure becomes one line and an exit status."""
    try:
        return work()
    except backup.BackupError as exc:
        failed()
        raise _fail(str(exc), 1) from None
    except StorageError as exc:
        failed()
        raise _fail(str(exc), 1) from None
    except (TimeoutError, OSError) as exc:
        failed()
        raise _fail(f"cannot reach PostgreSQL ({exc}); check DATABASE_URL", 2) from None
    except Exception as exc:
        failed()
        module = type(exc).__module__
        if module.startswith(("botocore", "boto3")):
            raise _fail(
                f"S3 refused or cannot be reached: {exc}; check BACKUP_TARGET and AWS settings", 2
            ) from None
        if module.startswith("asyncpg"):
            raise _fail(f"PostgreSQL refused: {exc}", 2) from None
        raise


@contextmanager
def _progress(enabled: bool) -> Iterator[backup.Progress | None]:
    if not (enabled and err.is_terminal):
        yield None
        return
    columns = (
        SpinnerColumn(),
        TextColumn("dumping"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("dump", total=None)
        yield lambda size: bar.update(task, completed=size)


@backup_app.command("create")
def create(target: TargetOption = None) -> None:
    """Dump the database (pg_dump, custom format) into the target, with a manifest written last."""
    settings = _settings()
    into = _target(settings, target)

    def failed() -> None:
        backup_metrics.push(
            settings.pushgateway_url, {backup_metrics.LAST_FAILURE: backup_metrics.now()}, quiet=True
        )

    with _progress(True) as progress:
        manifest = _run(
            lambda: asyncio.run(
                backup.create(settings.database_dsn, into, settings.backup_pg_bin_dir, progress)
            ),
            failed,
        )
    pushed = backup_metrics.push(
        settings.pushgateway_url,
        {
            backup_metrics.LAST_SUCCESS: backup_metrics.now(),
            backup_metrics.LAST_DURATION: manifest.duration_seconds,
            backup_metrics.LAST_SIZE: manifest.size,
        },
    )
    _emit(
        {
            "backup": manifest.id,
            "target": into.location,
            "dump": manifest.dump,
            "size": manifest.size,
            "sha256": manifest.sha256,
            "schema_revision": manifest.schema_revision,
            "tables": len(manifest.tables),
            "rows": sum(manifest.tables.values()),
            "events_last_seq": manifest.events_last_seq,
            "duration_seconds": manifest.duration_seconds,
            "metrics_pushed": pushed,
        }
    )


@backup_app.command("list")
def list_backups(
    target: TargetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array of manifests")] = False,
) -> None:
    """The complete backups (those with a manifest), oldest first."""
    settings = _settings()
    source = _target(settings, target)
    manifests = _run(lambda: backup.backups(source))
    if as_json:
        _emit({"target": source.location, "backups": [json.loads(m.to_json()) for m in manifests]})
        return
    table = Table("id", "created", "size", "schema", "rows", "last event")
    for column in table.columns:
        column.no_wrap = True
    for m in manifests:
        table.add_row(
            m.id, m.created_at, f"{m.size:,}", m.schema_revision or "-", f"{sum(m.tables.values()):,}",
            str(m.events_last_seq),
        )  # fmt: skip
    Console().print(table)
    if not manifests:
        err.print(f"no complete backup in {source.location}", highlight=False)


@backup_app.command("verify")
def verify(
    backup_id: Annotated[str, typer.Argument(metavar="ID", help="A backup id, or latest")] = "latest",
    target: TargetOption = None,
) -> None:
    """Restore a backup into a scratch database and check it against its manifest (checksum,
    schema revision, rows per table, the event log's last sequence); exit 1 naming what differs."""
    settings = _settings()
    source = _target(settings, target)

    def failed() -> None:
        backup_metrics.push(
            settings.pushgateway_url, {backup_metrics.LAST_VERIFY_FAILURE: backup_metrics.now()}, quiet=True
        )

    verdict = _run(
        lambda: asyncio.run(
            backup.verify(
                settings.database_dsn,
                settings.verify_server_dsn,
                source,
                backup_id,
                settings.backup_pg_bin_dir,
            )
        ),
        failed,
    )
    if not verdict.ok:
        failed()
        raise _fail(
            f"backup {verdict.manifest.id} differs from its manifest: {'; '.join(verdict.differences)}", 1
        )
    pushed = backup_metrics.push(
        settings.pushgateway_url,
        {
            backup_metrics.LAST_VERIFY_SUCCESS: backup_metrics.now(),
            backup_metrics.LAST_VERIFY_DURATION: verdict.duration_seconds,
        },
    )
    _emit(
        {
            "verified": verdict.manifest.id,
            "target": source.location,
            "tables": len(verdict.manifest.tables),
            "rows": sum(verdict.manifest.tables.values()),
            "events_last_seq": verdict.manifest.events_last_seq,
            "duration_seconds": verdict.duration_seconds,
            "metrics_pushed": pushed,
        }
    )


@backup_app.command("restore")
def restore(
    backup_id: Annotated[str, typer.Argument(metavar="ID", help="A backup id, or latest")],
    to: Annotated[str, typer.Option("--to", help="The database to restore into (a postgresql:// URL)")],
    force: Annotated[bool, typer.Option("--force", help="Replace what a non-empty database holds")] = False,
    target: TargetOption = None,
) -> None:
    """Restore a backup into a database, which must be empty unless --force."""
    from prognetwork.kit.settings import Settings

    settings = _settings()
    source = _target(settings, target)
    if not to.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
        raise _fail(f"--to must be a postgresql:// URL (got {to.split('://')[0]!r}://…)", 2)
    to_dsn = Settings(DATABASE_URL=to).database_dsn
    manifest = _run(
        lambda: asyncio.run(backup.restore(source, backup_id, to_dsn, force, settings.backup_pg_bin_dir))
    )
    _emit({"restored": manifest.id, "target": source.location, "database": to_dsn.rpartition("/")[2]})


@backup_app.command("prune")
def prune(
    target: TargetOption = None,
    daily: Annotated[int | None, typer.Option(min=1, help="Days to keep. Default: BACKUP_KEEP_DAILY")] = None,
    weekly: Annotated[int | None, typer.Option(min=0, help="Weeks. Default: BACKUP_KEEP_WEEKLY")] = None,
    monthly: Annotated[int | None, typer.Option(min=0, help="Months. Default: BACKUP_KEEP_MONTHLY")] = None,
    now: Annotated[datetime | None, typer.Option(hidden=True, help="Prune as at this time")] = None,
) -> None:
    """Keep the newest backup of each of the last N days, weeks and months; delete the others
    (and dumps of failed runs); print what was removed."""
    settings = _settings()
    source = _target(settings, target)
    removed = _run(
        lambda: backup.prune(
            source,
            daily or settings.backup_keep_daily,
            settings.backup_keep_weekly if weekly is None else weekly,
            settings.backup_keep_monthly if monthly is None else monthly,
            now.replace(tzinfo=now.tzinfo or UTC) if now else None,
        )
    )
    for name in removed:
        err.print(f"removed {name}", highlight=False)
    _emit({"target": source.location, "removed": removed, "kept": [m.id for m in backup.backups(source)]})
