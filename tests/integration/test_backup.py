"""`prog backup …` against real PostgreSQL (a database of this module's own, with a few thousand
events), into a local directory and into S3 as moto's server serves it (a bucket whose objects
are encrypted with a KMS key): backups list and verify by restoring; a flipped byte, a failed or
killed dump, a non-empty restore target and bad input are each refused as they should be; prune
keeps the newest backup of each day, week and month asked for."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from typer.testing import CliRunner

from prognetwork.cli import app
from prognetwork.jobs import backup
from prognetwork.jobs.backup_pgtools import ClientToolMissing, client_tool
from prognetwork.jobs.storage import open_target
from prognetwork.kit import migrations
from tests.helpers.databases import create_database, drop_database, with_database
from tests.helpers.moto_server import moto_server
from tests.helpers.paths import ROOT
from tests.helpers.polling import eventually
from tests.helpers.threads import in_thread

EVENTS = 3000
BUCKET = "prog-test-backups"


@pytest.fixture(scope="module")
def source(servers) -> str:
    """A migrated database holding EVENTS events and a consumer position."""
    name = f"prog_test_backup_{uuid.uuid4().hex[:10]}"
    in_thread(asyncio.run, create_database(servers.pg_admin_url, name))
    url = with_database(servers.pg_admin_url, name)
    try:
        in_thread(migrations.upgrade, url)
        in_thread(asyncio.run, _sql(url, f"""
            INSERT INTO events (id, type, user_id, payload)
            SELECT gen_random_uuid(), 'app.backup_test', gen_random_uuid(), jsonb_build_object('n', g)
            FROM generate_series(1, {EVENTS}) AS g"""))
        in_thread(asyncio.run, _sql(url, f"INSERT INTO consumer_cursors (name, position) VALUES ('backup-test', {EVENTS})"))
        yield url
    finally:
        in_thread(asyncio.run, drop_database(servers.pg_admin_url, name))


@pytest.fixture
def empty_database(servers):
    name = f"prog_test_restore_{uuid.uuid4().hex[:10]}"
    in_thread(asyncio.run, create_database(servers.pg_admin_url, name))
    yield with_database(servers.pg_admin_url, name)
    in_thread(asyncio.run, drop_database(servers.pg_admin_url, name))


@pytest.fixture(scope="module")
def aws():
    with moto_server() as server:
        key_id = server.encrypted_bucket(BUCKET)
        yield server, key_id


async def _sql(url: str, statement: str, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


def prog(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`prog backup …` run in this process (what a separate process would print and exit with)."""
    done = CliRunner().invoke(app, ["backup", *args], env=env, catch_exceptions=False)
    return subprocess.CompletedProcess(args, done.exit_code, without_logs(done.stdout), without_logs(done.stderr))


def without_logs(output: str) -> str:
    """Output without the log records this test process writes as JSON (conftest's logging)."""
    return "".join(line for line in output.splitlines(keepends=True) if '"logger": ' not in line)


def prog_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`prog backup …` as an operator runs it, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "prognetwork", "backup", *args], env={**os.environ, **env},
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


def json_line(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])


def one_line_error(done: subprocess.CompletedProcess, code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert done.stdout == ""
    return lines[0]


def create_in_process(url: str, location: str, **kwargs) -> backup.Manifest:
    return in_thread(asyncio.run, backup.create(url, open_target(location), **kwargs))


# -- create → list → verify ------------------------------------------------------------------------


def test_a_local_backup_lists_with_its_manifest_and_verifies_by_restoring(source, tmp_path):
    env = {"DATABASE_URL": source}
    created = json_line(prog_process(env, "create", "--target", str(tmp_path)))
    assert created["events_last_seq"] == EVENTS
    assert created["metrics_pushed"] is False

    listed = json_line(prog(env, "list", "--json", "--target", str(tmp_path)))["backups"]
    assert [m["id"] for m in listed] == [created["backup"]]
    manifest = listed[0]
    assert manifest["tables"]["public.events"] == EVENTS
    assert manifest["tables"]["public.consumer_cursors"] == 1
    assert manifest["schema_revision"] == in_thread(asyncio.run, _sql(source, "SELECT version_num FROM alembic_version"))[0][0]
    assert manifest["sha256"] == created["sha256"] and manifest["size"] == (tmp_path / manifest["dump"]).stat().st_size

    verified = json_line(prog_process(env, "verify", "latest", "--target", str(tmp_path)))
    assert verified["verified"] == created["backup"]
    assert verified["rows"] == sum(manifest["tables"].values())


def test_an_s3_backup_is_kms_encrypted_and_verifies(source, aws):
    server, key_id = aws
    env = {"DATABASE_URL": source, **server.env, "S3_KMS_KEY_ID": key_id}
    location = f"s3://{BUCKET}/verified"
    created = json_line(prog(env, "create", "--target", location))
    s3 = server.client("s3")
    names = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="verified/")["Contents"])
    assert names == [f"verified/{created['backup']}.dump", f"verified/{created['backup']}.manifest.json"]
    head = s3.head_object(Bucket=BUCKET, Key=names[0])
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith(key_id)
    assert head["ContentLength"] == created["size"]

    assert json_line(prog(env, "list", "--json", "--target", location))["backups"][0]["id"] == created["backup"]
    assert json_line(prog(env, "verify", created["backup"], "--target", location))["verified"] == created["backup"]


def test_a_backup_with_a_flipped_byte_fails_verification_naming_the_checksum(source, tmp_path):
    manifest = create_in_process(source, str(tmp_path))
    dump = tmp_path / manifest.dump
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))

    line = one_line_error(prog({"DATABASE_URL": source}, "verify", manifest.id, "--target", str(tmp_path)), 1)
    assert f"backup {manifest.id} differs from its manifest" in line
    assert "checksum" in line


def test_verification_names_the_rows_a_backup_lacks(source, tmp_path):
    manifest = create_in_process(source, str(tmp_path))
    # A manifest promising more than the dump holds: what an incomplete dump would look like.
    manifest.tables["public.events"] += 1
    manifest.events_last_seq = EVENTS + 1
    with open_target(str(tmp_path)).writer(manifest.id + backup.MANIFEST_SUFFIX) as out:
        out.write(manifest.to_json())

    line = one_line_error(prog({"DATABASE_URL": source}, "verify", "--target", str(tmp_path)), 1)
    assert f"table public.events: {EVENTS + 1} rows in the manifest, {EVENTS} rows restored" in line
    assert f"event log: last sequence {EVENTS + 1} in the manifest, {EVENTS} restored" in line
    assert "checksum" not in line


# -- failed and killed dumps ----------------------------------------------------------------------------


def _blocked_pg_dump(url: str) -> int:
    """The pid of the pg_dump backend waiting for a lock in `url`'s database, once there is one."""

    def find():
        rows = in_thread(asyncio.run, _sql(url, """
            SELECT pid FROM pg_stat_activity
            WHERE datname = current_database() AND application_name = 'pg_dump' AND wait_event_type = 'Lock'"""))
        return rows[0]["pid"] if rows else None

    return eventually(find, timeout=30, what="pg_dump to wait for the table lock")


@contextmanager
def events_locked(url: str):
    """An exclusive lock on the event log, held by a connection in a thread of its own, so a dump
    waits for it until the block ends."""
    locked, release = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    async def hold() -> None:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
                locked.set()
                await asyncio.get_running_loop().run_in_executor(None, release.wait)
        finally:
            await conn.close()

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:
            failure.append(exc)
            locked.set()

    holder = threading.Thread(target=run)
    holder.start()
    locked.wait(30)
    try:
        if failure:
            raise failure[0]
        yield
    finally:
        release.set()
        holder.join(30)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_failed_dump_leaves_nothing_that_lists(source, tmp_path, aws, where, monkeypatch):
    server, _ = aws
    if where == "s3":
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        location = f"s3://{BUCKET}/failed-{uuid.uuid4().hex[:6]}"
    else:
        location = str(tmp_path)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["manifest"] = asyncio.run(backup.create(source, open_target(location)))
        except Exception as exc:
            outcome["error"] = exc

    with events_locked(source):
        thread = threading.Thread(target=run)
        thread.start()
        pid = _blocked_pg_dump(source)
        in_thread(asyncio.run, _sql(source, "SELECT pg_terminate_backend($1)", pid))
        thread.join(60)

    assert isinstance(outcome.get("error"), backup.BackupError), outcome
    assert "pg_dump failed" in str(outcome["error"])
    assert open_target(location).list() == []
    if where == "s3":
        assert not server.client("s3").list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    else:
        assert list(tmp_path.iterdir()) == []


def test_a_killed_backup_is_never_listed_as_complete(source, tmp_path):
    command = [sys.executable, "-m", "prognetwork", "backup", "create", "--target", str(tmp_path)]
    process = subprocess.Popen(command, env={**os.environ, "DATABASE_URL": source}, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    with events_locked(source):
        try:
            pid = _blocked_pg_dump(source)
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            in_thread(asyncio.run, _sql(source, "SELECT pg_terminate_backend($1)", pid))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)

    listed = prog({"DATABASE_URL": source}, "list", "--json", "--target", str(tmp_path))
    assert json_line(listed)["backups"] == []
    assert backup.backups(open_target(str(tmp_path))) == []


# -- restore ---------------------------------------------------------------------------------------------


def test_restore_refuses_a_non_empty_database_unless_forced(source, tmp_path, empty_database):
    manifest = create_in_process(source, str(tmp_path))
    env = {"DATABASE_URL": source}

    refused = one_line_error(prog(env, "restore", manifest.id, "--to", source, "--target", str(tmp_path)), 1)
    assert "is not empty" in refused and "--force" in refused

    restored = json_line(prog(env, "restore", manifest.id, "--to", empty_database, "--target", str(tmp_path)))
    assert restored["restored"] == manifest.id
    counts = """SELECT (SELECT count(*) FROM events), (SELECT max(seq) FROM events),
                       (SELECT string_agg(name, ',') FROM consumer_cursors)"""
    assert tuple(in_thread(asyncio.run, _sql(empty_database, counts))[0]) == (EVENTS, EVENTS, "backup-test")

    in_thread(asyncio.run, _sql(empty_database, "UPDATE consumer_cursors SET name = 'changed since'"))
    again = prog(env, "restore", "latest", "--to", empty_database, "--force", "--target", str(tmp_path))
    assert json_line(again)["restored"] == manifest.id
    assert tuple(in_thread(asyncio.run, _sql(empty_database, counts))[0]) == (EVENTS, EVENTS, "backup-test")


# -- prune -----------------------------------------------------------------------------------------------


def _stored(target, created: datetime) -> str:
    """A backup as `create` leaves it, taken at `created` (prune reads only manifests and names)."""
    manifest = backup.Manifest(
        id=backup.new_id(created), created_at=created.isoformat(), dump="", size=1, sha256="0" * 64,
        schema_revision="0001", tables={}, events_last_seq=0, server_version=15,
    )  # fmt: skip
    manifest.dump = manifest.id + backup.DUMP_SUFFIX
    with target.writer(manifest.dump) as out:
        out.write(b"x")
    with target.writer(manifest.id + backup.MANIFEST_SUFFIX) as out:
        out.write(manifest.to_json())
    return manifest.id


def test_prune_keeps_the_newest_backup_of_each_recent_day_week_and_month(source, tmp_path):
    target = open_target(str(tmp_path))
    now = datetime(2026, 3, 18, 12, 0, tzinfo=UTC)  # a Wednesday
    at = {label: now - delta for label, delta in {
        "today-late": timedelta(hours=1), "today-early": timedelta(hours=5),
        "yesterday": timedelta(days=1), "two-days": timedelta(days=2), "three-days": timedelta(days=3),
        "last-week": timedelta(days=8), "two-weeks": timedelta(days=15),
        "last-month": timedelta(days=35), "three-months": timedelta(days=90),
    }.items()}  # fmt: skip
    ids = {label: _stored(target, moment) for label, moment in at.items()}
    abandoned = backup.new_id(now - timedelta(days=2)) + backup.DUMP_SUFFIX
    running = backup.new_id(now - timedelta(minutes=5)) + backup.DUMP_SUFFIX
    for name in (abandoned, running):
        with target.writer(name) as out:
            out.write(b"x")

    done = prog({"DATABASE_URL": source}, "prune", "--target", str(tmp_path), "--daily", "3", "--weekly", "2",
                "--monthly", "2", "--now", now.strftime("%Y-%m-%dT%H:%M:%S"))  # fmt: skip
    result = json_line(done)

    # Days: today (its newest), yesterday, two days ago. Weeks: this ISO week (today-late) and the
    # one before, whose newest is Sunday the 15th (three-days). Months: March (today-late) and
    # February (last-month).
    expected = {ids[k] for k in ("today-late", "yesterday", "two-days", "three-days", "last-month")}
    assert set(result["kept"]) == expected
    gone = {ids[k] for k in ("today-early", "last-week", "two-weeks", "three-months")}
    assert {name.split(".")[0] for name in result["removed"] if name.endswith(".manifest.json")} == gone
    assert abandoned in result["removed"] and running not in result["removed"]
    for backup_id in gone:
        assert f"removed {backup_id}.dump" in done.stderr
    assert sorted(target.list()) == sorted(
        [f"{i}{s}" for i in expected for s in (backup.DUMP_SUFFIX, backup.MANIFEST_SUFFIX)] + [running]
    )


# -- bad input ------------------------------------------------------------------------------------------


def test_cli_errors_are_one_line_and_a_non_zero_exit(source, tmp_path):
    env = {"DATABASE_URL": source}
    assert "no complete backup" in one_line_error(prog(env, "verify", "--target", str(tmp_path)), 1)
    create_in_process(source, str(tmp_path))
    assert "no complete backup 'nope'" in one_line_error(prog(env, "verify", "nope", "--target", str(tmp_path)), 1)
    assert "neither a directory nor an s3://" in one_line_error(prog(env, "list", "--target", "ftp://host/x"), 2)
    assert "--to must be a postgresql:// URL" in one_line_error(
        prog(env, "restore", "latest", "--to", "mysql://x/y", "--target", str(tmp_path)), 2
    )
    closed = "postgresql://postgres@127.0.0.1:9/prog"
    assert "cannot reach PostgreSQL" in one_line_error(
        prog({"DATABASE_URL": closed}, "create", "--target", str(tmp_path)), 2
    )


def test_a_client_of_another_major_version_is_refused_with_what_to_install():
    with pytest.raises(ClientToolMissing, match="no pg_dump of PostgreSQL 99 .*install postgresql-client-99"):
        client_tool("pg_dump", 99)
