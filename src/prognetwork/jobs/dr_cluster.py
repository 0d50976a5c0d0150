"""A throwaway PostgreSQL cluster archiving to a pgBackRest repository, all under one directory.

What `prog dr drill` destroys and restores. The cluster runs the repository's own archiving
artifacts: `deploy/pgbackrest/archiving.conf` is copied verbatim into the data directory and
included from postgresql.conf, and `deploy/pgbackrest/pgbackrest.conf`'s [global] options are
kept except the S3 repository and the paths, which move under the directory. Its archive_command
names no configuration file: every process of the cluster finds this one through
PGBACKREST_CONFIG in its environment, as pgBackRest reads any option from `PGBACKREST_<OPTION>`.

"Destroy the node" and "leave nothing running" must reach every process of the cluster, whatever
it forked: PostgreSQL's children start sessions of their own and overwrite their environment with
their process title, so they are found as the postmaster's descendants; pgBackRest's asynchronous
archiver detaches itself, so it is found by NODE_MARKER=<id> in its environment (every process
started here carries it, and RUN_MARKER, which the drill's other processes carry too).

Run as root, PostgreSQL and pgBackRest run as the `postgres` system user (PostgreSQL refuses root).
Linux only: processes are found through /proc.
"""

from __future__ import annotations

import configparser
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import prognetwork

STANZA = "prognetwork"  # the stanza deploy/pgbackrest names
DATABASE = "prognetwork"
NODE_MARKER = "PROG_DR_NODE"
RUN_MARKER = "PROG_DR_RUN"
POSTGRES_MAJOR = "15"  # what the deployed servers run
COMMAND_TIMEOUT = 600.0
# Options of deploy/pgbackrest/pgbackrest.conf that name places on the database host, and the S3
# repository (a drill on this machine has no bucket): the throwaway cluster sets its own.
HOST_OPTIONS = re.compile(r"^(repo2-.*|repo1-path|spool-path|log-path|lock-path)$")


class DrillError(RuntimeError):
    """The drill cannot go on; the message says what went wrong and how to fix it."""


def artifacts_dir() -> Path:
    """deploy/pgbackrest of the checkout this package runs from."""
    here = Path(prognetwork.__file__).resolve().parents[2] / "deploy" / "pgbackrest"
    if not (here / "pgbackrest.conf").is_file():
        raise DrillError(f"{here} is missing: run the drill from a checkout of the repository")
    return here


def postgres_bindir() -> Path:
    """PostgreSQL server binaries: Debian's folder of the major the deployed servers run, else
    `pg_config --bindir` (another major, if pgBackRest supports it)."""
    debian = Path(f"/usr/lib/postgresql/{POSTGRES_MAJOR}/bin")
    if (debian / "initdb").is_file():
        return debian
    pg_config = shutil.which("pg_config")
    if pg_config:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)  # noqa: S603 - found on PATH
        found = Path(done.stdout.strip())
        if done.returncode == 0 and (found / "initdb").is_file():
            return found
    raise DrillError(
        f"PostgreSQL server binaries not found: apt-get install postgresql-{POSTGRES_MAJOR} (or put pg_config on PATH)"
    )


def pgbackrest_binary() -> str:
    found = shutil.which("pgbackrest")
    if found is None:
        raise DrillError("pgbackrest is not installed: run scripts/install-dr-tools.sh")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: `postgres` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise DrillError(
            "as root, the drill runs PostgreSQL as the `postgres` user, which does not exist"
        ) from None


def processes_with(marker: str, value: str) -> list[int]:
    """Process ids whose environment holds marker=value (those we may read: ours, or all as root)."""
    wanted = f"{marker}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours
            continue
        if wanted in environment:
            found.append(int(entry.name))
    return found


def descendants(root: int) -> list[int]:
    """`root`'s children, their children and so on (from each process's parent in /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])  # after "pid (comm)": state, ppid
        parents.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [root]
    while pending:
        children = parents.get(pending.pop(), [])
        found += children
        pending += children
    return found


def kill_all(marker: str, value: str, also: list[int] | None = None) -> int:
    """SIGKILL `also` and every process holding marker=value, until none is left; how many were
    killed. PostgreSQL's children are in `also`: they overwrite their environment with their
    process title, so the marker is not found there."""
    killed = 0
    deadline = time.monotonic() + 10
    pids = list(also or []) + processes_with(marker, value)
    while pids:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise DrillError(f"processes {pids} ({marker}) survived SIGKILL")
        time.sleep(0.05)
        pids = [pid for pid in also or [] if _alive(pid)] + processes_with(marker, value)
    return killed


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, waiting for its parent to notice


@dataclass
class Cluster:
    """A PostgreSQL cluster on 127.0.0.1:`port` with its data, repository, spool, logs and
    socket under `root`, archiving to the repository."""

    root: Path
    node_id: str
    run_id: str
    port: int = field(default_factory=free_port)
    bindir: Path = field(default_factory=postgres_bindir)
    pgbackrest: str = field(default_factory=pgbackrest_binary)
    owner: pwd.struct_passwd | None = field(default_factory=_run_as)
    postmaster: subprocess.Popen[bytes] | None = None
    # None: archiving.conf's own; a shorter one makes a short drill archive while it writes.
    archive_timeout: float | None = None
    # None: no S3 repository. Else the file's repo2 options, these (endpoint, bucket, keys) over them.
    repo2: dict[str, str] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def repository(self) -> Path:
        return self.root / "repository"

    @property
    def config(self) -> Path:
        return self.root / "pgbackrest.conf"

    @property
    def sockets(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGBACKREST_"))}
        env.update(
            {"PGBACKREST_CONFIG": str(self.config), NODE_MARKER: self.node_id, RUN_MARKER: self.run_id}
        )
        env.update({"LC_ALL": "C", "TZ": "UTC"})
        if self.owner is not None:
            env.update({"HOME": self.owner.pw_dir, "USER": self.owner.pw_name, "LOGNAME": self.owner.pw_name})
        return env

    def _directory(self, path: Path, mode: int = 0o700) -> Path:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        if self.owner is not None:
            os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        return path

    def _file(self, path: Path, text: str) -> None:
        path.write_text(text)
        if self.owner is not None:
            os.chown(path, self.owner.pw_uid, self.owner.pw_gid)

    def run(self, *command: str, what: str) -> str:
        """Run a PostgreSQL or pgBackRest command as the cluster's owner; its output, or DrillError."""
        try:
            done = subprocess.run(  # noqa: S603 - our binaries, arguments we built, no shell
                list(command),
                env=self.environment(),
                user=self.owner.pw_uid if self.owner else None,
                group=self.owner.pw_gid if self.owner else None,
                extra_groups=[] if self.owner else None,
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise DrillError(
                f"{what}: no answer after {COMMAND_TIMEOUT:.0f}s ({' '.join(command)})"
            ) from None
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise DrillError(f"{what} failed (exit {done.returncode}): {' / '.join(detail[-3:])}")
        return done.stdout

    def backrest(self, *arguments: str, what: str) -> str:
        return self.run(self.pgbackrest, f"--stanza={STANZA}", *arguments, what=what)

    def prepare(self) -> None:
        """The directories, pgBackRest's configuration from deploy/, and an initialised data directory."""
        artifacts = artifacts_dir()
        if self.owner is not None:  # the owner must reach its folders through the root directory
            os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)
        for path in (self.repository, self.sockets, self.logs, self.root / "spool", self.root / "lock"):
            self._directory(path)
        self._file(self.config, render_pgbackrest_conf((artifacts / "pgbackrest.conf").read_text(), self))
        self.run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            what="initdb",
        )
        shutil.copyfile(artifacts / "archiving.conf", self.data / "archiving.conf")
        if self.owner is not None:
            os.chown(self.data / "archiving.conf", self.owner.pw_uid, self.owner.pw_gid)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# prog dr drill\n"
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.sockets}'\n"
                "log_destination = 'stderr'\nlogging_collector = off\n"
                "include 'archiving.conf'\n"
            )
            if self.archive_timeout is not None:  # after the include: the last setting wins
                conf.write(f"archive_timeout = {self.archive_timeout:g}s\n")

    def start(self, timeout: float = COMMAND_TIMEOUT) -> None:
        """Start the postmaster and wait until it accepts writes (after any recovery)."""
        log = open(self.logs / "postgresql.log", "ab")  # noqa: SIM115 - closed below, once the child has it
        self.postmaster = subprocess.Popen(  # noqa: S603 - our binary, fixed arguments, no shell
            [str(self.bindir / "postgres"), "-D", str(self.data)],
            env=self.environment(),
            user=self.owner.pw_uid if self.owner else None,
            group=self.owner.pw_gid if self.owner else None,
            extra_groups=[] if self.owner else None,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.wait_writable(timeout)

    def wait_writable(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.postmaster is not None and self.postmaster.poll() is not None:
                raise DrillError(
                    f"PostgreSQL exited (status {self.postmaster.returncode}); see {self.logs / 'postgresql.log'}"
                )
            answer = subprocess.run(  # noqa: S603 - our binary, fixed arguments
                [
                    str(self.bindir / "psql"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-Atc",
                    "SELECT pg_is_in_recovery()",
                ],
                env=self.environment(),
                capture_output=True,
                text=True,
                timeout=30,
            )
            if answer.returncode == 0 and answer.stdout.strip() == "f":
                return
            if time.monotonic() > deadline:
                raise DrillError(f"PostgreSQL did not accept writes within {timeout:.0f}s; see {self.logs}")
            time.sleep(0.1)

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one SQL statement with psql; its unaligned output."""
        return self.run(
            str(self.bindir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            statement,
            what=f"psql {statement!r}",
        )

    def create_database(self) -> None:
        self.sql(f'CREATE DATABASE "{DATABASE}"')

    def destroy(self) -> int:
        """Lose the node: SIGKILL every process of the cluster at once, then delete the data
        directory. The repository (another volume, in production) survives."""
        tree = [self.postmaster.pid, *descendants(self.postmaster.pid)] if self.postmaster else []
        killed = kill_all(NODE_MARKER, self.node_id, also=tree)
        if self.postmaster is not None:
            self.postmaster.wait(10)
            self.postmaster = None
        shutil.rmtree(self.data)
        return killed

    def restore(self, *options: str) -> None:
        """The newest backup and every archived segment after it: recovery to the end of the
        archive (unless `options` say otherwise, e.g. --repo=2, --type=time)."""
        self._directory(self.data)
        self.backrest(*options, "restore", what="pgbackrest restore")

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT: nothing of a throwaway cluster is worth a checkpoint or
        waiting on its archiver), then SIGKILL whatever of the node is left."""
        if self.postmaster is not None and self.postmaster.poll() is None:
            self.postmaster.send_signal(signal.SIGQUIT)
            try:
                self.postmaster.wait(30)
            except subprocess.TimeoutExpired:
                pass
        alive = self.postmaster is not None and self.postmaster.poll() is None
        tree = [self.postmaster.pid, *descendants(self.postmaster.pid)] if self.postmaster and alive else []
        kill_all(NODE_MARKER, self.node_id, also=tree)
        if self.postmaster is not None:
            self.postmaster.wait(10)
        self.postmaster = None


class _CaseSensitiveConfig(configparser.ConfigParser):
    """pgBackRest's option names are case-sensitive; configparser lower-cases them by default."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def render_pgbackrest_conf(text: str, cluster: Cluster) -> str:
    """deploy/pgbackrest/pgbackrest.conf for the throwaway cluster: its [global] options but the
    host's paths, which point under the cluster's directory instead, and the S3 repository, kept
    only when the cluster names an S3 endpoint of its own (`repo2`)."""
    source = _CaseSensitiveConfig(interpolation=None, comment_prefixes=("#",), strict=True)
    source.read_string(text)
    sections: dict[str, dict[str, str]] = {}
    for name in source.sections():
        if name == STANZA:
            continue
        keep_s3 = cluster.repo2 is not None
        kept = {
            k: v
            for k, v in source[name].items()
            if not HOST_OPTIONS.match(k) or (keep_s3 and k.startswith("repo2-"))
        }
        sections[name] = kept
    sections.setdefault("global", {}).update(
        {
            "repo1-path": str(cluster.repository),
            "spool-path": str(cluster.root / "spool"),
            "log-path": str(cluster.logs),
            "lock-path": str(cluster.root / "lock"),
            **(cluster.repo2 or {}),
        }
    )
    sections[STANZA] = {
        "pg1-path": str(cluster.data),
        "pg1-port": str(cluster.port),
        "pg1-socket-path": str(cluster.sockets),
        "pg1-user": "postgres",
    }
    return "".join(
        f"[{name}]\n" + "".join(f"{k}={v}\n" for k, v in options.items()) + "\n"
        for name, options in sections.items()
    )


def remove_tree(path: Path, on_error: Callable[[str], None]) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        on_error(f"could not remove {path}: {exc}")
