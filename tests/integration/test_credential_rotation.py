"""PostgreSQL and Redis passwords rotated while a user-service process serves requests: it reads
its credentials from AWS Secrets Manager (moto), and requests succeed again without a restart.

The rejections are real: a PostgreSQL cluster of the test's own with scram-sha-256 on TCP (the
machine's server trusts every password), a Redis of its own whose only users are ACL users with
passwords. The cache TTL is an hour, so recovering proves the secret is re-read when a server
refuses it, not when the cache expires.

Each rotation is done in the order AWS's rotation functions do it: the server gets the new
password (and connections are cut, as a failover or idle timeout would), requests fail while the
secret still holds the old one, then the secret's new version is put; the failures are counted.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter

import asyncpg
import httpx
import pytest
import redis as redis_sync

from prognetwork.kit import migrations
from prognetwork.users.keys import generate_pem
from tests.helpers.accounts import PASSWORD, verified_user
from tests.helpers.databases import DisposableRedis
from tests.helpers.moto_server import moto_server
from tests.helpers.polling import eventually_async
from tests.helpers.processes import start_service
from tests.helpers.threads import in_thread
from tests.helpers.throwaway_postgres import throwaway_postgres

RECOVERED = 10  # consecutive successes of each kind that say requests work again


@pytest.fixture(scope="module")
def moto():
    with moto_server() as server:
        yield server


@pytest.fixture(scope="module")
def postgres():
    with throwaway_postgres(auth="scram-sha-256") as cluster:
        yield cluster


@pytest.fixture
def redis_server(tmp_path):
    server = DisposableRedis(tmp_path)
    yield server
    server.stop()


class Traffic:
    """Real HTTP requests in a loop, in a thread: an authenticated read (PostgreSQL) and a login
    (Redis: sign-in counters; PostgreSQL: the new session), each outcome recorded in order."""

    def __init__(self, url: str, email: str, access_token: str) -> None:
        self.url = url
        self.email = email
        self.headers = {"Authorization": f"Bearer {access_token}"}
        self.outcomes: list[tuple[str, int]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stopping.is_set():
                self.record("me", lambda: client.get("/v1/users/me", headers=self.headers))
                self.record("login", lambda: client.post(
                    "/v1/auth/login", json={"email": self.email, "password": PASSWORD}))

    def record(self, kind: str, call) -> None:
        try:
            status = call().status_code
        except httpx.HTTPError:
            status = 0
        self.outcomes.append((kind, status))

    def since(self, mark: int) -> list[tuple[str, int]]:
        return self.outcomes[mark:]

    def failures_since(self, mark: int) -> Counter:
        return Counter(kind for kind, status in self.since(mark) if status != 200)

    def recovered_since(self, mark: int) -> bool:
        tail = self.since(mark)
        for kind in ("me", "login"):
            last = [status for k, status in tail if k == kind][-RECOVERED:]
            if len(last) < RECOVERED or any(status != 200 for status in last):
                return False
        return True

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)


async def test_rotated_postgres_and_redis_passwords_are_picked_up_without_a_restart(
    moto, postgres, redis_server, tmp_path
):
    name = f"prog_rotation_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres.admin_url)
    await admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'first-{name}'")
    await admin.execute(f"CREATE DATABASE {name} OWNER {name}")
    # What migration 0005 asks a database administrator to do for a role that is not a superuser.
    await admin.execute("DO $$ BEGIN CREATE ROLE prognetwork_tenant NOLOGIN; "
                        "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    await admin.execute(f"GRANT prognetwork_tenant TO {name}")
    database_url = postgres.url(name, user=name, password=f"first-{name}")
    in_thread(migrations.upgrade, database_url)

    redis_admin = redis_sync.Redis(port=redis_server.port)
    redis_admin.execute_command("ACL", "SETUSER", "admin", "on", ">admin-password", "~*", "&*", "+@all")
    redis_admin.execute_command("ACL", "SETUSER", "prog", "on", ">first-redis", "~*", "&*", "+@all")
    redis_admin.execute_command("ACL", "SETUSER", "default", "off")
    redis_admin.close()
    redis_admin = redis_sync.Redis(port=redis_server.port, username="admin", password="admin-password")
    redis_url = f"redis://prog:first-redis@127.0.0.1:{redis_server.port}/0"

    secret_id = f"prognetwork/{name}/app"
    document = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "JWT_SIGNING_KEYS": generate_pem()}
    aws = moto.client("secretsmanager")
    aws.create_secret(Name=secret_id, SecretString=json.dumps(document))

    service = start_service("user-service", {
        **moto.env, "PROG_ENV": "development", "SECRETS_BACKEND": "aws", "SECRETS_AWS_SECRET_ID": secret_id,
        "SECRETS_CACHE_TTL_SECONDS": "3600", "DB_POOL_SIZE": "4", "PROG_STATE_DIR": str(tmp_path / "state"),
        "LOGIN_ATTEMPTS_PER_ADDRESS": "1000000", "LOG_LEVEL": "INFO",
    }, tmp_path)
    pid = service.process.pid
    traffic = None
    try:
        events = await asyncpg.connect(postgres.url(name, user=name, password=f"first-{name}"))
        async with httpx.AsyncClient(base_url=service.url, timeout=20) as client:
            email = await verified_user(client, events)
            login = await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
            assert login.status_code == 200, login.text
        await events.close()
        traffic = Traffic(service.url, email, login.json()["access_token"])
        traffic.thread.start()
        await eventually_async(lambda: _async(traffic.recovered_since(0)), timeout=60, what="steady traffic")
        assert traffic.failures_since(0) == Counter()

        # PostgreSQL: the role's new password, its sessions cut, the secret still old.
        mark = len(traffic.outcomes)
        await admin.execute(f"ALTER ROLE {name} PASSWORD 'second-{name}'")
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(database_url)
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name)
        await eventually_async(lambda: _async(traffic.failures_since(mark)["me"] > 0), timeout=30,
                               what="requests to fail while the secret holds the old password")
        document["DATABASE_URL"] = postgres.url(name, user=name, password=f"second-{name}")
        put = len(traffic.outcomes)
        aws.put_secret_value(SecretId=secret_id, SecretString=json.dumps(document))
        await eventually_async(lambda: _async(traffic.recovered_since(mark)), timeout=60,
                               what="requests to succeed with the rotated PostgreSQL password")
        postgres_failures = traffic.failures_since(mark), traffic.failures_since(put)
        sessions = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", name)
        assert sessions > 0  # opened after every old one was cut: with the new password

        # Redis: the user's new password, its connections cut, the secret still old.
        mark = len(traffic.outcomes)
        redis_admin.execute_command("ACL", "SETUSER", "prog", "resetpass", ">second-redis")
        with pytest.raises(redis_sync.AuthenticationError):
            redis_sync.Redis.from_url(redis_url).ping()
        redis_admin.execute_command("CLIENT", "KILL", "USER", "prog")
        await eventually_async(lambda: _async(traffic.failures_since(mark)["login"] > 0), timeout=30,
                               what="logins to fail while the secret holds the old password")
        document["REDIS_URL"] = f"redis://prog:second-redis@127.0.0.1:{redis_server.port}/0"
        put = len(traffic.outcomes)
        aws.put_secret_value(SecretId=secret_id, SecretString=json.dumps(document))
        await eventually_async(lambda: _async(traffic.recovered_since(mark)), timeout=60,
                               what="requests to succeed with the rotated Redis password")
        redis_failures = traffic.failures_since(mark), traffic.failures_since(put)
        clients = redis_admin.client_list()
        assert any(c["user"] == "prog" for c in clients)

        # The other order: the secret's new version first (the service keeps its cached URL),
        # then the role's password, then its sessions cut.
        mark = put = len(traffic.outcomes)
        document["DATABASE_URL"] = postgres.url(name, user=name, password=f"third-{name}")
        aws.put_secret_value(SecretId=secret_id, SecretString=json.dumps(document))
        await admin.execute(f"ALTER ROLE {name} PASSWORD 'third-{name}'")
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name)
        await eventually_async(lambda: _async(traffic.recovered_since(mark)), timeout=60,
                               what="requests to succeed with the PostgreSQL password put first in the secret")
        secret_first_failures = traffic.failures_since(mark), traffic.failures_since(put)

        traffic.stop()
        assert service.process.poll() is None and service.process.pid == pid  # never restarted
        for server, (failed, after_put) in (("PostgreSQL", postgres_failures), ("Redis", redis_failures),
                                            ("PostgreSQL, secret first", secret_first_failures)):
            print(f"\n{server} rotation: {dict(failed)} requests failed, {dict(after_put)} of them after the "
                  f"secret's new version was put ({len(traffic.outcomes)} requests in all)")
    finally:
        if traffic is not None:
            traffic.stop()
        service.stop()
        redis_admin.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()


async def _async(value):
    """`value` as eventually_async polls it (the traffic thread changes it meanwhile)."""
    return value
