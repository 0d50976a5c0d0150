"""`prog dr`: disaster-recovery drills (docs/runbooks/disaster-recovery.md says what to run for real)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

dr_app = typer.Typer(no_args_is_help=True, help="Disaster recovery: drills on a throwaway cluster.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dr_app.command("drill")
def drill(
    duration: Annotated[
        float, typer.Option(help="Seconds of writes before the node is destroyed", min=1.0)
    ] = 120.0,
    keep: Annotated[
        bool,
        typer.Option("--keep", help="Keep the drill's directory (data, repository, logs) for inspection"),
    ] = False,
    json_only: Annotated[bool, typer.Option("--json-only", help="Print only the JSON result line")] = False,
    archive_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds; overrides deploy/pgbackrest/archiving.conf's archive_timeout (30 s) for a short drill",
            min=1.0,
        ),
    ] = None,
    service: Annotated[
        list[str] | None, typer.Option(help="Services to run and restore (repeatable). Default: user-service")
    ] = None,
) -> None:
    """Lose a PostgreSQL node under load and restore it from pgBackRest, on this machine, against a
    throwaway cluster and Redis of its own; print the timeline and one JSON line with the measured
    RTO and RPO. Exit 1 if the drill could not run or a service did not answer after the restore."""
    from prognetwork.jobs.dr import DEFAULT_SERVICES, run_drill
    from prognetwork.jobs.dr_cluster import DrillError

    def show(line: str) -> None:
        if not json_only:
            out.print(line)

    try:
        report = run_drill(
            duration,
            keep=keep,
            services=tuple(service) if service else DEFAULT_SERVICES,
            archive_timeout=archive_timeout,
            show=show,
        )
    except DrillError as exc:
        err.print(f"[bold red]error:[/] drill failed: {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("[bold red]error:[/] drill interrupted; every process and directory it made is gone")
        raise typer.Exit(130) from None
    print(json.dumps(report.summary()), flush=True)
    if not report.services_answered:
        raise typer.Exit(1)
