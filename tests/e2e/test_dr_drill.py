"""Disaster recovery: `prog dr drill` loses the database node under load and restores it from
pgBackRest (a short run; `make drill-dr` is the full one), and pgBackRest's S3 repository."""

from __future__ import annotations

import json
import shutil
import uuid

import pytest

from prognetwork.jobs.dr_cluster import DATABASE, Cluster
from tests.helpers.paths import ROOT
from tests.helpers.throwaway_cluster import drill_directory, install_dr_tools, leftovers, run_drill, tls_moto

# The archiving contract the drill checks: with archive_timeout T a partly filled segment is pushed
# at most T after its first write, so a committed write is lost only if it is younger than T plus
# the time a push takes. T is short here so that a 10-second run archives while it writes; 60 s
# is the objective, far above 5 s plus any push on a loaded machine.
ARCHIVE_TIMEOUT_SECONDS = 5
RPO_OBJECTIVE_SECONDS = 60
WRITE_SECONDS = 10


@pytest.fixture
def drill_dir():
    install_dr_tools()
    directory = drill_directory()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_drill_restores_the_archived_writes_and_leaves_nothing_running(drill_dir):
    marker = uuid.uuid4().hex
    result = run_drill(drill_dir, marker, "--duration", str(WRITE_SECONDS),
                       "--archive-timeout", str(ARCHIVE_TIMEOUT_SECONDS), "--json-only")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    report = json.loads(lines[0])
    assert {"rto_seconds", "rpo_seconds", "events_committed", "events_recovered", "events_lost"} <= report.keys()
    assert report["events_committed"] > 0
    assert report["events_recovered"] + report["events_lost"] == report["events_committed"]
    # Written after the base backup: back only through the archived WAL.
    assert report["events_recovered"] > 0
    assert 0 < report["registrations_committed"]
    assert report["registrations_recovered"] <= report["registrations_committed"]
    assert report["rpo_seconds"] <= RPO_OBJECTIVE_SECONDS
    assert report["services_answered"] is True
    assert leftovers(drill_dir, marker) == []
    assert list(drill_dir.iterdir()) == []


def test_drill_with_an_unknown_service_says_which_exist_and_starts_nothing(drill_dir):
    marker = uuid.uuid4().hex
    result = run_drill(drill_dir, marker, "--duration", "5", "--service", "no-such-service")

    assert result.returncode == 1
    assert "no-such-service" in result.stderr and "user-service" in result.stderr
    assert result.stdout == ""
    assert leftovers(drill_dir, marker) == []
    assert list(drill_dir.iterdir()) == []


def test_the_s3_repository_archives_and_backs_up_under_kms_and_restores_alone():
    """deploy/pgbackrest's repo2 (S3, SSE-KMS) as shipped, against moto: what a lost region restores from."""
    install_dr_tools()
    directory = drill_directory()
    bucket = "prognetwork-test-backups"
    kms_key = next(line.partition("=")[2] for line in (ROOT / "deploy/pgbackrest/pgbackrest.conf").read_text().splitlines()
                   if line.startswith("repo2-s3-kms-key-id="))
    try:
        with tls_moto(directory) as aws:
            key_id = aws.client("kms").create_key()["KeyMetadata"]["KeyId"]
            aws.client("kms").create_alias(AliasName=kms_key, TargetKeyId=key_id)
            s3 = aws.client("s3")
            s3.create_bucket(Bucket=bucket)
            cluster = Cluster(directory / "node", uuid.uuid4().hex, uuid.uuid4().hex, repo2=aws.repository(bucket))
            cluster.root.mkdir()
            try:
                cluster.prepare()
                cluster.start()
                cluster.create_database()
                cluster.backrest("stanza-create", what="stanza-create")
                cluster.backrest("--repo=2", "--type=full", "backup", what="backup to S3")
                cluster.sql("CREATE TABLE written_after_the_backup AS SELECT 42 AS answer", DATABASE)
                cluster.backrest("check", what="check")  # switches segment, waits until every repository has it

                keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                        for o in page.get("Contents", [])]
                assert any(k.startswith("pgbackrest/archive/prognetwork/") for k in keys), keys
                assert any(k.startswith("pgbackrest/backup/prognetwork/") for k in keys), keys
                encryption = {(h.get("ServerSideEncryption"), h.get("SSEKMSKeyId"))
                              for h in (s3.head_object(Bucket=bucket, Key=k) for k in keys)}
                assert encryption == {("aws:kms", kms_key)}

                cluster.destroy()
                shutil.rmtree(cluster.repository)  # the local repository is lost too: only S3 is left
                cluster.restore("--repo=2")
                cluster.start()
                assert cluster.sql("SELECT answer FROM written_after_the_backup", DATABASE).strip() == "42"
            finally:
                cluster.stop()
        assert leftovers(directory) == []
    finally:
        shutil.rmtree(directory, ignore_errors=True)
