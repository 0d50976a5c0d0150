"""`prog`: run, migrate and check the platform."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from prognetwork.jobs.backup_cli import backup_app
from prognetwork.jobs.dr_cli import dr_app
from prognetwork.jobs.job_cli import job_app
from prognetwork.kit import process
from prognetwork.kit.service import ServiceSpec
from prognetwork.kit.settings import Settings
from prognetwork.registry import services as registered

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Run, migrate and check ProgNetwork.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configuration.")
app.add_typer(config_app, name="config")
out = Console()
err = Console(stderr=True)

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


S = TypeVar("S", bound=Settings)


def load_settings(settings_class: type[S], **env: str) -> S:
    if env:
        os.environ.update(env)
    try:
        return settings_class()
    except ValidationError as exc:
        for e in exc.errors():
            field = ".".join(str(p) for p in e["loc"]).upper()
            err.print(f"[bold red]error:[/] {field + ': ' if field else ''}{e['msg']}", highlight=False)
        raise typer.Exit(2) from None


RUNNING_PLATFORM = "up.env"  # in the state folder while `prog up` runs embedded servers


def _platform_settings(settings_class: type[S]) -> S:
    """Settings for a command that works on the platform's data (`prog users`, `prog audit`): in
    development with no DATABASE_URL / REDIS_URL, those of the embedded servers `prog up` runs."""
    if os.environ.get("PROG_ENV", "development") == "development":
        running = Settings().state_dir / RUNNING_PLATFORM
        if running.exists():
            for line in running.read_text().splitlines():
                name, _, value = line.partition("=")
                if name in ("DATABASE_URL", "REDIS_URL") and not os.environ.get(name):
                    os.environ[name] = value
    return load_settings(settings_class)


def _spec(name: str) -> ServiceSpec:
    known = registered()
    if name not in known:
        raise fail(f"unknown service '{name}'; choose one of: {', '.join(known)}")
    return known[name]


SERVICE_NAMES = ", ".join(registered())


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help=f"One of: {SERVICE_NAMES}")],
    # All interfaces by default: a container's port is reached from outside its network namespace.
    host: Annotated[str, typer.Option(envvar="HOST")] = "0.0.0.0",  # noqa: S104
    port: Annotated[
        int | None, typer.Option(envvar="PORT", help="The API's port. Default: the service's own")
    ] = None,
    ops_port: Annotated[
        int | None,
        typer.Option(
            envvar="OPS_PORT", help="/health, /readiness, /metrics and /docs. Default: the service's ops port"
        ),
    ] = None,
    reload: Annotated[
        bool, typer.Option("--reload", help="Development: restart the service when a source file changes")
    ] = False,
    reload_dir: Annotated[
        Path | None, typer.Option(help="Watched by --reload. Default: the package's source")
    ] = None,
) -> None:
    """Run one service in this process (what containers run)."""
    spec = _spec(service)
    port = port or spec.port
    ops_port = ops_port or spec.ops_port
    if port == ops_port:
        raise fail(f"the ops port must differ from the API port ({port})")
    settings = load_settings(spec.settings)
    problems = settings.problems(spec.needs, spec.secrets)
    if problems:
        for problem in problems:
            err.print(f"[bold red]refusing to start ({settings.env}):[/] {problem}", highlight=False)
        raise typer.Exit(2)
    if reload:
        if not settings.is_development:
            raise fail("--reload is for development")
        _serve_reloading(service, host, port, ops_port, reload_dir)
        return
    from prognetwork.kit import tracing
    from prognetwork.kit.app import configure_logging
    from prognetwork.kit.server import serve as run_server

    configure_logging(spec.name, settings)
    tracing.configure(spec.name)  # before the app exists, so its clients are instrumented
    try:
        run_server(spec.create_app(settings), settings, host, port, ops_port)
    finally:
        tracing.shutdown()


def _serve_reloading(service: str, host: str, port: int, ops_port: int, directory: Path | None) -> None:
    """`prog serve` as a child process, restarted when a file under `directory` changes."""
    from watchfiles import run_process

    import prognetwork

    watched = directory or Path(prognetwork.__file__).parent
    command = [sys.executable, "-m", "prognetwork", "serve", service]
    command += ["--host", host, "--port", str(port), "--ops-port", str(ops_port)]
    out.print(f"{service}: restarting whenever a file under {watched} changes", highlight=False)
    # SIGTERM stops the watcher, which stops the child with SIGINT (no drain delay: development).
    run_process(
        watched,
        target=shlex.join(command),
        target_type="command",
        callback=lambda changes: err.print(f"{service}: {len(changes)} file(s) changed; restarting"),
    )


@app.command()
def migrate(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Bring the database schema up to date (safe to run from several replicas at once)."""
    from prognetwork.kit import migrations
    from prognetwork.kit.secrets import SecretsUnavailable

    settings = load_settings(Settings)
    try:
        migrations.upgrade(settings.database_dsn, revision)
    except SecretsUnavailable as exc:  # DATABASE_URL is in a secret store (SECRETS_BACKEND)
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot reach PostgreSQL ({exc}); check DATABASE_URL") from None
    out.print(f"schema at {revision}")


@config_app.command("check")
def config_check(
    env: Annotated[str | None, typer.Option(help="Check as this PROG_ENV")] = None,
    service: Annotated[list[str] | None, typer.Option(help="Only what these services need")] = None,
) -> None:
    """Say whether this environment's configuration is fit to run every service (or the ones named);
    list every problem of every service at once and exit 1 if there is any."""
    if env is not None and env not in ("development", "staging", "production"):
        raise fail(f"unknown environment '{env}'; use development, staging or production")
    specs = [_spec(s) for s in service] if service else list(registered().values())
    problems: dict[str, list[str]] = {}  # a problem, and the services it concerns
    for spec in specs:
        settings = load_settings(spec.settings, **({"PROG_ENV": env} if env else {}))
        for problem in settings.problems(spec.needs, spec.secrets):
            problems.setdefault(problem, []).append(spec.name)
    if problems:
        out.print(f"[bold red]{settings.env}: {len(problems)} problem(s)[/]", highlight=False)
        for problem, names in problems.items():
            out.print(f"  - {problem} [dim]({', '.join(names)})[/]", highlight=False)
        raise typer.Exit(1)
    out.print(f"[bold green]{settings.env}: configuration OK[/]", highlight=False)


@app.command()
def up(
    services: Annotated[list[str] | None, typer.Argument(help="Default: every service")] = None,
    port_offset: Annotated[
        int,
        typer.Option(
            envvar="PROG_PORT_OFFSET", help="Added to every service port (run two stacks side by side)"
        ),
    ] = 0,
    with_monitoring: Annotated[
        bool,
        typer.Option(
            "--with-monitoring", help="Also run Prometheus (with the alert rules) scraping every service"
        ),
    ] = False,
) -> None:
    """Run the whole platform on this machine, in the foreground; Ctrl-C stops it."""
    specs = {s.name: s for s in ([_spec(n) for n in services] if services else registered().values())}
    names = list(specs)
    ports = {name: spec.port + port_offset for name, spec in specs.items()}
    ops_ports = {name: spec.ops_port + port_offset for name, spec in specs.items()}
    settings = load_settings(Settings)
    if not settings.is_development:
        raise fail("`prog up` is for development; unset PROG_ENV or set it to development")
    from prognetwork.kit import local, migrations

    state = settings.state_dir
    env = dict(os.environ, PROG_ENV="development", PROG_STATE_DIR=str(state.resolve()))
    env.setdefault("LOG_FORMAT", "console" if sys.stdout.isatty() else "json")
    stoppers = []
    stopping = False

    def on_term(signum, frame):  # SIGTERM to `prog up` means the same as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    children: dict[str, subprocess.Popen] = {}
    try:
        if not os.environ.get("DATABASE_URL"):
            pg = local.start_postgres(state / "postgres")
            stoppers.append(pg.stop)
            env["DATABASE_URL"] = pg.url
            out.print(f"embedded PostgreSQL: data in {state / 'postgres'}")
        if not os.environ.get("REDIS_URL"):
            redis = local.start_redis(state / "redis")
            stoppers.append(redis.stop)
            env["REDIS_URL"] = redis.url
            out.print(f"embedded Redis: data in {state / 'redis'}")
        migrations.upgrade(Settings(DATABASE_URL=env["DATABASE_URL"]).database_dsn)
        embedded = {k: env[k] for k in ("DATABASE_URL", "REDIS_URL") if not os.environ.get(k)}
        if embedded:  # so `prog users …` and `prog audit …` find them while this runs
            running = state / RUNNING_PLATFORM
            running.write_text("".join(f"{k}={v}\n" for k, v in embedded.items()))
            stoppers.append(lambda: running.unlink(missing_ok=True))
        for name, port in ports.items():  # how services (the gateway) find each other here
            env.setdefault(f"{specs[name].env_prefix}_URL", f"http://127.0.0.1:{port}")
        issuer = next((s for s in specs.values() if "JWT_SIGNING_KEYS" in s.secrets), None)
        if issuer is not None:  # where verifiers fetch the token issuer's public keys
            env.setdefault("JWKS_URL", f"http://127.0.0.1:{ports[issuer.name]}/.well-known/jwks.json")
        # What the admin console shows on its Health page: these ops ports, this Prometheus.
        env.setdefault(
            "SERVICE_HEALTH_URLS", json.dumps({n: f"http://127.0.0.1:{p}" for n, p in ops_ports.items()})
        )
        if with_monitoring:
            env.setdefault("PROMETHEUS_URL", f"http://{PROMETHEUS_ADDRESS.format(port=9090 + port_offset)}")
        if "billing-service" in specs and not os.environ.get("STRIPE_SECRET_KEY"):
            stripe_url, stop_stripe = _start_stripe_fake(specs, ports, state, port_offset)
            stoppers.append(stop_stripe)
            env["STRIPE_API_BASE"] = stripe_url
            out.print(f"Stripe fake (STRIPE_SECRET_KEY is unset): {stripe_url}")
        for name in names:
            children[name] = _spawn(specs[name], ports[name], ops_ports[name], env)
        _wait_ready(ops_ports, children)
        if with_monitoring:
            prometheus_url, stop_prometheus = _start_prometheus(ops_ports, state, port_offset)
            stoppers.append(stop_prometheus)
        table = Table(title="ProgNetwork is up", show_header=True)
        table.add_column("service")
        table.add_column("URL")
        table.add_column("health, metrics, docs")
        for name in names:
            table.add_row(name, f"http://127.0.0.1:{ports[name]}", f"http://127.0.0.1:{ops_ports[name]}")
        out.print(table)
        if with_monitoring:
            out.print(f"Prometheus (alert rules loaded): {prometheus_url}")
        for edge in (s for s in specs.values() if s.edge):
            out.print(f"Clients use the {edge.name}: http://127.0.0.1:{ports[edge.name]}/api/v1/…")
        out.print("Ctrl-C stops everything.")
        _supervise(specs, ports, ops_ports, children, env)
    except KeyboardInterrupt:
        stopping = True
    except local.LocalServerError as exc:
        raise fail(str(exc)) from None
    finally:
        _stop_all(children)
        for stop in reversed(stoppers):
            stop()
        if stopping:
            out.print("stopped.")


MONITORING_CONFIG = Path("deploy/monitoring/prometheus/local.yml")
PROMETHEUS_ADDRESS = "127.0.0.1:{port}"
MONITORING_TOOLS = Path("scripts/install-monitoring-tools.sh")


def _start_prometheus(ops_ports: dict[str, int], state: Path, offset: int) -> tuple[str, Callable[[], None]]:
    """Prometheus on this machine with the repository's rules, scraping the ops ports in use."""
    import yaml

    if not MONITORING_CONFIG.exists():
        raise fail(f"--with-monitoring needs {MONITORING_CONFIG}: run `prog up` from the repository root")
    if shutil.which("prometheus") is None:
        subprocess.run(["sh", str(MONITORING_TOOLS)], check=True)  # noqa: S603,S607 - our own script
    config = yaml.safe_load(MONITORING_CONFIG.read_text())
    config["rule_files"] = [
        str((MONITORING_CONFIG.parent / p).resolve()) for p in config.get("rule_files", [])
    ]
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] in ops_ports]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ops_ports[job['job_name']]}"]}]
    directory = state / "prometheus"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = PROMETHEUS_ADDRESS.format(port=9090 + offset)
    process = subprocess.Popen(  # noqa: S603 - fixed arguments, no shell
        [  # noqa: S607 - found on PATH above
            "prometheus",
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={address}",
        ],
        stdout=open(directory / "prometheus.log", "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    return f"http://{address}", _stopper(process, 15)


STRIPE_FAKE_PORT = 12111


def _start_stripe_fake(
    specs: dict[str, ServiceSpec], ports: dict[str, int], state: Path, offset: int
) -> tuple[str, Callable[[], None]]:
    """The local Stripe stand-in (prognetwork.fakes.stripe), signing webhooks with the development
    secret the billing service verifies. Webhooks take the public route through the gateway when
    it runs, as Stripe's would."""
    from prognetwork.billing import settings as billing

    port = STRIPE_FAKE_PORT + offset
    edge = next((s for s in specs.values() if s.edge), None)
    if edge is not None:
        webhook_url = f"http://127.0.0.1:{ports[edge.name]}/api/v1/billing/webhooks/stripe"
    else:
        webhook_url = f"http://127.0.0.1:{ports['billing-service']}/v1/billing/webhooks/stripe"
    log_path = state / "stripe-fake.log"
    command = [sys.executable, "-m", "prognetwork.fakes.stripe", "--host", "127.0.0.1", "--port", str(port)]
    command += [
        "--api-key",
        billing.DEV_STRIPE_SECRET_KEY,
        "--webhook-secret",
        billing.DEV_STRIPE_WEBHOOK_SECRET,
    ]
    command += ["--webhook-url", webhook_url, "--public-url", f"http://localhost:{port}"]
    child = subprocess.Popen(  # noqa: S603 - this interpreter and fixed arguments, no shell
        command, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        process.wait_ready({"stripe-fake": (child, f"http://127.0.0.1:{port}")}, 30, path="/_fake/health")
    except process.NotReady as exc:
        child.kill()
        raise fail(f"{exc}; see {log_path}") from None

    return f"http://127.0.0.1:{port}", _stopper(child, 10)


def _stopper(child: subprocess.Popen, timeout: float) -> Callable[[], None]:
    """Stops a helper process: SIGTERM, then SIGKILL after `timeout` seconds."""

    def stop() -> None:
        child.terminate()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()

    return stop


def _spawn(spec: ServiceSpec, port: int, ops_port: int, env: dict[str, str]) -> subprocess.Popen:
    if not spec.edge:
        # The edge service (the gateway) on this machine is the proxy in front of every other one:
        # they take the client address from its X-Forwarded-For. The edge itself trusts no proxy
        # (unless the environment names one): any local process could otherwise choose its address.
        env = {**env, "FORWARDED_ALLOW_IPS": "127.0.0.1"}
    # Its own session: Ctrl-C reaches only `prog up`, which stops the children in order.
    return process.spawn(spec.name, port, ops_port, env, own_session=True)


def _wait_ready(ops_ports: dict[str, int], children: dict[str, subprocess.Popen]) -> None:
    try:
        process.wait_ready(
            {name: (children[name], f"http://127.0.0.1:{port}") for name, port in ops_ports.items()},
            START_TIMEOUT,
        )
    except process.NotReady as exc:
        raise fail(f"{exc}; see its log above") from None


def _supervise(
    specs: dict[str, ServiceSpec],
    ports: dict[str, int],
    ops_ports: dict[str, int],
    children: dict[str, subprocess.Popen],
    env: dict[str, str],
) -> None:
    """Restart a service that dies, with backoff; give up if it keeps dying."""
    restarts: dict[str, list[float]] = {name: [] for name in ports}
    while True:
        time.sleep(0.5)
        for name in ports:
            code = children[name].poll()
            if code is None:
                continue
            now = time.monotonic()
            recent = [t for t in restarts[name] if now - t < 60] + [now]
            restarts[name] = recent
            if len(recent) > 5:
                raise fail(f"service {name} keeps exiting (status {code}); stopping the platform")
            err.print(f"[yellow]service {name} exited with status {code}; restarting[/]")
            time.sleep(min(8.0, 0.5 * 2 ** len(recent)))
            children[name] = _spawn(specs[name], ports[name], ops_ports[name], env)


def _stop_all(children: dict[str, subprocess.Popen]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in children.values():
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()


@app.command()
def scaffold(
    name: Annotated[str, typer.Argument(help="The service's one name, e.g. billing-service")],
    port: Annotated[int, typer.Option(help="Its API port (the ops port is this + 1000)")],
    package: Annotated[
        str | None, typer.Option(help="Its Python package. Default: the name without -service")
    ] = None,
    into: Annotated[Path, typer.Option(help="Where packages live")] = Path(__file__).parent,
) -> None:
    """Create a new service package in the house shape; print the deploy entries it still needs."""
    from prognetwork.scaffold import ScaffoldError, check, deploy_checklist, package_name, write

    package = package or package_name(name)
    known = registered()
    try:
        check(
            name, package, port, {p for s in known.values() for p in (s.port, s.ops_port)}, set(known), into
        )
    except ScaffoldError as exc:
        raise fail(str(exc)) from None
    for path in write(name, package, port, into):
        out.print(f"created {path}", highlight=False)
    out.print(f"\n{name} is registered (prog serve {name}). Now add its deploy entries:", highlight=False)
    for step in deploy_checklist(name, port):
        out.print(f"  - {step}", highlight=False)


users_app = typer.Typer(no_args_is_help=True, help="Manage accounts.")
app.add_typer(users_app, name="users")


def _set_disabled(email: str, disabled: bool) -> None:
    import asyncio

    from redis.exceptions import RedisError
    from sqlalchemy.exc import DBAPIError

    from prognetwork.kit.problems import Problem
    from prognetwork.users.admin import set_disabled
    from prognetwork.users.settings import UsersSettings

    settings = _platform_settings(UsersSettings)
    try:
        user_id = asyncio.run(set_disabled(settings, email, disabled))
    except Problem as problem:
        raise fail(problem.detail, 1) from None
    except (OSError, RedisError, DBAPIError) as exc:
        raise fail(
            f"cannot reach PostgreSQL or Redis ({type(exc).__name__}); check DATABASE_URL and REDIS_URL"
        ) from None
    out.print(
        f"{email.lower()} ({user_id}) is {'disabled; every session has ended' if disabled else 'enabled'}"
    )


@users_app.command("disable")
def users_disable(email: Annotated[str, typer.Argument(help="The account's email address")]) -> None:
    """Disable an account: it cannot log in, and its sessions and access tokens stop working now."""
    _set_disabled(email, True)


@users_app.command("enable")
def users_enable(email: Annotated[str, typer.Argument(help="The account's email address")]) -> None:
    """Enable a disabled account again (its owner logs in anew)."""
    _set_disabled(email, False)


class PlatformRoleChoice(StrEnum):
    """The platform roles: `admin` acts, `operator` reads, `user` neither (the admin API)."""

    user = "user"
    operator = "operator"
    admin = "admin"


def _run_admin(change: Callable[..., Any]) -> Any:
    """Run `change(admin, session, actor)` against the databases, as the CLI's actor (audited as
    `cli:<os user>`); a refusal is one line and exit 1."""
    import asyncio

    from redis.exceptions import RedisError
    from sqlalchemy.exc import DBAPIError

    from prognetwork.kit.audit import cli_actor
    from prognetwork.kit.problems import Problem
    from prognetwork.users.admin import open_accounts
    from prognetwork.users.admin_service import PlatformAdmin
    from prognetwork.users.settings import UsersSettings

    settings = _platform_settings(UsersSettings)
    actor = cli_actor()

    async def run() -> Any:
        async with open_accounts(settings) as (accounts, session):
            return await change(PlatformAdmin(accounts), session, actor)

    try:
        return asyncio.run(run())
    except Problem as problem:
        raise fail(problem.detail, 1) from None
    except (OSError, RedisError, DBAPIError) as exc:
        raise fail(
            f"cannot reach PostgreSQL or Redis ({type(exc).__name__}); check DATABASE_URL and REDIS_URL"
        ) from None


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="The account's email address")],
    role: Annotated[PlatformRoleChoice, typer.Option(help="Its platform role")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True, hide_input=True, confirmation_prompt=True, help="Asked for when not given (safer)"
        ),
    ],
    name: Annotated[str | None, typer.Option(help="Default: the address's local part")] = None,
) -> None:
    """Create a verified account with a platform role (how the first admin comes to exist)."""
    from prognetwork.users.api import RegisterIn

    try:  # the rules registration applies: a real address, a 10 to 128 character password, a name
        account = RegisterIn(email=email, password=password, name=name or email.partition("@")[0])
    except ValidationError as exc:
        for e in exc.errors():
            err.print(f"[bold red]error:[/] {'.'.join(map(str, e['loc']))}: {e['msg']}", highlight=False)
        raise typer.Exit(2) from None
    user = _run_admin(
        lambda admin, db, actor: admin.create_user(
            db, actor, account.email, account.password, account.name, role.value
        )
    )
    out.print(f"{user.email} ({user.id}) created: {role.value}, verified", highlight=False, soft_wrap=True)


@users_app.command("set-role")
def users_set_role(
    email: Annotated[str, typer.Argument(help="The account's email address")],
    role: Annotated[PlatformRoleChoice, typer.Argument(help="Its new platform role")],
) -> None:
    """Give an account a platform role; it is signed out everywhere, so its next login carries it."""
    user = _run_admin(lambda admin, db, actor: admin.set_role_by_email(db, actor, email, role.value))
    message = f"{user.email} ({user.id}) is {role.value}; every session has ended"
    out.print(message, highlight=False, soft_wrap=True)


audit_app = typer.Typer(no_args_is_help=True, help="Verify, export and purge the audit log.")
app.add_typer(audit_app, name="audit")
app.add_typer(backup_app, name="backup")
app.add_typer(dr_app, name="dr")
app.add_typer(job_app, name="job")


def _audit_run(work: Callable[[], Any]) -> Any:
    """Run one audit operation against PostgreSQL; an outage is one line and exit 2."""
    import asyncio

    from sqlalchemy.exc import DBAPIError

    try:
        return asyncio.run(work())
    except (OSError, DBAPIError) as exc:
        raise fail(f"cannot reach PostgreSQL ({type(exc).__name__}); check DATABASE_URL") from None


def _moment(value: str, option: str) -> datetime:
    """An ISO 8601 date or time from the command line; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise fail(
            f"{option}: {value!r} is not an ISO 8601 date or time (e.g. 2026-01-31T00:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the audit log's hash chain and check its signed checkpoints: exit 0 if intact,
    1 naming the first bad record and why."""
    from prognetwork.users import audit_log
    from prognetwork.users.settings import UsersSettings

    settings = _platform_settings(UsersSettings)
    verdict = _audit_run(lambda: audit_log.verify(settings))
    if not verdict.ok:
        err.print(verdict.summary(), highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(verdict.summary(), highlight=False, soft_wrap=True)


@audit_app.command("export")
def audit_export(
    since: Annotated[str | None, typer.Option(help="Only records from this ISO 8601 time on")] = None,
    output: Annotated[Path | None, typer.Option(help="Write here instead of standard output")] = None,
) -> None:
    """Write the audit log as JSON lines, oldest first, every column included (hashes too, so the
    copy can be verified elsewhere)."""
    import json

    from prognetwork.kit.audit import AuditRecord
    from prognetwork.users import audit_log
    from prognetwork.users.settings import UsersSettings

    settings = _platform_settings(UsersSettings)
    start = _moment(since, "--since") if since else None
    target = output.open("w", encoding="utf-8") if output else sys.stdout

    def write(record: AuditRecord) -> None:
        target.write(json.dumps(record.as_json(), sort_keys=True) + "\n")

    try:
        count = _audit_run(lambda: audit_log.export(settings, write, start))
    finally:
        if output:
            target.close()
    err.print(f"exported {count} audit records" + (f" to {output}" if output else ""), highlight=False)


@audit_app.command("purge")
def audit_purge(
    before: Annotated[
        str | None,
        typer.Option(help="Delete records older than this ISO 8601 time. Default: AUDIT_RETENTION_DAYS"),
    ] = None,
) -> None:
    """Delete old audit records, keeping the chain verifiable: the purge is itself recorded, with
    the hash the remaining chain starts from, under a signed checkpoint."""
    from prognetwork.kit.audit import ChainBroken
    from prognetwork.users import audit_log
    from prognetwork.users.settings import UsersSettings

    settings = _platform_settings(UsersSettings)
    cutoff = (
        _moment(before, "--before") if before else audit_log.retention_cutoff(settings, datetime.now(UTC))
    )
    if cutoff is None:
        raise fail("say how old: --before, or set AUDIT_RETENTION_DAYS")
    try:
        purged = _audit_run(lambda: audit_log.purge(settings, cutoff))
    except ChainBroken as exc:
        raise fail(
            f"nothing purged: the audit log does not verify at {exc} (see `prog audit verify`)", 1
        ) from None
    if purged is None:
        out.print(f"no audit record is older than {cutoff.isoformat()}; nothing purged", highlight=False)
        return
    out.print(
        f"purged {purged.deleted} audit records (up to record {purged.through_seq}); "
        f"the purge is record {purged.record_seq}",
        highlight=False,
        soft_wrap=True,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
