"""The disaster-recovery drill: lose the database node under load, restore it, measure RTO and RPO.

On this machine, never touching the shared servers: a throwaway PostgreSQL cluster (15, as
deployed, where installed) archiving to a pgBackRest repository (`dr_cluster`), its own Redis, and
the platform's services as real processes (`prog serve`). Steps:

1. initdb, stanza-create, check (the archive works), `prog migrate`'s upgrade, a full backup;
2. start the services and write through them for `duration` seconds: registrations over HTTP
   (each appends `user.registered`) and events appended through `kit.events.append`, noting each
   one's commit (its id and the moment the commit returned);
3. destroy the node: SIGKILL every process of the cluster at once and delete its data directory
   (the services die with it: the platform is down);
4. `pgbackrest restore` (newest backup + every archived segment), start PostgreSQL, wait for the
   end of recovery, start the services, wait until every one is ready;
5. compare what was committed with what the restored database holds.

RTO is destruction → every service ready again. RPO is the width of the window of committed
writes that were lost: the age, at destruction, of the oldest lost write (every later write is
lost with it); 0 when nothing was lost. `archive_timeout` (deploy/pgbackrest/archiving.conf)
bounds it, plus the time a segment's push takes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from prognetwork.jobs.dr_cluster import RUN_MARKER, Cluster, DrillError, free_port, kill_all, remove_tree

DEFAULT_SERVICES = ("user-service",)
TICK_TYPE = "drill.tick"
TICK_SECONDS = 0.05  # about 20 events a second: a steady stream, light on two cores
REGISTRATION_SECONDS = 0.5  # each costs an argon2id hash (19 MiB)
READY_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class Write:
    """A write the platform acknowledged: its key (event id or email) and when the ack came."""

    key: str
    committed_at: float  # time.time()


@dataclass
class Report:
    """What a drill measured; `summary()` is the JSON line."""

    rto_seconds: float
    rpo_seconds: float
    events_committed: int
    events_recovered: int
    events_lost: int
    registrations_committed: int
    registrations_recovered: int
    services_answered: bool
    destroyed_at: float
    timeline: list[tuple[float, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "rto_seconds": round(self.rto_seconds, 2),
            "rpo_seconds": round(self.rpo_seconds, 2),
            "events_committed": self.events_committed,
            "events_recovered": self.events_recovered,
            "events_lost": self.events_lost,
            "registrations_committed": self.registrations_committed,
            "registrations_recovered": self.registrations_recovered,
            "services_answered": self.services_answered,
        }


@dataclass
class Timeline:
    """Steps with their offset from the drill's start, shown as they happen."""

    show: Callable[[str], None]
    started: float = field(default_factory=time.monotonic)
    steps: list[tuple[float, str]] = field(default_factory=list)

    def __call__(self, step: str) -> None:
        offset = time.monotonic() - self.started
        self.steps.append((offset, step))
        self.show(f"{offset:8.1f}s  {step}")


@dataclass
class Service:
    name: str
    port: int
    ops_port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def run_drill(
    duration: float,
    *,
    keep: bool = False,
    services: tuple[str, ...] = DEFAULT_SERVICES,
    archive_timeout: float | None = None,
    show: Callable[[str], None] = lambda line: None,
) -> Report:
    """Run the whole drill; every process and directory it made is gone afterwards (the directory
    is kept with `keep`), however it ends — error, Ctrl-C or SIGTERM included."""
    if duration <= 0:
        raise DrillError(f"--duration must be positive (got {duration})")
    _check_services(services)
    run_id = uuid.uuid4().hex
    os.environ[RUN_MARKER] = run_id  # inherited by every process started from here on
    timeline = Timeline(show)
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="prog-dr-"))
    root.chmod(0o711)  # PostgreSQL's own user (when we are root) reaches its folder inside
    try:
        with ExitStack() as cleanup:
            cleanup.callback(os.environ.pop, RUN_MARKER, None)
            cleanup.callback(lambda: show(f"kept {root} for inspection") if keep else remove_tree(root, show))
            cleanup.callback(kill_all, RUN_MARKER, run_id)  # the last word: whatever is left
            return _drill(root, run_id, duration, services, archive_timeout, timeline, cleanup)
    finally:
        signal.signal(signal.SIGTERM, previous_term)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _drill(
    root: Path,
    run_id: str,
    duration: float,
    names: tuple[str, ...],
    archive_timeout: float | None,
    step: Timeline,
    cleanup: ExitStack,
) -> Report:
    from prognetwork.kit import migrations

    cluster = Cluster(root / "node", uuid.uuid4().hex, run_id, archive_timeout=archive_timeout)
    cluster.root.mkdir()
    cleanup.callback(cluster.stop)
    cluster.prepare()
    cluster.start()
    cluster.create_database()
    timeout = (
        f"archive_timeout {archive_timeout:g}s" if archive_timeout else "deploy/pgbackrest's archive_timeout"
    )
    major = (cluster.data / "PG_VERSION").read_text().strip()
    step(f"PostgreSQL {major} on 127.0.0.1:{cluster.port}, archiving to {cluster.repository} ({timeout})")
    cluster.backrest("stanza-create", what="pgbackrest stanza-create")
    cluster.backrest("check", what="pgbackrest check")
    step("stanza created; `pgbackrest check` archived a segment")
    migrations.upgrade(cluster.url)
    step("schema migrated (what `prog migrate` runs)")
    cluster.backrest("--type=full", "backup", what="pgbackrest backup")
    step("full base backup taken")

    redis = _start_redis(root / "redis", run_id)
    cleanup.callback(_stop, redis)
    env = _service_env(cluster.url, f"redis://127.0.0.1:{redis.port}/0", root / "state", root / "logs")
    running = _start_services(names, env, root / "logs", cleanup)
    step(f"services ready: {', '.join(names)}; writing for {duration:g}s")

    ticks: list[Write] = []
    registrations: list[Write] = []
    user_service = next((s for s in running if s.name == "user-service"), None)
    destroyed_at, destroyed, killed = asyncio.run(
        _write_then_destroy(cluster, running, user_service, duration, ticks, registrations, step)
    )
    step(
        f"writers stopped: {len(ticks)} events and {len(registrations)} registrations committed "
        f"before the loss; {killed} processes of the node were killed"
    )

    cluster.restore()
    step("pgbackrest restore done")
    cluster.start()
    step("PostgreSQL recovered to the end of the archive and accepts writes")
    running = _start_services(names, env, root / "logs", cleanup)
    ready = time.monotonic()
    step(f"services ready again: {', '.join(names)}")

    recovered_ticks, recovered_emails = asyncio.run(_recovered(cluster.url, ticks, registrations))
    answered = asyncio.run(_services_answer(running, user_service is not None))
    step("services answered after restore" if answered else "a service did NOT answer after restore")
    lost = [w for w in ticks if w.key not in recovered_ticks]
    lost += [w for w in registrations if w.key not in recovered_emails]
    rpo = destroyed_at - min(w.committed_at for w in lost) if lost else 0.0
    return Report(
        rto_seconds=ready - destroyed,
        rpo_seconds=max(rpo, 0.0),
        events_committed=len(ticks),
        events_recovered=sum(1 for w in ticks if w.key in recovered_ticks),
        events_lost=sum(1 for w in ticks if w.key not in recovered_ticks),
        registrations_committed=len(registrations),
        registrations_recovered=sum(1 for w in registrations if w.key in recovered_emails),
        services_answered=answered,
        destroyed_at=destroyed_at,
        timeline=step.steps,
    )


def _service_env(database_url: str, redis_url: str, state: Path, logs: Path) -> dict[str, str]:
    logs.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGBACKREST_"))}
    env.update(
        {
            "PROG_ENV": "development",
            "PROG_STATE_DIR": str(state),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "LOG_FORMAT": "json",
            "SECRETS_BACKEND": "env",
            # Nothing reaches the drill's services but the drill itself.
            "LOGIN_ATTEMPTS_PER_ADDRESS": "100000",
        }
    )
    for name in ("JWT_SIGNING_KEYS", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        env.pop(name, None)
    return env


def _start_redis(directory: Path, run_id: str) -> Service:
    from prognetwork.kit import local

    directory.mkdir()
    binary = shutil.which("redis-server") or str(local.redis_binary())
    port = free_port()
    log = (directory / "redis.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - a redis-server binary, fixed arguments, no shell
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--daemonize",
            "no",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, RUN_MARKER: run_id},
    )
    log.close()  # the child has its own copy
    deadline = time.monotonic() + 15
    while not _accepts(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise DrillError(f"Redis did not start on port {port}; see {directory / 'redis.log'}")
        time.sleep(0.05)
    return Service("redis", port, port, process)


def _accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _check_services(names: tuple[str, ...]) -> None:
    from prognetwork.registry import services

    known = services()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DrillError(
            f"unknown service {', '.join(unknown)}: use --service with one of {', '.join(known)}"
        )


def _start_services(
    names: tuple[str, ...], env: dict[str, str], logs: Path, cleanup: ExitStack
) -> list[Service]:
    from prognetwork.kit.process import NotReady, spawn, wait_ready

    started = []
    for name in names:
        port, ops_port = free_port(), free_port()
        output: IO[bytes] = open(logs / f"{name}-{port}.log", "wb")  # noqa: SIM115 - closed below, once the child has it
        child = spawn(name, port, ops_port, env, output=output, own_session=True)
        output.close()
        service = Service(name, port, ops_port, child)
        cleanup.callback(_stop, service)
        started.append(service)
    try:
        wait_ready({s.name: (s.process, f"http://127.0.0.1:{s.ops_port}") for s in started}, READY_TIMEOUT)
    except NotReady as exc:
        raise DrillError(f"{exc}; see the logs in {logs} (--keep keeps them)") from None
    return started


def _stop(service: Service) -> None:
    if service.process.poll() is None:
        service.process.terminate()
        try:
            service.process.wait(20)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait(5)


async def _write_then_destroy(
    cluster: Cluster,
    services: list[Service],
    user_service: Service | None,
    duration: float,
    ticks: list[Write],
    registrations: list[Write],
    step: Timeline,
) -> tuple[float, float, int]:
    """Write for `duration` seconds, then destroy the node while writes are in flight; when (wall
    clock, monotonic) and how many processes were killed."""
    from prognetwork.kit import db

    engine = db.create_engine(cluster.url, pool_size=2)
    sessions = db.sessionmaker(engine)
    stop = asyncio.Event()
    writers = [asyncio.create_task(_append_ticks(sessions, ticks, stop))]
    if user_service is not None:
        writers.append(asyncio.create_task(_register(user_service.url, registrations, stop)))
    try:
        done, _ = await asyncio.wait(writers, timeout=duration, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # a writer failing before the node is lost is the drill failing
        stop.set()
        destroyed_at, destroyed = time.time(), time.monotonic()
        killed = cluster.destroy()
        step("node destroyed: every PostgreSQL process SIGKILLed, data directory deleted")
        for service in services:  # they ran on the platform that just lost its database
            service.process.kill()
            service.process.wait(10)
        await asyncio.gather(*writers, return_exceptions=True)
    finally:
        stop.set()
        for task in writers:
            task.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        await engine.dispose(close=False)
    # A write acknowledged while the kill was under way is counted as what it was: acknowledged.
    return destroyed_at, destroyed, killed


async def _append_ticks(sessions: Any, ticks: list[Write], stop: asyncio.Event) -> None:
    from prognetwork.kit import events

    n = 0
    while not stop.is_set():
        try:
            async with sessions() as session, session.begin():
                event = await events.append(session, TICK_TYPE, {"n": n})
        except Exception:
            if stop.is_set():
                return
            raise
        ticks.append(Write(str(event.id), time.time()))
        n += 1
        await asyncio.sleep(TICK_SECONDS)


async def _register(url: str, registrations: list[Write], stop: asyncio.Event) -> None:
    import aiohttp

    run = uuid.uuid4().hex[:8]
    n = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        while not stop.is_set():
            email = f"drill-{run}-{n}@example.com"
            body = {"email": email, "password": "drill password 0123", "name": f"Drill {n}"}
            try:
                async with http.post(f"{url}/v1/auth/register", json=body) as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                if stop.is_set():
                    return
                raise
            if status != 202:
                if stop.is_set():
                    return
                raise DrillError(f"registration answered {status} before the node was lost")
            registrations.append(Write(email, time.time()))
            n += 1
            await asyncio.sleep(REGISTRATION_SECONDS)


async def _recovered(url: str, ticks: list[Write], registrations: list[Write]) -> tuple[set[str], set[str]]:
    import asyncpg

    from prognetwork.kit import events

    connection = await asyncpg.connect(url)
    try:
        # A committed event may have been restored still pending: it is recovered, and in the log
        # once sequenced (here, rather than waiting for a service's sequencer).
        await events.sequence_all(connection)
        ids = await connection.fetch("SELECT id::text FROM events WHERE type = $1", TICK_TYPE)
        emails = await connection.fetch(
            "SELECT email FROM users WHERE email = ANY($1::text[])", [w.key for w in registrations]
        )
    finally:
        await connection.close()
    return {r[0] for r in ids}, {r[0] for r in emails}


async def _services_answer(services: list[Service], registers: bool) -> bool:
    """Every service ready, and (with the user service) a new registration accepted."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for service in services:
            async with http.get(f"http://127.0.0.1:{service.ops_port}/readiness") as response:
                if response.status != 200:
                    return False
            if service.name == "user-service" and registers:
                body = {
                    "email": f"after-{uuid.uuid4().hex[:8]}@example.com",
                    "password": "drill password 0123",
                    "name": "After",
                }
                async with http.post(f"{service.url}/v1/auth/register", json=body) as response:
                    if response.status != 202:
                        return False
    return True
